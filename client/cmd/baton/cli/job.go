package cli

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// maxJobFile bounds how much of a job file baton reads. The control plane
// refuses files over 1 MiB; the margin lets it say so itself.
const maxJobFile = 4 << 20

func (a *app) jobCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Apply, validate, list, show and delete job definitions",
		Example: `  baton job validate -f nightly.yaml
  baton job apply -f nightly.yaml
  baton job list
  baton job get nightly-dw-load --version 2`,
	}
	cmd.RunE = groupRun
	cmd.AddCommand(a.jobApplyCommand(), a.jobValidateCommand(), a.jobListCommand(),
		a.jobGetCommand(), a.jobDeleteCommand())
	return cmd
}

func (a *app) jobApplyCommand() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Validate a job file and store it as the job's next version",
		Long: `Validate a job file and store it. A changed file becomes a new version of the
job; an unchanged one stores nothing. Runs already started keep the version
they started on. An invalid file is refused with every problem listed.`,
		Example: `  baton job apply -f nightly.yaml
  generate-job | baton job apply -f -`,
		Args: wantArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			src, name, err := a.readJobFile(file)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			job, created, err := c.ApplyJob(ctx, src)
			if err != nil {
				return jobFileError(name, err)
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.ApplyJobResponse{Job: job, Created: created})
			}
			what := "unchanged"
			if created {
				what = "created"
			}
			_, err = fmt.Fprintf(a.env.Stdout, "job %s: version %d (%s)\n", job.GetName(), job.GetVersion(), what)
			return err
		},
	}
	fileFlag(cmd, &file)
	return cmd
}

func (a *app) jobValidateCommand() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "validate -f FILE",
		Short: "Check a job file exactly as apply would, storing nothing",
		Example: `  baton job validate -f nightly.yaml
  for f in jobs/*.yaml; do baton job validate -f "$f" || exit; done`,
		Args: wantArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			src, name, err := a.readJobFile(file)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			job, err := c.ValidateJob(ctx, src)
			if err != nil {
				return jobFileError(name, err)
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.ValidateJobResponse{Job: job})
			}
			_, err = fmt.Fprintf(a.env.Stdout, "%s: ok, %s\n", name, plural(len(job.GetTasks()), "task"))
			return err
		},
	}
	fileFlag(cmd, &file)
	return cmd
}

func fileFlag(cmd *cobra.Command, file *string) {
	cmd.Flags().StringVarP(file, "file", "f", "", "job file (YAML or JSON); - reads standard input")
	_ = cmd.MarkFlagRequired("file")
}

// readJobFile reads the job file named by -f and returns its text and the
// name to show for it.
func (a *app) readJobFile(file string) (src, name string, err error) {
	var r io.Reader
	name = file
	switch file {
	case "":
		return "", "", usagef("-f/--file is empty: name a job file, or - for standard input")
	case "-":
		r, name = a.env.Stdin, "<stdin>"
	default:
		f, err := os.Open(file)
		if err != nil {
			return "", "", fmt.Errorf("read job file: %w", err)
		}
		// Read only: a failed close loses nothing that was read.
		defer func() { _ = f.Close() }()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxJobFile+1))
	if err != nil {
		return "", "", fmt.Errorf("read job file %s: %w", name, err)
	}
	if len(b) > maxJobFile {
		return "", "", fmt.Errorf("job file %s is larger than %d MiB; the control plane accepts job files of at most 1 MiB", name, maxJobFile>>20)
	}
	if !utf8.Valid(b) {
		line := 1 + bytes.Count(b[:invalidUTF8At(b)], []byte("\n"))
		return "", "", fmt.Errorf("job file %s is not UTF-8 text (line %d): a job file is YAML; save it as UTF-8", name, line)
	}
	return string(b), name, nil
}

// invalidUTF8At returns the offset of b's first byte that is not valid
// UTF-8, or len(b).
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		i += size
	}
	return len(b)
}

// invalidJobError is a job file the control plane refused.
type invalidJobError struct {
	name string
	st   *status.Status
}

func (e *invalidJobError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: invalid job file", e.name)
	for line := range strings.Lines(e.st.Message()) {
		if line = strings.TrimRight(line, "\r\n"); line != "" {
			b.WriteString("\n  " + line)
		}
	}
	b.WriteString(missingViolations(e.st, e.st.Message()))
	return b.String()
}

// jobFileError presents an INVALID_ARGUMENT answer to a job file as the
// list of its problems; other errors pass through.
func jobFileError(name string, err error) error {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) && se.GRPCStatus().Code() == codes.InvalidArgument {
		return &invalidJobError{name: name, st: se.GRPCStatus()}
	}
	return err
}

func (a *app) jobListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List every job's current version",
		Example: "  baton job list\n  baton job list -o json | jq -r '.jobs[].name'",
		Args:    wantArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			jobs, err := c.ListJobs(ctx)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.ListJobsResponse{Jobs: jobs})
			}
			t := newTable(a.env.Stdout, "NAME", "VERSION", "TASKS", "UPDATED", "DESCRIPTION")
			for _, j := range jobs {
				t.row(j.GetName(), strconv.Itoa(int(j.GetVersion())), strconv.Itoa(len(j.GetTasks())),
					a.clock.timestamp(cmp.Or(j.GetUpdateTime(), j.GetCreateTime())), j.GetDescription())
			}
			return t.flush()
		},
	}
}

func (a *app) jobGetCommand() *cobra.Command {
	var version int32
	cmd := &cobra.Command{
		Use:   "get NAME",
		Short: "Print a job file as it was applied",
		Long: `Print a job's source as it was applied, after a header of YAML comments, so
the output can be saved and applied again. Without --version, the current
version.`,
		Example: "  baton job get nightly-dw-load\n  baton job get nightly-dw-load --version 2 > nightly-v2.yaml",
		Args:    wantArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if version < 0 {
				return usagef("invalid --version %d: must be positive (or 0 for the current one)", version)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			job, err := c.GetJob(ctx, args[0], version)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.GetJobResponse{Job: job})
			}
			var b strings.Builder
			fmt.Fprintf(&b, "# job %s, version %d", job.GetName(), job.GetVersion())
			if ts := cmp.Or(job.GetUpdateTime(), job.GetCreateTime()); ts != nil {
				fmt.Fprintf(&b, ", applied %s", a.clock.timestamp(ts))
			}
			b.WriteString("\n")
			b.WriteString(job.GetSource())
			if src := job.GetSource(); src != "" && !strings.HasSuffix(src, "\n") {
				b.WriteString("\n")
			}
			_, err = io.WriteString(a.env.Stdout, b.String())
			return err
		},
	}
	cmd.Flags().Int32Var(&version, "version", 0, "version to print; 0 means the current one")
	return cmd
}

func (a *app) jobDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a job; its runs and their history are kept",
		Long: `Delete a job. Its runs and their history are kept. A job with an active run
cannot be deleted: cancel the run or wait for it to end first.`,
		Example: "  baton job delete nightly-dw-load",
		Args:    wantArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			if err := c.DeleteJob(ctx, args[0]); err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.DeleteJobResponse{})
			}
			_, err = fmt.Fprintf(a.env.Stdout, "job %s deleted\n", args[0])
			return err
		},
	}
}
