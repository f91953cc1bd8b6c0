package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// startTimeout bounds how long batond may take to listen and agents to
// connect.
const startTimeout = time.Minute

// maxRecvMsg lets GetRun and ListAttempts return runs of many thousand task
// instances.
const maxRecvMsg = 256 << 20

// binaries are the programs under test.
type binaries struct {
	batond, agent, simagent string
}

// build compiles batond, baton-agent and simagent from repo into dir,
// without the race detector: it would measure the detector.
func build(ctx context.Context, repo, dir string) (binaries, error) {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./server/cmd/batond", "./agent/cmd/baton-agent", "./e2e/simagent")
	cmd.Dir = repo
	out, err := cmd.CombinedOutput()
	if err != nil {
		return binaries{}, fmt.Errorf("build: %w\n%s", err, out)
	}
	return binaries{
		batond:   filepath.Join(dir, "batond"),
		agent:    filepath.Join(dir, "baton-agent"),
		simagent: filepath.Join(dir, "simagent"),
	}, nil
}

// cluster is one batond on a fresh store, with the agents started for it.
type cluster struct {
	bins   binaries
	dir    string
	grpc   string // batond's gRPC address
	log    *slog.Logger
	batond *process
	conn   *grpc.ClientConn
	c      *client.Client
	runs   batonv1.RunServiceClient
	agents []*process
	sims   *process
	// sec is the security settings, nil when security is off.
	sec *security
}

// startCluster starts batond in dir on an embedded SQLite store: with the
// shipped defaults, or with synchronous=full when full is set. With sec,
// security is on: `batond init` first makes the admin token the harness
// then uses, and batond serves TLS, requires agent certificates with
// approval and API tokens.
func startCluster(ctx context.Context, bins binaries, dir string, full bool, sec *security, log *slog.Logger) (*cluster, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	addrFile := filepath.Join(dir, "addr.json")
	args := []string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--addr-file", addrFile}
	store := filepath.Join(dir, "batond")
	var storeArgs []string
	if full {
		if err := os.MkdirAll(store, 0o755); err != nil {
			return nil, fmt.Errorf("start cluster: %w", err)
		}
		storeArgs = []string{"--db", "sqlite://" + filepath.ToSlash(filepath.Join(store, "baton.db")) + "?synchronous=full"}
	} else {
		storeArgs = []string{"--data-dir", store}
	}
	args = append(args, storeArgs...)
	dial := client.DialConfig{}
	if sec != nil {
		token, err := initToken(ctx, bins.batond, dir, storeArgs)
		if err != nil {
			return nil, err
		}
		args = append(args, sec.batondArgs()...)
		dial = client.DialConfig{CAFile: sec.caFile(), Token: token}
	}
	b, err := startProcess(dir, "batond", bins.batond, args...)
	if err != nil {
		return nil, err
	}
	cl := &cluster{bins: bins, dir: dir, log: log, batond: b, sec: sec}
	var addrs struct{ GRPC string }
	err = waitFor(ctx, startTimeout, "batond to listen", func() (bool, error) {
		if err := b.exited(); err != nil {
			return false, err
		}
		raw, err := os.ReadFile(addrFile)
		return err == nil && json.Unmarshal(raw, &addrs) == nil && addrs.GRPC != "", nil
	})
	if err != nil {
		return nil, errors.Join(err, cl.close())
	}
	cl.grpc = addrs.GRPC
	dial.Addr = addrs.GRPC
	cl.conn, err = client.Dial(dial, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsg)))
	if err != nil {
		return nil, errors.Join(err, cl.close())
	}
	cl.c = client.New(cl.conn)
	cl.runs = batonv1.NewRunServiceClient(cl.conn)
	return cl, nil
}

// stat reads batond's CPU time and RSS.
func (cl *cluster) stat() (procStat, error) {
	if err := cl.batond.exited(); err != nil {
		return procStat{}, err
	}
	return readProcStat(cl.batond.pid())
}

// stats reads batond's CPU time and RSS, and the agents' CPU time.
func (cl *cluster) stats() (procStat, time.Duration, error) {
	st, err := cl.stat()
	if err != nil {
		return st, 0, err
	}
	cpu, err := cl.agentsCPU()
	return st, cpu, err
}

// agentProcs returns the agent processes: the baton-agents and the
// simagent.
func (cl *cluster) agentProcs() []*process {
	ps := slices.Clone(cl.agents)
	if cl.sims != nil {
		ps = append(ps, cl.sims)
	}
	return ps
}

// agentsCPU sums the CPU time of the agent processes: the baton-agents
// with the runner processes they started (found by the state directories
// on their command lines), or the simagent. The tasks' own processes are
// not included.
func (cl *cluster) agentsCPU() (time.Duration, error) {
	pids, err := pidsMentioning(filepath.Join(cl.dir, "agents") + string(filepath.Separator))
	if err != nil {
		return 0, err
	}
	for _, p := range cl.agentProcs() {
		if err := p.exited(); err != nil {
			return 0, err
		}
		if !slices.Contains(pids, p.pid()) {
			pids = append(pids, p.pid())
		}
	}
	var total time.Duration
	for _, pid := range pids {
		st, err := readProcStat(pid)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
				continue // a runner that just exited
			}
			return 0, err
		}
		total += st.CPU
	}
	return total, nil
}

// startAgents starts n baton-agents with slots slots each, allowed to run
// the program allow only, and waits until all are connected.
func (cl *cluster) startAgents(ctx context.Context, n, slots int, allow string) error {
	for i := 1; i <= n; i++ {
		name := "agent-" + strconv.Itoa(i)
		args := []string{"--server", cl.grpc, "--name", name,
			"--slots", strconv.Itoa(slots), "--state-dir", filepath.Join(cl.dir, "agents", name), "--allow", allow}
		p, err := startProcess(cl.dir, name, cl.bins.agent, append(args, cl.sec.agentArgs(name)...)...)
		if err != nil {
			return err
		}
		cl.agents = append(cl.agents, p)
	}
	return waitFor(ctx, startTimeout, fmt.Sprintf("%d agents to connect", n), func() (bool, error) {
		for _, p := range cl.agents {
			if err := p.exited(); err != nil {
				return false, err
			}
		}
		return cl.connected(ctx, n)
	})
}

// connected reports whether at least n agents are connected. A pending
// agent is an error: every agent is approved before it connects.
func (cl *cluster) connected(ctx context.Context, n int) (bool, error) {
	if err := cl.batond.exited(); err != nil {
		return false, err
	}
	agents, err := cl.c.ListAgents(ctx)
	if err != nil {
		return false, nil // not serving yet
	}
	k := 0
	for _, a := range agents {
		switch a.GetState() {
		case batonv1.AgentState_AGENT_STATE_CONNECTED:
			k++
		case batonv1.AgentState_AGENT_STATE_PENDING:
			return false, fmt.Errorf("agent %s connected but is pending, although it was approved beforehand: %s",
				a.GetName(), a.GetPendingReason())
		}
	}
	return k >= n, nil
}

// approve approves the agents of a shape before they connect, when
// approval is on: the n baton-agents, or simulated agents when sim, may
// claim slots slots and no labels. Each agent's Hello then finds its
// approval in the store, which batond looks up once per connection.
func (cl *cluster) approve(ctx context.Context, sim bool, n, slots int) error {
	if cl.sec == nil {
		return nil
	}
	for _, name := range agentNames(sim, n) {
		resp, err := cl.c.ApproveAgent(ctx, name, nil, int32(slots))
		if err != nil {
			return fmt.Errorf("approve agent %s: %w", name, err)
		}
		if r := resp.GetPendingReason(); r != "" {
			return fmt.Errorf("approve agent %s: still pending: %s", name, r)
		}
	}
	return nil
}

// startSims starts one simagent process running n simulated agents with
// slots slots each and waits until every one has been welcomed.
func (cl *cluster) startSims(ctx context.Context, n, slots int) error {
	args := []string{"--server", cl.grpc, "--count", strconv.Itoa(n), "--slots", strconv.Itoa(slots), "--prefix", simPrefix}
	p, err := startProcessLines(cl.dir, "simagent", cl.bins.simagent, append(args, cl.sec.simArgs()...)...)
	if err != nil {
		return err
	}
	cl.sims = p
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				<-p.done
				return p.exited()
			}
			var msg struct{ Welcomed int }
			if json.Unmarshal([]byte(line), &msg) != nil || msg.Welcomed != n {
				continue
			}
			if cl.sec == nil {
				return nil
			}
			// A pending agent is welcomed too: check that each one is
			// connected with its approval.
			return waitFor(ctx, startTimeout, fmt.Sprintf("%d simulated agents to be connected and approved", n),
				func() (bool, error) { return cl.connected(ctx, n) })
		case <-cl.batond.done:
			return cl.batond.exited()
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d simulated agents to connect: %w", n, ctx.Err())
		}
	}
}

// close stops the agents, then batond, and returns what went wrong.
func (cl *cluster) close() error {
	var errs []error
	if cl.conn != nil {
		errs = append(errs, cl.conn.Close())
	}
	if cl.sims != nil {
		errs = append(errs, cl.sims.stop())
	}
	for _, p := range cl.agents {
		errs = append(errs, p.stop())
	}
	errs = append(errs, cl.batond.stop())
	return errors.Join(errs...)
}
