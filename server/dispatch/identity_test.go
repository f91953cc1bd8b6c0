package dispatch_test

import (
	"strings"
	"testing"

	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/store"
)

func TestUncovered(t *testing.T) {
	approval := &store.AgentApproval{Name: "sql01", Labels: map[string]string{"role": "ssis", "dc": "east"}, Slots: 8, CertSHA256: "abc"}
	for _, tc := range []struct {
		name string
		h    dispatch.Hello
		want []string // substrings; none means covered
	}{
		{"exactly what is approved", dispatch.Hello{Labels: map[string]string{"role": "ssis", "dc": "east"}, Slots: 8, CertSHA256: "abc"}, nil},
		{"less than approved", dispatch.Hello{Labels: map[string]string{"dc": "east"}, Slots: 1, CertSHA256: "abc"}, nil},
		{"a label not approved", dispatch.Hello{Labels: map[string]string{"role": "ssis", "tier": "prod"}, Slots: 8, CertSHA256: "abc"},
			[]string{"tier=prod beyond its approval"}},
		{"an approved key with another value", dispatch.Hello{Labels: map[string]string{"role": "sql"}, Slots: 1, CertSHA256: "abc"},
			[]string{"role=sql"}},
		{"more slots", dispatch.Hello{Slots: 100000, CertSHA256: "abc"}, []string{"claims 100000 slots; approved for 8"}},
		{"another certificate", dispatch.Hello{Slots: 1, CertSHA256: "def"}, []string{"another certificate"}},
		{"everything at once", dispatch.Hello{Labels: map[string]string{"x": "1"}, Slots: 9},
			[]string{"x=1", "claims 9 slots", "another certificate", "baton agents approve sql01"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h
			h.Name = "sql01"
			got := dispatch.Uncovered(&h, approval)
			if len(tc.want) == 0 {
				if got != "" {
					t.Fatalf("Uncovered = %q, want covered", got)
				}
				return
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("Uncovered = %q, want it to say %q", got, w)
				}
			}
		})
	}
	// Slots 0 approves any number, and no pinned certificate any certificate.
	open := &store.AgentApproval{Name: "a", Labels: map[string]string{"role": "etl"}}
	if got := dispatch.Uncovered(&dispatch.Hello{Name: "a", Slots: 64, CertSHA256: "zzz", Labels: map[string]string{"role": "etl"}}, open); got != "" {
		t.Errorf("Uncovered with slots 0 and no pin = %q, want covered", got)
	}
}
