package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/batonhq/baton/client/pki"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server"
	"github.com/batonhq/baton/server/store"
)

// mtlsBundle is a batond that requires agent certificates from its CA.
type mtlsBundle struct {
	*testBundle
	dir string // the CA and certificates
}

// setupMTLS starts a batond with TLS, --agent-ca and approval as given,
// and makes a CA, its certificate and certificates for agents.
func setupMTLS(t *testing.T, approval bool, agents ...string) *mtlsBundle {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	if err := pki.NewCA(dir, "test CA", time.Hour, now); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Server(dir, []string{"127.0.0.1"}, time.Hour, now); err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if err := ca.Agent(dir, a, time.Hour, now); err != nil {
			t.Fatal(err)
		}
	}
	st := openStore(t)
	srv := runServer(t, server.Config{
		Store: st, Logger: newTestLogger(t, "mtls"), GRPCAddr: "127.0.0.1:0", HTTPAddr: "off",
		ShutdownTimeout: 5 * time.Second, Version: "test", NodeID: "mtls",
		TLSCertFile: filepath.Join(dir, pki.ServerCrt), TLSKeyFile: filepath.Join(dir, pki.ServerKey),
		AgentCAFile: filepath.Join(dir, pki.CACert), AgentApproval: approval,
	})
	srv.conn = dialTLS(t, srv.addrs.GRPC, dir, "")
	srv.waitServing(t)
	return &mtlsBundle{dir: dir, testBundle: &testBundle{
		st: st, srv: srv,
		jobs:  batonv1.NewJobServiceClient(srv.conn),
		runs:  batonv1.NewRunServiceClient(srv.conn),
		admin: batonv1.NewAgentAdminServiceClient(srv.conn),
	}}
}

// dialTLS connects to addr verifying the test CA, presenting the client
// certificate of agent (none when agent is "").
func dialTLS(t *testing.T, addr, dir, agent string) *grpc.ClientConn {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(dir, pki.CACert))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if agent != "" {
		crt, key := pki.AgentFiles(agent)
		cert, err := tls.LoadX509KeyPair(filepath.Join(dir, crt), filepath.Join(dir, key))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// refusedHello says Hello as name over conn and returns the stream's error.
func refusedHello(t *testing.T, conn *grpc.ClientConn, name string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	stream, err := batonv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_Hello{Hello: &batonv1.Hello{Name: name, Slots: 100000,
		Labels: map[string]string{"role": "ssis"}}}}); err != nil {
		return err
	}
	m, err := stream.Recv()
	if err == nil {
		t.Fatalf("Hello as %s = %v, want it refused", name, m)
	}
	return err
}

const oneTaskJob = `name: one
overlap: allow
tasks:
  - name: load
    run: [dtexec, /f, load.dtsx]
    runs_on: {labels: {role: ssis}}
`

func TestAgentCertificateProvesItsName(t *testing.T) {
	t.Parallel()
	b := setupMTLS(t, false, "sql01", "evil")
	ctx := testContext(t)

	// The real sql01 connects with its own certificate.
	victim := connectAgent(t, dialTLS(t, b.srv.addrs.GRPC, b.dir, "sql01"),
		&batonv1.Hello{Name: "sql01", Slots: 1, Labels: map[string]string{"role": "ssis"}, BootId: "boot-1"})

	// A certificate for evil claiming to be sql01, even with its boot id,
	// is refused; so is a connection without a certificate.
	err := refusedHello(t, dialTLS(t, b.srv.addrs.GRPC, b.dir, "evil"), "sql01")
	st := wantCode(t, "Hello as sql01 with evil's certificate", err, codes.PermissionDenied)
	if !strings.Contains(st.Message(), `certificate is for agent "evil"`) || !strings.Contains(st.Message(), `says it is "sql01"`) {
		t.Errorf("refusal = %q, want it to name both agents", st.Message())
	}
	err = refusedHello(t, dialTLS(t, b.srv.addrs.GRPC, b.dir, ""), "sql01")
	st = wantCode(t, "Hello without a certificate", err, codes.Unauthenticated)
	if !strings.Contains(st.Message(), "--tls-cert") {
		t.Errorf("refusal = %q, want it to say how to present a certificate", st.Message())
	}

	// The victim's session was not disturbed: it gets the task and the run
	// succeeds.
	applyJob(t, b.testBundle, oneTaskJob)
	run := startRun(t, b.testBundle, "one")
	start := victim.nextStart(t)
	victim.run(t, start, "", "", batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED, 0, nil)
	if _, got := waitEnded(t, b.runs, run.GetId()); got.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run = %v, want succeeded", got.GetState())
	}
	agents, err := b.admin.ListAgents(ctx, &batonv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(agents.GetAgents()); n != 1 || agents.GetAgents()[0].GetName() != "sql01" {
		t.Errorf("ListAgents = %v, want only sql01", agents.GetAgents())
	}
}

// mustBeQuiet checks that batond has given the agent no work: after a
// ListAgents call, which the scheduler's loop serves after everything
// before it (placement included), run has no attempt and the agent got no
// StartTask.
func mustBeQuiet(t *testing.T, b *mtlsBundle, a *fakeAgent, run int64) *batonv1.Agent {
	t.Helper()
	agents, err := b.admin.ListAgents(testContext(t), &batonv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	atts, err := b.runs.ListAttempts(testContext(t), &batonv1.ListAttemptsRequest{RunId: run})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(atts.GetAttempts()); n != 0 {
		t.Fatalf("run %d has %d attempts, want none while its only agent is pending", run, n)
	}
	select {
	case m := <-a.msgs:
		if m.GetStartTask() != nil {
			t.Fatalf("a pending agent got %v", m)
		}
	default:
	}
	return agents.GetAgents()[0]
}

func TestAgentWaitsForApproval(t *testing.T) {
	t.Parallel()
	b := setupMTLS(t, true, "sql01")
	ctx := testContext(t)
	conn := dialTLS(t, b.srv.addrs.GRPC, b.dir, "sql01")
	agent := connectAgent(t, conn, &batonv1.Hello{Name: "sql01", Slots: 4, Labels: map[string]string{"role": "ssis", "dc": "east"}})
	applyJob(t, b.testBundle, oneTaskJob)
	run := startRun(t, b.testBundle, "one")

	a := mustBeQuiet(t, b, agent, run.GetId())
	if a.GetState() != batonv1.AgentState_AGENT_STATE_PENDING || !strings.Contains(a.GetPendingReason(), "baton agents approve sql01") {
		t.Fatalf("agent = %v, want pending with how to approve it", a)
	}

	// Approved for less than it claims: still pending, saying what.
	resp, err := b.admin.ApproveAgent(ctx, &batonv1.ApproveAgentRequest{Name: "sql01", Labels: map[string]string{"dc": "east"}, Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.GetPendingReason(); !strings.Contains(r, "role=ssis beyond its approval") || !strings.Contains(r, "claims 4 slots; approved for 2") {
		t.Fatalf("ApproveAgent pending reason = %q, want the label and the slots named", r)
	}
	mustBeQuiet(t, b, agent, run.GetId())

	// Approve what it claims: it gets the task at once.
	resp, err = b.admin.ApproveAgent(ctx, &batonv1.ApproveAgentRequest{Name: "sql01"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPendingReason() != "" || resp.GetApproval().GetSlots() != 4 || resp.GetApproval().GetLabels()["role"] != "ssis" ||
		len(resp.GetApproval().GetCertSha256()) != 64 || resp.GetApproval().GetApprovedBy() != "anonymous" {
		t.Fatalf("ApproveAgent = %v, want its claims approved and its certificate pinned", resp)
	}
	agent.run(t, agent.nextStart(t), "", "", batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED, 0, nil)
	if _, got := waitEnded(t, b.runs, run.GetId()); got.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run = %v, want succeeded", got.GetState())
	}
	// The audit trail says what was approved.
	waitFor(t, "the approval in the audit trail", func() bool {
		recs, err := b.st.AuditList(ctx, &store.AuditListParams{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Method == batonv1.AgentAdminService_ApproveAgent_FullMethodName &&
				strings.HasPrefix(r.Message, `approved agent "sql01": labels dc=east,role=ssis, slots 4, certificate sha256:`) {
				return true
			}
		}
		return false
	})

	// Revoked: pending again, no new work.
	if _, err := b.admin.RevokeAgent(ctx, &batonv1.RevokeAgentRequest{Name: "sql01"}); err != nil {
		t.Fatal(err)
	}
	run = startRun(t, b.testBundle, "one")
	if a := mustBeQuiet(t, b, agent, run.GetId()); a.GetState() != batonv1.AgentState_AGENT_STATE_PENDING || !strings.Contains(a.GetPendingReason(), "revoked") {
		t.Fatalf("agent after revoke = %v, want pending", a)
	}
	_, err = b.admin.RevokeAgent(ctx, &batonv1.RevokeAgentRequest{Name: "sql01"})
	wantCode(t, "RevokeAgent twice", err, codes.NotFound)
	_, err = b.admin.ApproveAgent(ctx, &batonv1.ApproveAgentRequest{Name: "nobody"})
	wantCode(t, "ApproveAgent of an agent not connected, with nothing to approve", err, codes.FailedPrecondition)
	_, err = b.admin.ApproveAgent(ctx, &batonv1.ApproveAgentRequest{Name: "sql01", Slots: -1})
	wantInvalid(t, "ApproveAgent slots -1", err, "slots")
}

func TestApprovalPinsTheCertificate(t *testing.T) {
	t.Parallel()
	b := setupMTLS(t, true, "sql01")
	ctx := testContext(t)
	agent := connectAgent(t, dialTLS(t, b.srv.addrs.GRPC, b.dir, "sql01"), &batonv1.Hello{Name: "sql01", Slots: 1, Labels: map[string]string{"role": "ssis"}})
	if _, err := b.admin.ApproveAgent(ctx, &batonv1.ApproveAgentRequest{Name: "sql01"}); err != nil {
		t.Fatal(err)
	}
	agent.disconnect()

	// A new certificate for the same name (the old key was stolen, say):
	// it proves the name, but is not the approved one.
	ca, err := pki.LoadCA(b.dir)
	if err != nil {
		t.Fatal(err)
	}
	crt, key := pki.AgentFiles("sql01")
	for _, f := range []string{crt, key} {
		if err := os.Remove(filepath.Join(b.dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ca.Agent(b.dir, "sql01", time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	again := connectAgent(t, dialTLS(t, b.srv.addrs.GRPC, b.dir, "sql01"), &batonv1.Hello{Name: "sql01", Slots: 1, Labels: map[string]string{"role": "ssis"}})
	applyJob(t, b.testBundle, oneTaskJob)
	run := startRun(t, b.testBundle, "one")
	if a := mustBeQuiet(t, b, again, run.GetId()); a.GetState() != batonv1.AgentState_AGENT_STATE_PENDING ||
		!strings.Contains(a.GetPendingReason(), "another certificate") {
		t.Fatalf("agent with a new certificate = %v, want pending for its certificate", a)
	}
}

func TestApprovalOff(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.admin.ApproveAgent(testContext(t), &batonv1.ApproveAgentRequest{Name: "sql01"})
	st := wantCode(t, "ApproveAgent without --agent-approval", err, codes.FailedPrecondition)
	if !strings.Contains(st.Message(), "--agent-approval") {
		t.Errorf("ApproveAgent = %q, want it to name --agent-approval", st.Message())
	}
}

func TestAgentCAConfig(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	for _, tc := range []struct {
		cfg  server.Config
		want string
	}{
		{server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "off", AgentCAFile: "ca.crt"}, "--agent-ca needs --tls-cert"},
		{server.Config{GRPCAddr: "0.0.0.0:0", HTTPAddr: "off", Insecure: true}, ""},
	} {
		tc.cfg.Store, tc.cfg.Logger = st, newTestLogger(t, "cfg")
		srv, err := server.New(tc.cfg)
		if tc.want == "" {
			if err != nil {
				t.Errorf("New(%+v) = %v, want it accepted", tc.cfg, err)
				continue
			}
			// Never run: close its listeners through a cancelled Run.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = srv.Run(ctx)
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	dir := t.TempDir()
	if err := pki.NewCA(dir, "ca", time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	ca, _ := pki.LoadCA(dir)
	if err := ca.Server(dir, []string{"127.0.0.1"}, time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	_, err := server.New(server.Config{Store: st, Logger: newTestLogger(t, "cfg"), GRPCAddr: "0.0.0.0:0", HTTPAddr: "off",
		TLSCertFile: filepath.Join(dir, pki.ServerCrt), TLSKeyFile: filepath.Join(dir, pki.ServerKey)})
	if err == nil || !strings.Contains(err.Error(), "without client certificates") || !strings.Contains(err.Error(), "--agent-ca") {
		t.Errorf("New on 0.0.0.0 with TLS but no agent CA = %v, want it refused naming --agent-ca", err)
	}
}

func TestAgentReportsOnlyItsOwnAttempts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	owner := connectAgent(t, b.srv.conn, &batonv1.Hello{Name: "sql01", Slots: 1, Labels: map[string]string{"role": "ssis"}})
	applyJob(t, b, oneTaskJob)
	run := startRun(t, b, "one")
	start := owner.nextStart(t)
	owner.started(t, start.GetAttemptId())

	// Another agent forges the attempt's outcome.
	other := connectAgent(t, b.srv.conn, &batonv1.Hello{Name: "etl-09", Slots: 1})
	other.send(t, &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskFinished{TaskFinished: &batonv1.TaskFinished{
		AttemptId: start.GetAttemptId(), Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED,
		Outputs: map[string]string{"RowCount": "0"}, StartTime: timestamppb.Now(), EndTime: timestamppb.Now(),
	}}})
	// Its acknowledgement, or nothing: the ListAgents after it is served
	// once the loop has handled the forged outcome.
	if _, err := b.admin.ListAgents(ctx, &batonv1.ListAgentsRequest{}); err != nil {
		t.Fatal(err)
	}
	atts, err := b.runs.ListAttempts(ctx, &batonv1.ListAttemptsRequest{RunId: run.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if a := atts.GetAttempts(); len(a) != 1 || a[0].GetState() != batonv1.AttemptState_ATTEMPT_STATE_RUNNING ||
		a[0].GetAgent() != "sql01" {
		t.Fatalf("attempts after a forged outcome = %v, want sql01's attempt running with no outputs", a)
	}

	owner.run(t, start, "", "", batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, 3, nil)
	evs, got := waitEnded(t, b.runs, run.GetId())
	if got.GetState() != batonv1.RunState_RUN_STATE_FAILED {
		t.Fatalf("run = %v, want failed: the owner's outcome counts, not the forger's", got.GetState())
	}
	for _, e := range evs {
		if strings.Contains(e.GetMessage(), "late outcome") || e.GetAgent() == "etl-09" {
			t.Errorf("event %v: the forged outcome left a trace in the run's history", e)
		}
	}
}
