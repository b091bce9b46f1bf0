package ingress

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func tcp(port int, cidrs ...string) Port {
	return Port{Port: port, Protocol: TCP, CIDRAllowlist: cidrs}
}
func public(port int) Port { return Port{Port: port, Protocol: TCP, AllowPublic: true} }
func http(port int) Port   { return Port{Port: port} }

type vcase struct {
	name  string
	ports []Port
	lim   Limits
	code  codes.Code // codes.OK = valid
	index int        // offending entry
	msg   string     // substring of the message
}

func TestValidate(t *testing.T) {
	tests := []vcase{
		{name: "empty list", ports: nil},
		{name: "bare port is http", ports: []Port{http(8080)}},
		{name: "explicit http", ports: []Port{{Port: 8080, Protocol: HTTP}}},
		{name: "lowest port", ports: []Port{http(1)}},
		{name: "highest port", ports: []Port{tcp(65535)}},
		{name: "port 0", ports: []Port{http(0)}, code: codes.InvalidArgument, msg: "outside 1..65535"},
		{name: "negative port", ports: []Port{tcp(-1)}, code: codes.InvalidArgument, msg: "outside 1..65535"},
		{name: "port 65536", ports: []Port{http(65536)}, code: codes.InvalidArgument, msg: "port 65536 is outside"},
		{name: "duplicate same protocol", ports: []Port{http(80), http(81), http(80)}, code: codes.InvalidArgument, index: 2, msg: "already listed as entry 0"},
		{name: "duplicate across protocols", ports: []Port{http(8080), tcp(8080)}, code: codes.InvalidArgument, index: 1, msg: "already listed"},
		{name: "reserved http", ports: []Port{http(10000)}, code: codes.InvalidArgument, msg: "reserved"},
		{name: "reserved tcp", ports: []Port{http(80), tcp(10000)}, code: codes.InvalidArgument, index: 1, msg: "reserved"},
		{name: "10001 fine", ports: []Port{http(10001), tcp(9999)}},
		{name: "22 http", ports: []Port{http(22)}, code: codes.InvalidArgument, msg: "cannot be HTTP"},
		{name: "22 explicit http", ports: []Port{{Port: 22, Protocol: HTTP}}, code: codes.InvalidArgument, msg: "cannot be HTTP"},
		{name: "22 tcp", ports: []Port{tcp(22)}},
		{name: "22 tcp allowlist", ports: []Port{tcp(22, "203.0.113.0/24")}},
		{name: "unknown protocol", ports: []Port{{Port: 53, Protocol: "udp"}}, code: codes.InvalidArgument, msg: `protocol "udp"`},
		{name: "upper-case protocol", ports: []Port{{Port: 53, Protocol: "TCP"}}, code: codes.InvalidArgument, msg: "protocol"},
		{name: "allowlist on http", ports: []Port{{Port: 8080, CIDRAllowlist: []string{"10.0.0.0/8"}}}, code: codes.InvalidArgument, msg: "raw TCP ports only"},
		{name: "allow_public on http", ports: []Port{{Port: 8080, AllowPublic: true}}, code: codes.InvalidArgument, msg: "allow_public applies"},
		{name: "allow_public and allowlist", ports: []Port{{Port: 2222, Protocol: TCP, AllowPublic: true, CIDRAllowlist: []string{"10.0.0.0/8"}}}, code: codes.InvalidArgument, msg: "exclude each other"},
		{name: "allow_public on ordinary tcp", ports: []Port{public(2222)}},
		{name: "tcp open", ports: []Port{tcp(2222)}},
		{name: "v4 and v6 allowlist", ports: []Port{tcp(2222, "10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32", "::/0", "0.0.0.0/0")}},
		{name: "malformed prefix", ports: []Port{tcp(2222, "10.0.0.0/33")}, code: codes.InvalidArgument, msg: `"10.0.0.0/33": malformed`},
		{name: "bare address", ports: []Port{tcp(2222, "10.0.0.1")}, code: codes.InvalidArgument, msg: "malformed"},
		{name: "garbage", ports: []Port{tcp(2222, "ten/8")}, code: codes.InvalidArgument, msg: "malformed"},
		{name: "empty string", ports: []Port{tcp(2222, "")}, code: codes.InvalidArgument, msg: "malformed"},
		{name: "zone", ports: []Port{tcp(2222, "fe80::%eth0/64")}, code: codes.InvalidArgument, msg: "malformed"},
		{name: "v4 host bits", ports: []Port{tcp(2222, "10.0.0.1/8")}, code: codes.InvalidArgument, msg: "host bits set; the prefix is 10.0.0.0/8"},
		{name: "v6 host bits", ports: []Port{tcp(2222, "2001:db8::1/32")}, code: codes.InvalidArgument, msg: "host bits set"},
		{name: "v4-mapped v6", ports: []Port{tcp(2222, "::ffff:10.0.0.0/104")}, code: codes.InvalidArgument, msg: "IPv4-mapped"},
		{name: "v4-mapped v6 host", ports: []Port{tcp(2222, "::ffff:10.0.0.1/128")}, code: codes.InvalidArgument, msg: "IPv4-mapped"},
		{name: "second bad entry named", ports: []Port{tcp(2222, "10.0.0.0/8"), tcp(2223, "10.0.0.0/8", "bad")}, code: codes.InvalidArgument, index: 1, msg: `"bad"`},
		{name: "duplicate prefixes accepted", ports: []Port{tcp(2222, "10.0.0.0/8", "10.0.0.0/8")}},
		{name: "http on well-known port", ports: []Port{http(9200), http(5432)}},
		{name: "22 open tcp is not well-known", ports: []Port{tcp(22)}},
	}
	for port, svc := range WellKnownUnauthenticated {
		tests = append(tests,
			vcase{name: fmt.Sprintf("well-known %d open", port), ports: []Port{tcp(port)}, code: codes.InvalidArgument, msg: svc},
			vcase{name: fmt.Sprintf("well-known %d public", port), ports: []Port{public(port)}},
			vcase{name: fmt.Sprintf("well-known %d allowlist", port), ports: []Port{tcp(port, "10.1.0.0/16")}},
		)
	}
	// Organisation limit.
	many := func(n int) []Port {
		var ps []Port
		for i := range n {
			ps = append(ps, tcp(20000+i))
		}
		return ps
	}
	tests = append(tests, []vcase{
		{name: "32 raw tcp default", ports: many(32)},
		{name: "33 raw tcp default", ports: many(33), code: codes.ResourceExhausted, index: 32, msg: "limit of 32 concurrent raw-TCP endpoints"},
		{name: "http does not count", ports: append(many(32), http(80), http(81))},
		{name: "in use elsewhere", ports: many(2), lim: Limits{RawTCPInUse: 31}, code: codes.ResourceExhausted, index: 1, msg: "(31 held by other sandboxes, 2 in this list)"},
		{name: "in use elsewhere fits", ports: many(1), lim: Limits{RawTCPInUse: 31}},
		{name: "custom limit", ports: many(3), lim: Limits{MaxRawTCP: 2}, code: codes.ResourceExhausted, index: 2, msg: "limit of 2 "},
		{name: "custom limit fits", ports: many(100), lim: Limits{MaxRawTCP: 100}},
		{name: "zero limit means default", ports: many(33), lim: Limits{MaxRawTCP: 0}, code: codes.ResourceExhausted, index: 32},
		{name: "invalid entry reported before limit", ports: append(many(33), http(0)), code: codes.ResourceExhausted, index: 32},
		{name: "invalid entry before limit position", ports: append([]Port{http(0)}, many(33)...), code: codes.InvalidArgument, index: 0},
	}...)

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.ports, tt.lim)
			if tt.code == codes.OK {
				if err != nil {
					t.Fatalf("Validate: unexpected error %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: want %v, got nil", tt.code)
			}
			if got := status.Code(err); got != tt.code {
				t.Errorf("code = %v, want %v (%v)", got, tt.code, err)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not *Error", err)
			}
			if e.Index != tt.index {
				t.Errorf("index = %d, want %d (%v)", e.Index, tt.index, err)
			}
			if e.Entry != tt.ports[tt.index].String() {
				t.Errorf("entry = %q, want %q", e.Entry, tt.ports[tt.index].String())
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("message %q does not contain %q", err.Error(), tt.msg)
			}
			if !strings.Contains(status.Convert(err).Message(), tt.ports[tt.index].String()) {
				t.Errorf("status message %q does not name the entry", status.Convert(err).Message())
			}
		})
	}
}

func TestPolicy(t *testing.T) {
	pol, err := Policy([]Port{
		http(8080),
		tcp(2222),
		public(6379),
		tcp(5432, "2001:db8::/32", "10.0.0.0/8", "10.0.0.0/8", "192.0.2.1/32", "::/0"),
		tcp(22, "203.0.113.0/24"),
	}, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint16][]netip.Prefix{
		5432: {
			netip.MustParsePrefix("10.0.0.0/8"),
			netip.MustParsePrefix("192.0.2.1/32"),
			netip.MustParsePrefix("::/0"),
			netip.MustParsePrefix("2001:db8::/32"),
		},
		22: {netip.MustParsePrefix("203.0.113.0/24")},
	}
	if !reflect.DeepEqual(pol, want) {
		t.Fatalf("Policy = %v, want %v", pol, want)
	}
	if _, err := Policy([]Port{tcp(5432)}, Limits{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Policy of an invalid list: %v", err)
	}
}

func TestParseSpec(t *testing.T) {
	tests := []struct {
		arg  string
		want Port
		err  string
	}{
		{arg: "8080", want: Port{Port: 8080}},
		{arg: "8080/http", want: Port{Port: 8080, Protocol: HTTP}},
		{arg: "2222/tcp", want: Port{Port: 2222, Protocol: TCP}},
		{arg: "5432/tcp=10.0.0.0/8,2001:db8::/32", want: Port{Port: 5432, Protocol: TCP, CIDRAllowlist: []string{"10.0.0.0/8", "2001:db8::/32"}}},
		{arg: "6379/tcp:public", want: Port{Port: 6379, Protocol: TCP, AllowPublic: true}},
		{arg: "6379/tcp:public=10.0.0.0/8", want: Port{Port: 6379, Protocol: TCP, AllowPublic: true, CIDRAllowlist: []string{"10.0.0.0/8"}}},
		{arg: "99999", want: Port{Port: 99999}}, // range is Validate's job
		{arg: "53/udp", want: Port{Port: 53, Protocol: "udp"}},
		{arg: "", err: "not a number"},
		{arg: "http", err: `port "http" is not a number`},
		{arg: "80/", err: "empty protocol"},
		{arg: "80/tcp=", err: "empty allowlist"},
		{arg: "80/tcp:private", err: `unknown flag "private"`},
		{arg: "/tcp", err: "not a number"},
	}
	for _, tt := range tests {
		t.Run(tt.arg, func(t *testing.T) {
			got, err := ParseSpec([]string{"1", tt.arg})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseSpec(%q) error = %v, want %q", tt.arg, err, tt.err)
				}
				var e *Error
				if !errors.As(err, &e) || e.Index != 1 || e.Entry != tt.arg || status.Code(err) != codes.InvalidArgument {
					t.Fatalf("error %#v does not name argument 1 %q as InvalidArgument", err, tt.arg)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSpec(%q): %v", tt.arg, err)
			}
			if !reflect.DeepEqual(got[1], tt.want) {
				t.Fatalf("ParseSpec(%q) = %+v, want %+v", tt.arg, got[1], tt.want)
			}
			// String renders the same syntax back.
			if s := got[1].String(); s != tt.arg {
				t.Errorf("String() = %q, want %q", s, tt.arg)
			}
		})
	}
}

func TestParseSpecThenValidate(t *testing.T) {
	ports, err := ParseSpec([]string{"8080", "5432/tcp=10.0.0.0/8,2001:db8::/32", "6379/tcp:public"})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := Policy(ports, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pol) != 1 || len(pol[5432]) != 2 {
		t.Fatalf("policy = %v", pol)
	}
	ports, _ = ParseSpec([]string{"6379/tcp"})
	if err := Validate(ports, Limits{}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "Redis") {
		t.Fatalf("6379/tcp: %v", err)
	}
}
