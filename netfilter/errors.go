package netfilter

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// codedError gives an error a gRPC status code that survives wrapping
// (status.Code and status.FromError look through fmt.Errorf's %w), so the
// supervisor's RPC layer and CLI report NotFound, InvalidArgument, ... .
type codedError struct {
	code codes.Code
	err  error
}

func (e *codedError) Error() string              { return e.err.Error() }
func (e *codedError) Unwrap() error              { return e.err }
func (e *codedError) GRPCStatus() *status.Status { return status.New(e.code, e.err.Error()) }

func withCode(code codes.Code, err error) error { return &codedError{code: code, err: err} }

var (
	// ErrAttached means the device already has a live filter (AlreadyExists).
	ErrAttached error = &codedError{codes.AlreadyExists, errorString("ingress filter already attached")}
	// ErrNotAttached means the device has no live filter (NotFound).
	ErrNotAttached error = &codedError{codes.NotFound, errorString("no ingress filter attached")}
)

type errorString string

func (e errorString) Error() string { return string(e) }
