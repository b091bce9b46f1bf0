package lifecycle

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestWrapKeepsCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{status.Error(codes.Unavailable, "qmp gone"), codes.Unavailable},
		{errors.New("plain"), codes.Unknown},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
	} {
		err := wrap(tc.err, "sandbox %s: pause", "sb")
		if status.Code(err) != tc.code || !strings.HasPrefix(status.Convert(err).Message(), "sandbox sb: pause: ") {
			t.Errorf("wrap(%v) = %v", tc.err, err)
		}
	}
	err := withCause(status.Error(codes.Aborted, "hook failed"), errors.New("link down"), "thaw")
	if status.Code(err) != codes.Aborted || status.Convert(err).Message() != "hook failed (and thaw failed: link down)" {
		t.Errorf("withCause: %v", err)
	}
	if err := withCause(status.Error(codes.Aborted, "x"), nil, "thaw"); status.Convert(err).Message() != "x" {
		t.Errorf("withCause without a cause: %v", err)
	}
}

func TestNewResumeRequest(t *testing.T) {
	a, err := NewResumeRequest(3, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewResumeRequest(3, nil)
	if len(a.Entropy) < 64 || string(a.Entropy) == string(b.Entropy) || a.Generation != 3 || a.HostTimeUnixNano == 0 {
		t.Fatalf("resume request %+v", a)
	}
}

func TestMemJournalAndNilManager(t *testing.T) {
	j := NewMemJournal("sb", 4)
	if g, _ := j.BumpGeneration("sb"); g != 5 {
		t.Fatalf("bump: %d", g)
	}
	if lost, _ := j.RestoreGeneration("sb", 2); lost != nil {
		t.Fatalf("lost %q", lost)
	}
	if g, _ := j.Generation("sb"); g != 2 {
		t.Fatalf("after restore: %d", g)
	}
	var m *Manager
	if err := m.Wake(context.Background(), "sb"); err != nil {
		t.Fatalf("nil manager wake: %v", err)
	}
}
