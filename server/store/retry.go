package store

import (
	"context"
	"math/rand/v2"
	"time"
)

// MaxTxTries is how often [Retry] runs a transaction function in all.
const MaxTxTries = 5

// Retry runs try until it succeeds, fails with an error retryable does not
// accept, ctx is done, or it has run MaxTxTries times. Between tries it
// sleeps a jittered, doubling delay starting near base (capped at 50 base).
// Backends wrap their whole transaction (begin, fn, commit) in try, never
// one statement: a deadlock victim's transaction is already rolled back.
func Retry(ctx context.Context, base time.Duration, retryable func(error) bool, try func() error) error {
	var err error
	for n := 0; n < MaxTxTries; n++ {
		if n > 0 {
			d := max(min(base<<(n-1), 50*base), time.Millisecond)
			d = d/2 + rand.N(d) // jitter in [d/2, 3d/2)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		err = try()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
	}
	return err
}
