package ingress

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Protocol is the protocol of an ingress port.
type Protocol string

const (
	// HTTP is served through the platform's HTTP ingress (the default).
	HTTP Protocol = "http"
	// TCP is a raw TCP endpoint, optionally restricted to source prefixes.
	TCP Protocol = "tcp"
)

// ReservedPort is used by the platform and cannot be exposed.
const ReservedPort = 10000

// SSHPort may be exposed as raw TCP but not as HTTP.
const SSHPort = 22

// DefaultMaxRawTCP is the default number of concurrent raw-TCP endpoints an
// organisation may hold.
const DefaultMaxRawTCP = 32

// WellKnownUnauthenticated lists the service ports whose common servers
// accept connections without authentication by default. Exposing one of them
// as raw TCP needs a CIDR allowlist or an explicit AllowPublic. This is the
// one place the list lives; add ports here.
var WellKnownUnauthenticated = map[int]string{
	2375:  "Docker API",
	2379:  "etcd",
	3306:  "MySQL",
	5432:  "PostgreSQL",
	5984:  "CouchDB",
	6379:  "Redis",
	8086:  "InfluxDB",
	9042:  "Cassandra",
	9200:  "Elasticsearch",
	11211: "Memcached",
	27017: "MongoDB",
}

// Port is one requested ingress port, as the SDK's IngressPort describes it.
type Port struct {
	// Port is the guest port, 1..65535. An int so that out-of-range input
	// reaches Validate instead of being truncated.
	Port int
	// Protocol is HTTP or TCP; empty means HTTP.
	Protocol Protocol
	// CIDRAllowlist restricts a raw TCP port to these source prefixes;
	// empty means any source.
	CIDRAllowlist []string
	// AllowPublic acknowledges that a well-known unauthenticated port is
	// deliberately reachable from anywhere.
	AllowPublic bool
}

func (p Port) proto() Protocol {
	if p.Protocol == "" {
		return HTTP
	}
	return p.Protocol
}

// String renders p in the ParseSpec syntax.
func (p Port) String() string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(p.Port))
	if p.proto() != HTTP || p.Protocol != "" {
		b.WriteString("/" + string(p.proto()))
	}
	if p.AllowPublic {
		b.WriteString(":public")
	}
	if len(p.CIDRAllowlist) > 0 {
		b.WriteString("=" + strings.Join(p.CIDRAllowlist, ","))
	}
	return b.String()
}

// Limits are the organisation-wide limits Validate enforces.
type Limits struct {
	// MaxRawTCP is the number of concurrent raw-TCP endpoints the
	// organisation may hold; <= 0 means DefaultMaxRawTCP.
	MaxRawTCP int
	// RawTCPInUse is how many raw-TCP endpoints the organisation already
	// holds in other sandboxes.
	RawTCPInUse int
}

func (l Limits) maxRawTCP() int {
	if l.MaxRawTCP <= 0 {
		return DefaultMaxRawTCP
	}
	return l.MaxRawTCP
}

// Error is a validation error for one entry of an ingress list. It carries a
// gRPC status code (GRPCStatus) so RPC layers return it unchanged.
type Error struct {
	Code  codes.Code
	Index int    // position of the entry in the list (or spec argument)
	Entry string // the entry as written, e.g. "5432/tcp=10.0.0.0/8"
	Msg   string
}

func (e *Error) Error() string {
	return fmt.Sprintf("ingress entry %d (%s): %s", e.Index, e.Entry, e.Msg)
}

// GRPCStatus lets status.FromError and status.Code see the code.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Error()) }

func invalid(i int, p Port, format string, args ...any) *Error {
	return &Error{Code: codes.InvalidArgument, Index: i, Entry: p.String(), Msg: fmt.Sprintf(format, args...)}
}

// Validate checks an ingress list against DESIGN.md §1 and the organisation
// limits. It returns nil or the *Error of the first offending entry.
func Validate(ports []Port, lim Limits) error {
	_, err := validate(ports, lim)
	return err
}

// Policy validates ports and returns the source-prefix policy to enforce:
// each raw TCP port with a non-empty allowlist maps to its prefixes (sorted,
// duplicates removed). Ports absent from the map are open to any source.
// The result is assignable to netfilter.Policy.
func Policy(ports []Port, lim Limits) (map[uint16][]netip.Prefix, error) {
	return validate(ports, lim)
}

func validate(ports []Port, lim Limits) (map[uint16][]netip.Prefix, error) {
	policy := make(map[uint16][]netip.Prefix)
	seen := make(map[int]int, len(ports))
	rawTCP := 0
	for i, p := range ports {
		if p.Port < 1 || p.Port > 65535 {
			return nil, invalid(i, p, "port %d is outside 1..65535", p.Port)
		}
		if j, dup := seen[p.Port]; dup {
			return nil, invalid(i, p, "port %d is already listed as entry %d", p.Port, j)
		}
		seen[p.Port] = i
		if p.Port == ReservedPort {
			return nil, invalid(i, p, "port %d is reserved by the platform", ReservedPort)
		}
		switch p.proto() {
		case HTTP:
			if p.Port == SSHPort {
				return nil, invalid(i, p, "port %d cannot be HTTP; expose it as raw TCP (%d/tcp)", SSHPort, SSHPort)
			}
			if len(p.CIDRAllowlist) > 0 {
				return nil, invalid(i, p, "cidr_allowlist applies to raw TCP ports only")
			}
			if p.AllowPublic {
				return nil, invalid(i, p, "allow_public applies to raw TCP ports only")
			}
			continue
		case TCP:
		default:
			return nil, invalid(i, p, "protocol %q is neither %q nor %q", p.Protocol, HTTP, TCP)
		}
		if p.AllowPublic && len(p.CIDRAllowlist) > 0 {
			return nil, invalid(i, p, "allow_public and cidr_allowlist exclude each other")
		}
		if svc, ok := WellKnownUnauthenticated[p.Port]; ok && !p.AllowPublic && len(p.CIDRAllowlist) == 0 {
			return nil, invalid(i, p, "port %d (%s) is a well-known unauthenticated service port; raw TCP on it needs a cidr_allowlist or allow_public", p.Port, svc)
		}
		var prefixes []netip.Prefix
		for _, s := range p.CIDRAllowlist {
			pfx, err := parsePrefix(s)
			if err != nil {
				return nil, invalid(i, p, "cidr_allowlist entry %q: %v", s, err)
			}
			prefixes = append(prefixes, pfx)
		}
		rawTCP++
		if max := lim.maxRawTCP(); lim.RawTCPInUse+rawTCP > max {
			return nil, &Error{Code: codes.ResourceExhausted, Index: i, Entry: p.String(),
				Msg: fmt.Sprintf("raw TCP endpoint exceeds the organisation limit of %d concurrent raw-TCP endpoints (%d held by other sandboxes, %d in this list)",
					max, lim.RawTCPInUse, rawTCP)}
		}
		if len(prefixes) > 0 {
			slices.SortFunc(prefixes, comparePrefix)
			policy[uint16(p.Port)] = slices.Compact(prefixes)
		}
	}
	return policy, nil
}

// parsePrefix parses a CIDR prefix and rejects forms that are valid netip
// syntax but not a sensible allowlist entry.
func parsePrefix(s string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("malformed prefix")
	}
	if pfx.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("IPv4-mapped IPv6 prefix; write the IPv4 prefix instead")
	}
	if m := pfx.Masked(); m != pfx {
		return netip.Prefix{}, fmt.Errorf("host bits set; the prefix is %s", m)
	}
	return pfx, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// ParseSpec parses CLI arguments in the syntax of the package doc
// (PORT[/PROTO][:public][=CIDR,...]) into ports. It does not validate them;
// call Validate or Policy next. Errors are InvalidArgument naming the argument.
func ParseSpec(args []string) ([]Port, error) {
	ports := make([]Port, 0, len(args))
	for i, arg := range args {
		p, err := parseOne(arg)
		if err != nil {
			return nil, &Error{Code: codes.InvalidArgument, Index: i, Entry: arg, Msg: err.Error()}
		}
		ports = append(ports, p)
	}
	return ports, nil
}

func parseOne(arg string) (Port, error) {
	var p Port
	head, cidrs, hasCIDRs := strings.Cut(arg, "=")
	if hasCIDRs {
		if cidrs == "" {
			return p, fmt.Errorf("empty allowlist after '='")
		}
		p.CIDRAllowlist = strings.Split(cidrs, ",")
	}
	head, flag, hasFlag := strings.Cut(head, ":")
	if hasFlag {
		if flag != "public" {
			return p, fmt.Errorf("unknown flag %q (only \":public\")", flag)
		}
		p.AllowPublic = true
	}
	num, proto, hasProto := strings.Cut(head, "/")
	if hasProto {
		if proto == "" {
			return p, fmt.Errorf("empty protocol after '/'")
		}
		p.Protocol = Protocol(proto)
	}
	n, err := strconv.Atoi(num)
	if err != nil {
		return p, fmt.Errorf("port %q is not a number", num)
	}
	p.Port = n
	return p, nil
}
