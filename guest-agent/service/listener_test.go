package service_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/guest-agent/service"
	"github.com/sailbox/sailbox/internal/agenttest"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func listenHTTP(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	t.Cleanup(func() { srv.Close() })
	go srv.Serve(ln)
	return ln.Addr().(*net.TCPAddr).Port
}

func listenSilent(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go io.Copy(io.Discard, c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func wantStatus(t *testing.T, err error, code codes.Code, substr string) {
	t.Helper()
	if s, _ := status.FromError(err); err == nil || s.Code() != code || !strings.Contains(s.Message(), substr) {
		t.Errorf("got %v, want %v containing %q", err, code, substr)
	}
}

// The service without RPC: request and response mapping.
func TestListenerService(t *testing.T) {
	port := listenHTTP(t)
	s := &service.Listener{}
	ctx := context.Background()
	r, err := s.Wait(ctx, &agentv1.WaitListenerRequest{Port: uint32(port), Protocol: agentv1.ListenerProtocol_LISTENER_PROTOCOL_HTTP, TimeoutMs: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if r.Banner != "HTTP/1.1 200 OK" || r.BindAddress != net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) ||
		r.Protocol != agentv1.ListenerProtocol_LISTENER_PROTOCOL_HTTP || r.Port != uint32(port) || r.ElapsedNs <= 0 {
		t.Errorf("response %v", r)
	}
	// Unspecified protocol means tcp.
	r, err = s.Wait(ctx, &agentv1.WaitListenerRequest{Port: uint32(port), TimeoutMs: 5000})
	if err != nil || r.Protocol != agentv1.ListenerProtocol_LISTENER_PROTOCOL_TCP || r.Banner != "" {
		t.Errorf("unspecified protocol: %v, %v", r, err)
	}
	_, err = s.Wait(ctx, &agentv1.WaitListenerRequest{Port: 70000})
	wantStatus(t, err, codes.InvalidArgument, "70000")
	_, err = s.Wait(ctx, &agentv1.WaitListenerRequest{Port: 80, Protocol: 99})
	wantStatus(t, err, codes.InvalidArgument, "protocol 99")
}

// Listener.Wait through the real guest-agent binary over ttrpc.
func TestListenerRPCThroughAgent(t *testing.T) {
	a := agenttest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := transport.Dial(ctx, a.Addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(nc)
	defer tc.Close()
	cl := agentv1.NewListenerClient(tc)

	port := listenHTTP(t)
	r, err := cl.Wait(ctx, &agentv1.WaitListenerRequest{Port: uint32(port), Protocol: agentv1.ListenerProtocol_LISTENER_PROTOCOL_HTTP, TimeoutMs: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if r.Banner != "HTTP/1.1 200 OK" || r.DialAddress != net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) || r.Source == "" {
		t.Errorf("response %v", r)
	}

	silent := listenSilent(t)
	_, err = cl.Wait(ctx, &agentv1.WaitListenerRequest{Port: uint32(silent), Protocol: agentv1.ListenerProtocol_LISTENER_PROTOCOL_SSH, TimeoutMs: 300})
	wantStatus(t, err, codes.DeadlineExceeded, "but no banner")

	// Cancelling the call ends the wait in the agent, and the connection
	// stays usable.
	cctx, ccancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = cl.Wait(cctx, &agentv1.WaitListenerRequest{Port: uint32(silent), Protocol: agentv1.ListenerProtocol_LISTENER_PROTOCOL_SSH, TimeoutMs: 60000})
	ccancel()
	// The client gives up at its deadline (context error) or the agent
	// answers first (status); both say DeadlineExceeded.
	if s, _ := status.FromError(err); !errors.Is(err, context.DeadlineExceeded) && s.Code() != codes.DeadlineExceeded {
		t.Errorf("call with a short deadline: got %v, want DeadlineExceeded", err)
	}
	if _, err := cl.Wait(ctx, &agentv1.WaitListenerRequest{Port: uint32(silent), TimeoutMs: 5000}); err != nil {
		t.Errorf("tcp after a cancelled call: %v", err)
	}
}
