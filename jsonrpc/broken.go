package jsonrpc

import (
	"encoding/json"

	"github.com/wsbridge/wsbridge/internal/rpcscan"
)

// BrokenFrameIDs returns the ids of the replies in a frame that cannot be
// routed as it is (cut off, not JSON, not UTF-8, or sent as a binary
// frame), so that their callers can fail at once instead of waiting for
// their deadline.
//
// Only an id that is a member of a top-level message is trusted: one
// nested in a result, in params or in data is not the message's id. A
// message with a top-level "method" is a request or a notification, not
// a reply, and names no caller; so does one that holds "id" twice. A
// frame that is a batch yields the id of each element that names one.
// When nothing can be trusted the result is empty: no caller is blamed
// for a frame that may not be its own.
func BrokenFrameIDs(frame []byte) []json.RawMessage {
	i := rpcscan.SkipSpace(frame, 0)
	if i >= len(frame) {
		return nil
	}
	switch frame[i] {
	case '{':
		if id, _ := objectID(frame, i); id != nil {
			return []json.RawMessage{id}
		}
	case '[':
		var ids []json.RawMessage
		i = rpcscan.SkipSpace(frame, i+1)
		for i < len(frame) && frame[i] == '{' {
			id, end := objectID(frame, i)
			if id != nil {
				ids = append(ids, id)
			}
			if end < 0 {
				break
			}
			i = rpcscan.SkipSpace(frame, end)
			if i >= len(frame) || frame[i] != ',' {
				break
			}
			i = rpcscan.SkipSpace(frame, i+1)
		}
		return ids
	}
	return nil
}

// objectID scans the object starting at b[i] ('{') for its top-level id
// (nil when there is none to trust, see BrokenFrameIDs). end is the index
// just past the object, or -1 when the object is cut off or broken.
func objectID(b []byte, i int) (id json.RawMessage, end int) {
	var ids int
	var method bool
	i = rpcscan.SkipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil, i + 1
	}
	end = -1
	for i < len(b) && b[i] == '"' {
		kEnd := rpcscan.StringEnd(b, i)
		if kEnd < 0 {
			break
		}
		key, ok := String(b[i:kEnd])
		if !ok {
			break
		}
		i = rpcscan.SkipSpace(b, kEnd)
		if i >= len(b) || b[i] != ':' {
			break
		}
		i = rpcscan.SkipSpace(b, i+1)
		vEnd := rpcscan.ValueEnd(b, i)
		if vEnd < 0 {
			break
		}
		switch key {
		case "id":
			ids++
			if c := b[i]; c == '"' || c == '-' || (c >= '0' && c <= '9') {
				id = b[i:vEnd]
			}
		case "method":
			method = true
		}
		i = rpcscan.SkipSpace(b, vEnd)
		if i < len(b) && b[i] == '}' {
			end = i + 1
			break
		}
		if i >= len(b) || b[i] != ',' {
			break
		}
		i = rpcscan.SkipSpace(b, i+1)
	}
	if method || ids != 1 {
		return nil, end
	}
	return id, end
}
