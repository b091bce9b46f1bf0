package service

import (
	"context"
	"time"

	"github.com/sailbox/sailbox/guest-agent/listener"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Listener serves agentv1.Listener over listener.Prober.
type Listener struct {
	P listener.Prober
}

var _ agentv1.ListenerService = (*Listener)(nil)

func (s *Listener) Wait(ctx context.Context, req *agentv1.WaitListenerRequest) (*agentv1.WaitListenerResponse, error) {
	proto, err := ListenerProtocolFromProto(req.Protocol)
	if err != nil {
		return nil, err
	}
	r, err := s.P.Wait(ctx, listener.Request{
		Port: int(req.Port), Protocol: proto, Timeout: time.Duration(req.TimeoutMs) * time.Millisecond,
	})
	if err != nil {
		return nil, err
	}
	return &agentv1.WaitListenerResponse{
		Port: uint32(r.Port), Protocol: ListenerProtocolProto(r.Protocol),
		BindAddress: r.BindAddress.String(), DialAddress: r.DialAddress.String(),
		Banner: r.Banner, ElapsedNs: r.Elapsed.Nanoseconds(), Source: r.Source,
	}, nil
}

// ListenerProtocolFromProto maps the wire enum; unspecified means TCP.
func ListenerProtocolFromProto(p agentv1.ListenerProtocol) (listener.Protocol, error) {
	switch p {
	case agentv1.ListenerProtocol_LISTENER_PROTOCOL_UNSPECIFIED, agentv1.ListenerProtocol_LISTENER_PROTOCOL_TCP:
		return listener.TCP, nil
	case agentv1.ListenerProtocol_LISTENER_PROTOCOL_HTTP:
		return listener.HTTP, nil
	case agentv1.ListenerProtocol_LISTENER_PROTOCOL_SSH:
		return listener.SSH, nil
	}
	return 0, status.Errorf(codes.InvalidArgument, "listener protocol %d unknown", p)
}

// ListenerProtocolProto maps a listener.Protocol to the wire enum.
func ListenerProtocolProto(p listener.Protocol) agentv1.ListenerProtocol {
	switch p {
	case listener.HTTP:
		return agentv1.ListenerProtocol_LISTENER_PROTOCOL_HTTP
	case listener.SSH:
		return agentv1.ListenerProtocol_LISTENER_PROTOCOL_SSH
	}
	return agentv1.ListenerProtocol_LISTENER_PROTOCOL_TCP
}
