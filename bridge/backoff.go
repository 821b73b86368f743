package bridge

import (
	"math/rand/v2"
	"time"
)

// Backoff is the redial schedule after failed dials: gRPC's connection
// backoff (https://github.com/grpc/grpc/blob/master/doc/connection-backoff.md).
// The zero value means gRPC's defaults.
type Backoff struct {
	Base       time.Duration // delay after the first failure; default 1 s
	Multiplier float64       // growth per failure; default 1.6
	Jitter     float64       // ± fraction applied to each delay; 0 means 0.2, negative means none
	Max        time.Duration // cap; default 120 s
}

func (b Backoff) withDefaults() Backoff {
	if b.Base <= 0 {
		b.Base = time.Second
	}
	if b.Multiplier < 1 {
		b.Multiplier = 1.6
	}
	switch {
	case b.Jitter == 0:
		b.Jitter = 0.2
	case b.Jitter < 0:
		b.Jitter = 0
	case b.Jitter > 1:
		b.Jitter = 1
	}
	if b.Max <= 0 {
		b.Max = 120 * time.Second
	}
	return b
}

// Delay returns the wait after the given number of consecutive failed dials
// (failures >= 1). rnd returns a float in [0, 1).
func (b Backoff) Delay(failures int, rnd func() float64) time.Duration {
	d := float64(b.Base)
	for i := 1; i < failures && d < float64(b.Max); i++ {
		d *= b.Multiplier
	}
	d = min(d, float64(b.Max))
	d *= 1 + b.Jitter*(2*rnd()-1)
	return time.Duration(d)
}

func jitterRand() float64 { return rand.Float64() }
