// Package errstatus renders errors the way every sailbox command line
// reports them: "error: CODE: message" on one line, CODE a gRPC status code
// name (context errors map to DeadlineExceeded and Canceled).
package errstatus

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Code returns the gRPC status code of err.
func Code(err error) codes.Code {
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Unknown
}

// Message returns err's message without its status prefix, on one line.
func Message(err error) string {
	msg := err.Error()
	if s, ok := status.FromError(err); ok {
		msg = s.Message()
	}
	return strings.ReplaceAll(msg, "\n", " ")
}

// Line returns "error: CODE: message".
func Line(err error) string {
	return "error: " + Code(err).String() + ": " + Message(err)
}
