// Package job parses and validates Baton job files.
//
// A job file is YAML (JSON is YAML too); docs/jobs.md documents every field.
// [Parse] returns a [Spec] whose JSON encoding is the canonical form the
// store keeps; every error names the task and field at fault.
package job

import (
	"encoding/json"
	"fmt"
	"time"
)

// Spec is a parsed and validated job file.
type Spec struct {
	// Name identifies the job; applying a spec with the same name makes a
	// new version.
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Params maps each run parameter to its default value.
	Params map[string]string `json:"params,omitempty"`
	// MaxParallel bounds how many task instances of one run are in flight
	// at once; 0 means unbounded.
	MaxParallel int `json:"max_parallel,omitempty"`
	// Overlap is forbid (default), queue or allow.
	Overlap string `json:"overlap,omitempty"`
	// Timeout is the run-level time limit; 0 means none.
	Timeout Duration `json:"timeout,omitempty"`
	// Tasks are in file order; names are unique.
	Tasks []*Task `json:"tasks"`
}

// Task is one node of a job.
type Task struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Stage is stage-order sugar: a task of stage N also needs every task
	// of the nearest lower stage. 0 means no stage.
	Stage int    `json:"stage,omitempty"`
	Needs []Edge `json:"needs,omitempty"`
	// Trigger is all (default: every edge must be satisfied) or any.
	Trigger string `json:"trigger,omitempty"`
	// When is a CEL condition evaluated once the edges are satisfied.
	When   string   `json:"when,omitempty"`
	RunsOn Selector `json:"runs_on,omitzero"`
	// Run is the argv: the program and its arguments, never run through a
	// shell. Elements may hold ${{ }} placeholders (see [Exprs.Expand]).
	Run []string `json:"run"`
	// Env holds extra environment variables; values may hold placeholders.
	Env map[string]string `json:"env,omitempty"`
	// WorkingDir is the child's working directory on the agent.
	WorkingDir string `json:"working_dir,omitempty"`
	// Retries is how many more attempts a failed attempt gets.
	Retries      int      `json:"retries,omitempty"`
	RetryDelay   Duration `json:"retry_delay,omitempty"`
	RetryBackoff float64  `json:"retry_backoff,omitempty"`
	// RetryOnLost, nil meaning true, retries an attempt whose agent was lost.
	RetryOnLost *bool    `json:"retry_on_lost,omitempty"`
	Timeout     Duration `json:"timeout,omitempty"`
	// AllowFailure keeps this task's failure from failing the run.
	AllowFailure bool `json:"allow_failure,omitempty"`
	// OnFailure is continue (default) or cancel_run.
	OnFailure string `json:"on_failure,omitempty"`
	// Priority orders ready work: higher first.
	Priority int `json:"priority,omitempty"`
	// ForEach, when set, runs the task once per item.
	ForEach *ForEach `json:"for_each,omitempty"`
	// MaxParallel bounds the in-flight items of a for-each task.
	MaxParallel int `json:"max_parallel,omitempty"`
}

// Edge statuses.
const (
	StatusSuccess   = "success"
	StatusFailure   = "failure"
	StatusCompleted = "completed"
)

// Edge is one incoming dependency of a task.
type Edge struct {
	Task string `json:"task"`
	// Status is success (default), failure or completed.
	Status string `json:"status,omitempty"`
	// When is a CEL condition evaluated when the upstream task is done.
	When string `json:"when,omitempty"`
}

// Selector says where a task may run. Zero means any agent.
type Selector struct {
	Agent  string            `json:"agent,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// IsZero reports whether s matches every agent.
func (s Selector) IsZero() bool { return s.Agent == "" && len(s.Labels) == 0 }

// ForEach says what a for-each task loops over. Exactly one field is set.
type ForEach struct {
	Items []string `json:"items,omitempty"`
	Param string   `json:"param,omitempty"`
	// From is a CEL expression yielding a list, usually an upstream output
	// holding a JSON list.
	From string `json:"from,omitempty"`
}

// Duration is a time.Duration written Go-style ("90s", "30m", "2h").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes d Go-style.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go-style duration.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"90s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
