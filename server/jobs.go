package server

import (
	"context"
	"log/slog"
	"sort"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// jobService implements batonv1.JobServiceServer.
type jobService struct {
	batonv1.UnimplementedJobServiceServer
	st    store.Store
	log   *slog.Logger
	specs *engine.Cache
}

// parseJob parses, validates and compiles a job file.
func parseJob(source string) (*job.Spec, *engine.Graph, error) {
	spec, err := job.Parse([]byte(source))
	if err != nil {
		return nil, nil, err
	}
	g, err := engine.Compile(spec)
	if err != nil {
		return nil, nil, err
	}
	return spec, g, nil
}

func (s *jobService) ApplyJob(ctx context.Context, req *batonv1.ApplyJobRequest) (*batonv1.ApplyJobResponse, error) {
	spec, g, err := parseJob(req.GetSource())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	// Only here is the job's name known: a token limited to jobs may apply
	// only its own.
	if err := authorizeJob(ctx, spec.Name); err != nil {
		return nil, err
	}
	canonical, err := spec.Canonical()
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	res, err := s.st.JobApply(ctx, &store.JobApplyParams{
		Name: spec.Name, Description: spec.Description, Spec: canonical, Source: req.GetSource(),
	})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	if res.Created {
		s.log.InfoContext(ctx, "job applied", slog.String("job", spec.Name), slog.Int("version", res.Job.Version))
	}
	// The first run of this version needs no decoding.
	s.specs.Put(res.Job, g)
	return &batonv1.ApplyJobResponse{Job: jobToProto(res.Job, g), Created: res.Created}, nil
}

func (s *jobService) ValidateJob(ctx context.Context, req *batonv1.ValidateJobRequest) (*batonv1.ValidateJobResponse, error) {
	spec, g, err := parseJob(req.GetSource())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &batonv1.ValidateJobResponse{Job: jobToProto(&store.Job{
		Name: spec.Name, Description: spec.Description, Source: req.GetSource(),
	}, g)}, nil
}

func (s *jobService) GetJob(ctx context.Context, req *batonv1.GetJobRequest) (*batonv1.GetJobResponse, error) {
	if req.GetName() == "" {
		return nil, invalidArg("name", "required")
	}
	if req.GetVersion() < 0 {
		return nil, invalidArg("version", "must not be negative")
	}
	j, err := s.st.JobGet(ctx, &store.JobGetParams{Name: req.GetName(), Version: int(req.GetVersion())})
	if err != nil {
		return nil, toStatus(ctx, s.log, notFound(err, "job %q", req.GetName()))
	}
	return &batonv1.GetJobResponse{Job: jobToProto(j, s.graphOf(j))}, nil
}

func (s *jobService) ListJobs(ctx context.Context, _ *batonv1.ListJobsRequest) (*batonv1.ListJobsResponse, error) {
	jobs, err := s.st.JobList(ctx, &store.JobListParams{})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	out := &batonv1.ListJobsResponse{}
	for _, j := range jobs {
		out.Jobs = append(out.Jobs, jobToProto(j, s.graphOf(j)))
	}
	return out, nil
}

func (s *jobService) DeleteJob(ctx context.Context, req *batonv1.DeleteJobRequest) (*batonv1.DeleteJobResponse, error) {
	if req.GetName() == "" {
		return nil, invalidArg("name", "required")
	}
	if err := s.st.JobDelete(ctx, &store.JobDeleteParams{Name: req.GetName()}); err != nil {
		return nil, toStatus(ctx, s.log, notFound(err, "job %q", req.GetName()))
	}
	s.log.InfoContext(ctx, "job deleted", slog.String("job", req.GetName()))
	return &batonv1.DeleteJobResponse{}, nil
}

// graphOf compiles a stored job for its task summary; nil if it cannot.
func (s *jobService) graphOf(j *store.Job) *engine.Graph {
	g, err := s.specs.Get(j)
	if err != nil {
		s.log.Warn("stored job does not decode", slog.String("job", j.Name), slog.Int("version", j.Version), slog.Any("error", err))
		return nil
	}
	return g
}

func jobToProto(j *store.Job, g *engine.Graph) *batonv1.Job {
	out := &batonv1.Job{
		Name:        j.Name,
		Version:     int32(j.Version),
		Description: j.Description,
		Source:      j.Source,
	}
	if !j.CreatedAt.IsZero() {
		out.CreateTime = timestamppb.New(j.CreatedAt)
	}
	if !j.UpdatedAt.IsZero() {
		out.UpdateTime = timestamppb.New(j.UpdatedAt)
	}
	if g == nil {
		return out
	}
	for _, n := range g.Nodes {
		var needs []string
		seen := map[string]bool{}
		add := func(name string) {
			if !seen[name] {
				seen[name] = true
				needs = append(needs, name)
			}
		}
		for _, e := range n.In {
			add(g.Nodes[e.From].Name)
		}
		if n.After >= 0 {
			for _, m := range g.Groups[n.After].Members {
				add(g.Nodes[m].Name)
			}
		}
		out.Tasks = append(out.Tasks, &batonv1.JobTask{
			Name:    n.Name,
			Stage:   int32(n.Task.Stage),
			Needs:   needs,
			RunsOn:  selectorText(n.Task.RunsOn),
			ForEach: n.Task.ForEach != nil,
		})
	}
	return out
}

// selectorText writes a selector the way users read it: "agent=etl-02",
// "role=ssis,dc=east".
func selectorText(sel job.Selector) string {
	var parts []string
	if sel.Agent != "" {
		parts = append(parts, "agent="+sel.Agent)
	}
	keys := make([]string, 0, len(sel.Labels))
	for k := range sel.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+sel.Labels[k])
	}
	return strings.Join(parts, ",")
}
