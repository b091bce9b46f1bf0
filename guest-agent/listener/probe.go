package listener

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Protocol says what "ready" means for a port.
type Protocol int

const (
	// TCP: a socket listens on the port and a connect to it succeeds.
	TCP Protocol = iota
	// HTTP: as TCP, and a GET / gets any HTTP response (a status line
	// starting "HTTP/"), whatever its status code.
	HTTP
	// SSH: as TCP, and the server sends a line starting "SSH-".
	SSH
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case HTTP:
		return "http"
	case SSH:
		return "ssh"
	}
	return "Protocol(" + strconv.Itoa(int(p)) + ")"
}

// ParseProtocol parses "tcp", "http" or "ssh" (case-insensitive).
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "http":
		return HTTP, nil
	case "ssh":
		return SSH, nil
	}
	return 0, status.Errorf(codes.InvalidArgument, "listener protocol %q: want tcp, http or ssh", s)
}

// DefaultTimeout applies when Request.Timeout is zero (the SDK's default).
const DefaultTimeout = 60 * time.Second

// Request names the port to wait for.
type Request struct {
	Port     int
	Protocol Protocol
	// Timeout bounds the wait; 0 means DefaultTimeout. The context's
	// deadline, if earlier, wins.
	Timeout time.Duration
}

// Result is what was observed when the port became ready.
type Result struct {
	Port     int
	Protocol Protocol
	// BindAddress is the listener's address as the kernel reports it
	// (0.0.0.0, ::, 127.0.0.1, ...); DialAddress is where the probe connected.
	BindAddress netip.AddrPort
	DialAddress netip.AddrPort
	// Banner is the SSH identification line or the HTTP status line,
	// without the line ending; empty for TCP.
	Banner string
	// Elapsed is the time from the start of the wait to readiness.
	Elapsed time.Duration
	// Source is the kernel interface that found the listener.
	Source string
}

// Prober waits for listeners. The zero value is ready to use.
type Prober struct {
	// Source selects how listeners are found (default SourceAuto).
	Source Source
	// MinInterval and MaxInterval bound the adaptive poll interval while
	// nothing listens: it starts at MinInterval and grows by a quarter per
	// poll up to MaxInterval. Defaults 1 ms and 10 ms. The interval is
	// also at least pollCostFactor times the average query cost (at most
	// 200 ms), so a slow source cannot eat a CPU: /proc/net/tcp lists every
	// TCP socket, ~4 ms here and far more with many connections.
	MinInterval, MaxInterval time.Duration
	// Logger receives debug records; nil means slog.Default().
	Logger *slog.Logger
}

// Wait waits with a zero Prober.
func Wait(ctx context.Context, req Request) (Result, error) {
	var p Prober
	return p.Wait(ctx, req)
}

const (
	// After a listener was found but the protocol check failed (connection
	// closed, reset, not SSH), retry with this backoff, doubling.
	minRetry = 10 * time.Millisecond
	maxRetry = 250 * time.Millisecond
	// A poll may cost at most 1/pollCostFactor of the time between polls
	// (by a moving average of the query cost), but the wait this forces is
	// capped: a loaded machine must not stretch detection into seconds.
	pollCostFactor = 20
	maxCostWait    = 200 * time.Millisecond
	// maxLine bounds the bytes read while looking for a banner or status
	// line; RFC 4253 lets an SSH server send other lines before its
	// identification, each at most 255 bytes.
	maxLine     = 255
	maxPreamble = 8 << 10
)

// Wait returns once the port is ready for req.Protocol, or fails with
// codes.DeadlineExceeded naming what was last seen, codes.Canceled when ctx
// is cancelled, or codes.InvalidArgument for a bad request.
func (p *Prober) Wait(ctx context.Context, req Request) (Result, error) {
	start := time.Now()
	if req.Port < 1 || req.Port > 65535 {
		return Result{}, status.Errorf(codes.InvalidArgument, "listener port %d: want 1..65535", req.Port)
	}
	if req.Protocol < TCP || req.Protocol > SSH {
		return Result{}, status.Errorf(codes.InvalidArgument, "listener port %d: unknown protocol %v", req.Port, req.Protocol)
	}
	if req.Timeout < 0 {
		return Result{}, status.Errorf(codes.InvalidArgument, "listener port %d: negative timeout %v", req.Port, req.Timeout)
	}
	timeout := req.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	minIv, maxIv := p.MinInterval, p.MaxInterval
	if minIv <= 0 {
		minIv = time.Millisecond
	}
	if maxIv <= 0 {
		maxIv = 10 * time.Millisecond
	}
	maxIv = max(maxIv, minIv)
	log := p.Logger
	if log == nil {
		log = slog.Default()
	}

	finder, err := OpenFinder(p.Source)
	if err != nil {
		return Result{}, status.Errorf(codes.Internal, "listener port %d: %v", req.Port, err)
	}
	defer finder.Close()

	port := uint16(req.Port)
	seen := fmt.Sprintf("nothing listening on port %d", req.Port)
	interval, retry := minIv, minRetry
	var avgCost time.Duration
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for {
		t0 := time.Now()
		ls, err := finder.Listeners(port)
		if c := time.Since(t0); avgCost == 0 {
			avgCost = c
		} else {
			avgCost += (c - avgCost) / 4
		}
		if err != nil {
			return Result{}, status.Errorf(codes.Internal, "listener port %d: %v", req.Port, err)
		}
		wait := max(interval, min(pollCostFactor*avgCost, maxCostWait))
		if len(ls) == 0 {
			interval = min(interval+interval/4+1, maxIv)
		} else {
			r, obs := probeAll(ctx, req.Protocol, ls)
			if obs == "" {
				r.Port, r.Protocol, r.Source = req.Port, req.Protocol, finder.Name()
				r.Elapsed = time.Since(start)
				log.Debug("listener ready", "port", req.Port, "protocol", req.Protocol,
					"bind", r.BindAddress, "banner", r.Banner, "elapsed", r.Elapsed, "source", r.Source)
				return r, nil
			}
			seen = obs
			wait, retry = retry, min(2*retry, maxRetry)
			interval = minIv // it may go away and come back: look closely again
		}
		if ctx.Err() != nil {
			return Result{}, waitError(ctx, req, seen, time.Since(start))
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return Result{}, waitError(ctx, req, seen, time.Since(start))
		case <-timer.C:
		}
	}
}

func waitError(ctx context.Context, req Request, seen string, elapsed time.Duration) error {
	code := codes.DeadlineExceeded
	if errors.Is(ctx.Err(), context.Canceled) {
		code = codes.Canceled
	}
	return status.Errorf(code, "wait for %v listener on port %d: %s (after %v)",
		req.Protocol, req.Port, seen, elapsed.Round(time.Millisecond))
}

// dialAddr is where to connect to reach a listener: loopback of the same
// family for a wildcard bind, else the bound address itself.
func dialAddr(l Listening) netip.AddrPort {
	ip := l.Addr.Addr()
	switch {
	case ip == netip.IPv4Unspecified():
		ip = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case ip == netip.IPv6Unspecified():
		ip = netip.IPv6Loopback()
	case ip.Is6() && (ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast()) && l.IfIndex != 0:
		ip = ip.WithZone(strconv.Itoa(int(l.IfIndex)))
	}
	return netip.AddrPortFrom(ip, l.Addr.Port())
}

// probeAll checks every distinct listener at once (a port may have several,
// e.g. 127.0.0.1 and ::1, or SO_REUSEPORT groups) and returns the first that
// is ready. If none is, it returns the most telling observation.
func probeAll(ctx context.Context, proto Protocol, ls []Listening) (Result, string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type outcome struct {
		r    Result
		obs  string
		rank int
	}
	seenDial := map[netip.AddrPort]bool{}
	ch := make(chan outcome, len(ls))
	n := 0
	for _, l := range ls {
		d := dialAddr(l)
		if seenDial[d] {
			continue
		}
		seenDial[d] = true
		n++
		go func() {
			banner, obs, rank := probeOne(ctx, proto, d)
			ch <- outcome{Result{BindAddress: l.Addr, DialAddress: d, Banner: banner}, obs, rank}
		}()
	}
	best := outcome{rank: -1}
	for range n {
		o := <-ch
		if o.obs == "" {
			return o.r, ""
		}
		if o.rank > best.rank {
			best = o
		}
	}
	return Result{}, best.obs
}

// Observation ranks: the further a probe got, the more it says about why
// the port is not ready.
const (
	rankConnect = iota
	rankResponse
	rankWrongProtocol
)

// probeOne connects to addr and checks proto. It returns "" as observation
// when ready, else what it saw and how far it got.
func probeOne(ctx context.Context, proto Protocol, addr netip.AddrPort) (banner, obs string, rank int) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Sprintf("listening on %v but connect did not complete", addr), rankConnect
		}
		return "", fmt.Sprintf("listening on %v but connect failed: %v", addr, dialCause(err)), rankConnect
	}
	defer conn.Close()
	if proto == TCP {
		return "", "", 0
	}
	// Unblock reads when the wait ends; the deadline covers the ctx timeout.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	br := bufio.NewReaderSize(conn, maxPreamble)
	switch proto {
	case HTTP:
		req := "GET / HTTP/1.1\r\nHost: " + addr.String() +
			"\r\nUser-Agent: sailbox-listener-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
		if _, err := io.WriteString(conn, req); err != nil {
			return "", fmt.Sprintf("listening on %v but no HTTP response: write request: %v", addr, readCause(err)), rankResponse
		}
		line, err := readLine(br)
		if line == "" && err != nil {
			return "", fmt.Sprintf("listening on %v but no HTTP response: %v", addr, readCause(err)), rankResponse
		}
		if !strings.HasPrefix(line, "HTTP/") {
			return "", fmt.Sprintf("listening on %v but response not HTTP: got %q", addr, line), rankWrongProtocol
		}
		return line, "", 0
	case SSH:
		var first string
		for total := 0; total < maxPreamble; {
			line, err := readLine(br)
			total += len(line) + 2
			if strings.HasPrefix(line, "SSH-") {
				return line, "", 0
			}
			if first == "" && line != "" {
				first = line
			}
			if err != nil {
				break
			}
		}
		if first != "" {
			return "", fmt.Sprintf("listening on %v but banner not SSH: got %q", addr, first), rankWrongProtocol
		}
		return "", fmt.Sprintf("listening on %v but no banner", addr), rankResponse
	}
	return "", "", 0
}

// readLine reads one line, without its "\r\n" or "\n", at most maxLine
// bytes of it (the rest of a longer line is discarded). A final line
// without newline is returned with the error that ended it.
func readLine(br *bufio.Reader) (string, error) {
	var buf []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf) < maxLine {
			buf = append(buf, frag[:min(len(frag), maxLine-len(buf))]...)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		line := string(bytes.TrimRight(buf, "\r\n"))
		if err != nil {
			return line, err
		}
		return line, nil
	}
}

// dialCause shortens a dial error to its cause ("connection refused").
func dialCause(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

func readCause(err error) string {
	switch {
	case errors.Is(err, io.EOF):
		return "connection closed"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), isTimeout(err):
		return "none before the deadline"
	}
	return dialCause(err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
