package scheduler

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the scheduler's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	commit     prometheus.Histogram
	batch      prometheus.Histogram
	dispatched prometheus.Counter
	finished   *prometheus.CounterVec
	lost       prometheus.Counter
	activeRuns prometheus.Gauge
	agents     prometheus.Gauge
	ready      prometheus.Gauge
	storeUp    prometheus.Gauge
	leader     prometheus.Gauge
}

// status records the scheduler's role.
func (m *Metrics) status(st Status) {
	up, lead := 1.0, 0.0
	if st.Role == RoleStoreUnavailable {
		up = 0
	}
	if st.Role == RoleLeader {
		lead = 1
	}
	m.storeUp.Set(up)
	m.leader.Set(lead)
}

// NewMetrics creates the scheduler's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "baton_scheduler_commit_seconds",
			Help:    "Time to commit one batch of state changes to the store.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "baton_scheduler_batch_writes",
			Help:    "Writes committed in one transaction (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}),
		dispatched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "baton_attempts_dispatched_total",
			Help: "Attempts recorded and sent to an agent.",
		}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "baton_attempts_finished_total",
			Help: "Attempt outcomes recorded, by outcome.",
		}, []string{"outcome"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "baton_attempts_lost_total",
			Help: "Attempts lost with their agent.",
		}),
		activeRuns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "baton_runs_active",
			Help: "Runs this scheduler is running (not queued).",
		}),
		agents: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "baton_agents_connected",
			Help: "Agents with a live session.",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "baton_ready_instances",
			Help: "Task instances ready and waiting for a slot, as of the last placement.",
		}),
		storeUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "baton_store_up",
			Help: "1 while the scheduler can use the state store, 0 while it fails (see /readyz and the log for the error).",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "baton_leader",
			Help: "1 while this batond holds the leader lease and schedules.",
		}),
	}
	reg.MustRegister(m.commit, m.batch, m.dispatched, m.finished, m.lost, m.activeRuns, m.agents, m.ready, m.storeUp, m.leader)
	return m
}
