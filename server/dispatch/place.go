package dispatch

import "github.com/batonhq/baton/server/job"

// Candidate is an agent that placement may choose.
type Candidate struct {
	Name   string
	Labels map[string]string
	// Free is the number of free slots.
	Free int
	// LastUsed orders placements: the sequence number of the agent's latest
	// one, 0 when it never got work.
	LastUsed uint64
}

// Matches reports whether an agent with this name and labels satisfies the
// selector: the agent name, when given, must be equal, and every selector
// label must be present with the same value.
func Matches(sel job.Selector, name string, labels map[string]string) bool {
	if sel.Agent != "" && sel.Agent != name {
		return false
	}
	for k, v := range sel.Labels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Pick chooses where to place one task instance: among the candidates that
// match sel and have a free slot, the one with the most free slots; ties go
// to the least recently used, then to the first name. It returns -1 when
// none fits.
func Pick(cands []Candidate, sel job.Selector) int {
	best := -1
	for i := range cands {
		c := &cands[i]
		if c.Free <= 0 || !Matches(sel, c.Name, c.Labels) {
			continue
		}
		b := &cands[max(best, 0)]
		if best < 0 || c.Free > b.Free ||
			(c.Free == b.Free && c.LastUsed < b.LastUsed) ||
			(c.Free == b.Free && c.LastUsed == b.LastUsed && c.Name < b.Name) {
			best = i
		}
	}
	return best
}
