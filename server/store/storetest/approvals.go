package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/server/store"
)

func testAgentApproval(t *testing.T, h Harness) {
	b := setup(t, h)
	get := func(name string) (*store.AgentApproval, error) {
		t.Helper()
		return b.s.AgentApprovalGet(b.ctx, &store.AgentApprovalGetParams{Name: name})
	}
	list := func() []*store.AgentApproval {
		t.Helper()
		got, err := b.s.AgentApprovalList(b.ctx, &store.AgentApprovalListParams{})
		if err != nil {
			t.Fatalf("AgentApprovalList() = %v", err)
		}
		return got
	}
	approve := func(a *store.AgentApproval) {
		t.Helper()
		if err := b.s.AgentApprove(b.ctx, &store.AgentApproveParams{Approval: a}); err != nil {
			t.Fatalf("AgentApprove(%s) = %v", a.Name, err)
		}
	}
	if _, err := get("sql01"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("AgentApprovalGet(unknown) = %v, want ErrNotFound", err)
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("AgentApprovalList() on a new store = %v, want none", got)
	}
	now := ms(time.Now())
	sql01 := &store.AgentApproval{Name: "sql01", Labels: map[string]string{"role": "ssis", "dc": "east"}, Slots: 8,
		CertSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", ApprovedBy: "token:alice", ApprovedAt: now}
	etl := &store.AgentApproval{Name: "etl-01", ApprovedAt: now}
	approve(sql01)
	approve(etl)
	got, err := get("sql01")
	if err != nil {
		t.Fatalf("AgentApprovalGet(sql01) = %v", err)
	}
	if diff := cmp.Diff(sql01, got); diff != "" {
		t.Fatalf("AgentApprovalGet(sql01) mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]*store.AgentApproval{etl, sql01}, list()); diff != "" {
		t.Fatalf("AgentApprovalList() mismatch (-want +got):\n%s", diff)
	}

	// A second approval replaces the first.
	sql01b := &store.AgentApproval{Name: "sql01", Labels: map[string]string{"role": "sql"}, Slots: 0,
		ApprovedBy: "cert:ops", ApprovedAt: now.Add(time.Minute)}
	approve(sql01b)
	if got, err := get("sql01"); err != nil || !cmp.Equal(sql01b, got) {
		t.Fatalf("AgentApprovalGet(sql01) after re-approve = %v, %v; want %v", got, err, sql01b)
	}

	for _, bad := range []*store.AgentApproval{
		{Name: "", ApprovedAt: now},
		{Name: "x", Slots: -1, ApprovedAt: now},
		{Name: "x"},
	} {
		wantBadInput(t, "AgentApprove(bad)", b.s.AgentApprove(b.ctx, &store.AgentApproveParams{Approval: bad}))
	}
	wantBadInput(t, "AgentApprove(nil)", b.s.AgentApprove(b.ctx, &store.AgentApproveParams{}))

	if err := b.s.AgentApprovalDelete(b.ctx, &store.AgentApprovalDeleteParams{Name: "sql01"}); err != nil {
		t.Fatalf("AgentApprovalDelete(sql01) = %v", err)
	}
	if _, err := get("sql01"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("AgentApprovalGet(deleted) = %v, want ErrNotFound", err)
	}
	if err := b.s.AgentApprovalDelete(b.ctx, &store.AgentApprovalDeleteParams{Name: "sql01"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("AgentApprovalDelete(deleted again) = %v, want ErrNotFound", err)
	}
	if diff := cmp.Diff([]*store.AgentApproval{etl}, list()); diff != "" {
		t.Fatalf("AgentApprovalList() after delete mismatch (-want +got):\n%s", diff)
	}
}
