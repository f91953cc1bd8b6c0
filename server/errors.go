package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/scheduler"
	"github.com/batonhq/baton/server/store"
)

// toStatus converts an error from the layers below into a gRPC status.
// Errors that are not the caller's fault are logged and reported as
// INTERNAL without their details.
func toStatus(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var jerr *job.Error
	switch {
	case errors.As(err, &jerr):
		return invalidJob(jerr)
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrAlreadyActive), errors.Is(err, store.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, store.ErrConflict), errors.Is(err, scheduler.ErrNotActive):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, scheduler.ErrStopped), errors.Is(err, store.ErrNotLeader), errors.Is(err, scheduler.ErrStoreUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	log.ErrorContext(ctx, "request failed", slog.Any("error", err))
	return status.Error(codes.Internal, "internal error; see the batond log")
}

// invalidJob reports every problem of a job file: the message lists them
// one per line, and a google.rpc.BadRequest names each field.
func invalidJob(e *job.Error) error {
	st := status.New(codes.InvalidArgument, "invalid job file:\n"+e.Error())
	br := &errdetails.BadRequest{}
	for _, fe := range e.Errs {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
			Field:       fe.Path,
			Description: fe.String(),
		})
	}
	if withDetails, err := st.WithDetails(br); err == nil {
		st = withDetails
	}
	return st.Err()
}

// invalidArg reports a bad request field.
func invalidArg(field, msg string) error {
	st := status.New(codes.InvalidArgument, field+": "+msg)
	br := &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}}}
	if withDetails, err := st.WithDetails(br); err == nil {
		st = withDetails
	}
	return st.Err()
}

// notFound names what was not found, keeping the sentinel.
func notFound(err error, format string, args ...any) error {
	if errors.Is(err, store.ErrNotFound) {
		return &described{msg: fmt.Sprintf(format, args...) + " not found", err: err}
	}
	return err
}

// described is an error with a message for users that still matches the
// sentinel it wraps.
type described struct {
	msg string
	err error
}

func (e *described) Error() string { return e.msg }
func (e *described) Unwrap() error { return e.err }

// describe gives err a message for users when it matches target.
func describe(err, target error, format string, args ...any) error {
	if errors.Is(err, target) {
		return &described{msg: fmt.Sprintf(format, args...), err: err}
	}
	return err
}
