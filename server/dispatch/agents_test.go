package dispatch

import (
	"errors"
	"testing"
	"time"

	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

func TestAgentsAdmit(t *testing.T) {
	t.Parallel()
	r := NewAgents[int]()
	now := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	s1 := newSession("a1")
	a, err := r.Admit(s1, &Hello{Name: "a1", Slots: 2, BootID: "boot-1", OS: "linux"}, now)
	if err != nil || a.Sess != s1 || a.Slots != 2 || a.State() != store.AgentConnected {
		t.Fatalf("Admit = %+v, %v", a, err)
	}
	// Another process under the same name is refused, and changes nothing.
	if _, err := r.Admit(newSession("a1"), &Hello{Name: "a1", Slots: 9, BootID: "boot-2"}, now); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("Admit(other process) = %v, want ErrNameTaken", err)
	}
	if a.Sess != s1 || a.Slots != 2 {
		t.Fatalf("a refused Hello changed the agent: %+v", a)
	}
	// The same process reconnecting replaces its stale session.
	s2 := newSession("a1")
	if _, err := r.Admit(s2, &Hello{Name: "a1", Slots: 2, BootID: "boot-1"}, now); err != nil {
		t.Fatalf("Admit(same process) = %v", err)
	}
	select {
	case <-s1.Done():
	default:
		t.Fatal("the stale session is still open")
	}
	if !errors.Is(s1.cause, ErrReplaced) {
		t.Fatalf("stale session closed with %v, want ErrReplaced", s1.cause)
	}
	if r.Current(s1) != nil || r.Gone(s1) != nil {
		t.Fatal("the stale session still counts")
	}
	if r.Gone(s2) != a || a.Sess != nil || a.State() != store.AgentDisconnected || r.Connected() != 0 {
		t.Fatalf("after Gone: %+v, connected %d", a, r.Connected())
	}
}

func TestAgentsSilentAndPick(t *testing.T) {
	t.Parallel()
	r := NewAgents[int]()
	now := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	for _, name := range []string{"b", "a", "c"} {
		if _, err := r.Admit(newSession(name), &Hello{Name: name, Slots: 1, Labels: map[string]string{"role": "ssis"}}, now); err != nil {
			t.Fatal(err)
		}
	}
	// Equal free slots and never used: the first name.
	sel := job.Selector{Labels: map[string]string{"role": "ssis"}}
	if got := r.Pick(sel); got == nil || got.Name != "a" {
		t.Fatalf("Pick = %v, want a", got)
	}
	r.Use(r.Get("a"))
	if got := r.Pick(sel); got.Name != "b" {
		t.Fatalf("Pick after a was used = %s, want b (least recently used)", got.Name)
	}
	r.Get("b").Attempts[1] = struct{}{}
	r.Use(r.Get("c"))
	if got := r.Pick(sel); got.Name != "a" {
		t.Fatalf("Pick with b full and c used last = %s, want a", got.Name)
	}
	// c keeps talking; a and b go silent.
	r.Get("c").LastSeen = now.Add(20 * time.Second)
	lost := r.Silent(now.Add(31*time.Second), 30*time.Second)
	if len(lost) != 2 || lost[0].Name != "a" || lost[1].Name != "b" {
		t.Fatalf("Silent = %v, want a and b", lost)
	}
	if !lost[0].Lost || lost[0].Sess != nil || lost[0].State() != store.AgentLost {
		t.Fatalf("a lost agent = %+v", lost[0])
	}
	if got := r.Pick(sel); got == nil || got.Name != "c" {
		t.Fatalf("Pick with a and b lost = %v, want c", got)
	}
	if again := r.Silent(now.Add(40*time.Second), 30*time.Second); len(again) != 0 {
		t.Fatalf("Silent again = %v, want none newly lost", again)
	}
	if all := r.All(); len(all) != 3 || all[0].Name != "a" || all[2].Name != "c" {
		t.Fatalf("All = %v, want a, b, c", all)
	}
	if !r.Get("a").FencesFrozen() {
		t.Error("a Linux agent is said not to fence while frozen")
	}
}
