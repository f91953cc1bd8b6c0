package fakeserver

import (
	"cmp"
	"context"
	"slices"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// jobFile is the little of a job file the fake reads.
type jobFile struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	Tasks       []struct {
		Name  string `yaml:"name"`
		Stage int32  `yaml:"stage"`
	} `yaml:"tasks"`
}

func parseJob(src string) (*batonv1.Job, error) {
	var f jobFile
	if err := yaml.Unmarshal([]byte(src), &f); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "parse job file: %v", err)
	}
	if f.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "name: required")
	}
	j := &batonv1.Job{Name: f.Name, Description: f.Description, Source: src}
	for _, t := range f.Tasks {
		j.Tasks = append(j.Tasks, &batonv1.JobTask{Name: t.Name, Stage: t.Stage})
	}
	return j, nil
}

type jobService struct {
	batonv1.UnimplementedJobServiceServer
	s *Server
}

func (js *jobService) ApplyJob(_ context.Context, req *batonv1.ApplyJobRequest) (*batonv1.ApplyJobResponse, error) {
	s := js.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.applyErr != nil {
		return nil, s.applyErr
	}
	j, err := parseJob(req.GetSource())
	if err != nil {
		return nil, err
	}
	versions := s.jobs[j.Name]
	if n := len(versions); n > 0 && versions[n-1].GetSource() == j.Source {
		return &batonv1.ApplyJobResponse{Job: versions[n-1]}, nil
	}
	j.Version = int32(len(versions) + 1)
	j.CreateTime = timestamppb.Now()
	j.UpdateTime = j.CreateTime
	s.jobs[j.Name] = append(versions, j)
	return &batonv1.ApplyJobResponse{Job: j, Created: true}, nil
}

func (js *jobService) ValidateJob(_ context.Context, req *batonv1.ValidateJobRequest) (*batonv1.ValidateJobResponse, error) {
	s := js.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.applyErr != nil {
		return nil, s.applyErr
	}
	j, err := parseJob(req.GetSource())
	if err != nil {
		return nil, err
	}
	return &batonv1.ValidateJobResponse{Job: j}, nil
}

func (js *jobService) GetJob(_ context.Context, req *batonv1.GetJobRequest) (*batonv1.GetJobResponse, error) {
	s := js.s
	s.mu.Lock()
	defer s.mu.Unlock()
	versions := s.jobs[req.GetName()]
	if len(versions) == 0 {
		return nil, status.Errorf(codes.NotFound, "job %q not found", req.GetName())
	}
	v := req.GetVersion()
	if v == 0 {
		return &batonv1.GetJobResponse{Job: versions[len(versions)-1]}, nil
	}
	if v < 0 || int(v) > len(versions) {
		return nil, status.Errorf(codes.NotFound, "job %q has no version %d", req.GetName(), v)
	}
	return &batonv1.GetJobResponse{Job: versions[v-1]}, nil
}

func (js *jobService) ListJobs(context.Context, *batonv1.ListJobsRequest) (*batonv1.ListJobsResponse, error) {
	s := js.s
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &batonv1.ListJobsResponse{}
	for _, versions := range s.jobs {
		resp.Jobs = append(resp.Jobs, versions[len(versions)-1])
	}
	slices.SortFunc(resp.Jobs, func(a, b *batonv1.Job) int { return cmp.Compare(a.GetName(), b.GetName()) })
	return resp, nil
}

func (js *jobService) DeleteJob(_ context.Context, req *batonv1.DeleteJobRequest) (*batonv1.DeleteJobResponse, error) {
	s := js.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.jobs[req.GetName()]; !ok {
		return nil, status.Errorf(codes.NotFound, "job %q not found", req.GetName())
	}
	for id := range s.runs {
		r, _ := s.runLocked(id)
		if r.GetJob() == req.GetName() && !terminal(r.GetState()) {
			return nil, status.Errorf(codes.FailedPrecondition, "job %q has an active run %d", req.GetName(), r.GetId())
		}
	}
	delete(s.jobs, req.GetName())
	return &batonv1.DeleteJobResponse{}, nil
}
