package server

import (
	"compress/gzip"
	"fmt"
	"io"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
)

// Compressed requests on the typed routes (Connect's Content-Encoding and
// Connect-Content-Encoding, gRPC-Web's grpc-encoding, REST's
// Content-Encoding) are inflated by vanguard into one buffer before
// anything else looks at them: a megabyte of gzip can hold gigabytes.
// boundedGzip replaces vanguard's gzip with one that stops at the message
// limit and fails the request with RESOURCE_EXHAUSTED, before it is held.

// boundedGzip is vanguard's gzip compression, inflating at most limit
// bytes of one message.
func boundedGzip(limit int64) vanguard.TranscoderOption {
	return vanguard.WithCompression(vanguard.CompressionGzip,
		func() connect.Compressor { return gzip.NewWriter(io.Discard) },
		func() connect.Decompressor { return &boundedGzipReader{limit: limit} })
}

// boundedGzipReader inflates gzip, up to limit bytes per Reset.
type boundedGzipReader struct {
	gz    gzip.Reader
	limit int64
	left  int64 // bytes that may still come out
}

func (r *boundedGzipReader) Reset(src io.Reader) error {
	r.left = r.limit
	return r.gz.Reset(src)
}

func (r *boundedGzipReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		// At the limit: one byte more is too many.
		var one [1]byte
		for {
			n, err := r.gz.Read(one[:])
			if n > 0 {
				return 0, connect.NewError(connect.CodeResourceExhausted,
					fmt.Errorf("request inflates past the %d-byte message limit", r.limit))
			}
			if err != nil {
				return 0, err
			}
		}
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.gz.Read(p)
	r.left -= int64(n)
	return n, err
}

func (r *boundedGzipReader) Close() error { return r.gz.Close() }
