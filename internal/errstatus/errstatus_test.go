package errstatus

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestLine(t *testing.T) {
	cases := map[error]string{
		status.Error(codes.NotFound, "exec x not found"): "error: NotFound: exec x not found",
		fmt.Errorf("wait: %w", context.DeadlineExceeded): "error: DeadlineExceeded: wait: context deadline exceeded",
		context.Canceled:         "error: Canceled: context canceled",
		errors.New("two\nlines"): "error: Unknown: two lines",
		status.Error(codes.InvalidArgument, "bad\nthing"): "error: InvalidArgument: bad thing",
	}
	for err, want := range cases {
		if got := Line(err); got != want {
			t.Errorf("Line(%v) = %q, want %q", err, got, want)
		}
	}
}
