package main

import (
	"slices"
	"time"
)

// median returns the median of xs, or 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile returns the p-th percentile (0 < p <= 100) of ds by the
// nearest-rank method, or 0 for none.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	rank := int(p/100*float64(len(s))+0.999999999) - 1
	return s[min(max(rank, 0), len(s)-1)]
}

// readyToStarted returns, for every started attempt, how long it took from
// the moment it could start to the moment its child started.
//
// An attempt can start once its upstream is done and its run has capacity
// for it. With at most parallel attempts in flight at once (the run's
// max_parallel, or the agents' slots, whichever binds; 1 for a chain), at
// least i+1-parallel attempts have ended when the i-th attempt (in start
// order, from 0) starts, so it became startable no later than the
// (i-parallel)-th end, which is when its slot freed. The first parallel
// attempts could start when the run was created. For a chain (parallel 1)
// this is exactly the gap between one task's end and the next one's start.
//
// starts and ends need not be sorted; they are not modified.
func readyToStarted(created time.Time, starts, ends []time.Time, parallel int) []time.Duration {
	s := slices.SortedFunc(slices.Values(starts), time.Time.Compare)
	e := slices.SortedFunc(slices.Values(ends), time.Time.Compare)
	out := make([]time.Duration, len(s))
	for i, st := range s {
		ready := created
		if j := i - parallel; j >= 0 && j < len(e) {
			ready = e[j]
		}
		// Agents and batond share this machine's clock; a negative gap can
		// only come from the clock stepping.
		out[i] = max(st.Sub(ready), 0)
	}
	return out
}
