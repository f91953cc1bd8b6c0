package engine

import (
	"math"
	"time"

	"github.com/batonhq/baton/server/job"
)

// MaxRetryDelay caps the delay between attempts whatever the backoff.
const MaxRetryDelay = time.Hour

// MaxLostRetries caps how often an instance is retried because its agent
// was lost, so a task that takes its agent down cannot loop forever.
const MaxLostRetries = 5

// RetryAfterFailure decides whether a task instance whose attempt failed
// (non-zero exit, timeout, start failure) gets another attempt. failures
// counts the failed attempts so far, this one included. The delay before
// the next attempt is retry_delay * retry_backoff^(failures-1), capped at
// MaxRetryDelay.
func RetryAfterFailure(t *job.Task, failures int) (retry bool, delay time.Duration) {
	if failures > t.Retries {
		return false, 0
	}
	return true, backoff(t, failures)
}

// RetryAfterLoss decides whether a task instance whose attempt was lost
// with its agent gets a replacement attempt. losses counts the lost
// attempts so far, this one included. Losses do not use up retries.
func RetryAfterLoss(t *job.Task, losses int) bool {
	if t.RetryOnLost != nil && !*t.RetryOnLost {
		return false
	}
	return losses <= MaxLostRetries
}

func backoff(t *job.Task, n int) time.Duration {
	d := float64(t.RetryDelay.D())
	if d <= 0 {
		return 0
	}
	b := t.RetryBackoff
	if b < 1 {
		b = 1
	}
	d *= math.Pow(b, float64(n-1))
	if d > float64(MaxRetryDelay) || math.IsInf(d, 0) || math.IsNaN(d) {
		return MaxRetryDelay
	}
	return time.Duration(d)
}
