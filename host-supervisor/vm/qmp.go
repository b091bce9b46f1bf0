package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"time"
)

// QMP is a client of QEMU's machine protocol on a unix socket. Commands are
// serialised; asynchronous events are dropped.
type QMP struct {
	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Reader
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	QMP   json.RawMessage `json:"QMP"`
}

// DialQMP connects to path, retrying until ctx ends (QEMU creates the socket
// shortly after it starts), and negotiates capabilities.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			q := &QMP{conn: c, r: bufio.NewReader(c)}
			if err := q.handshake(ctx); err != nil {
				c.Close()
				return nil, err
			}
			return q, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (q *QMP) handshake(ctx context.Context) error {
	q.setDeadline(ctx)
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("qmp greeting: %w", err)
	}
	var g qmpReply
	if json.Unmarshal(line, &g) != nil || g.QMP == nil {
		return fmt.Errorf("qmp greeting: unexpected %q", line)
	}
	_, err = q.execute(ctx, "qmp_capabilities", nil)
	return err
}

func (q *QMP) setDeadline(ctx context.Context) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	q.conn.SetDeadline(dl)
}

// Execute runs a QMP command and returns its "return" value.
func (q *QMP) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.setDeadline(ctx)
	return q.execute(ctx, cmd, args)
}

func (q *QMP) execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		var r qmpReply
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("qmp %s: bad reply %q: %w", cmd, line, err)
		}
		switch {
		case r.Event != "":
			continue
		case r.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		case r.Return != nil:
			return r.Return, nil
		}
	}
}

// Stop pauses the guest's vCPUs.
func (q *QMP) Stop(ctx context.Context) error { _, err := q.Execute(ctx, "stop", nil); return err }

// Cont resumes them.
func (q *QMP) Cont(ctx context.Context) error { _, err := q.Execute(ctx, "cont", nil); return err }

// Quit ends QEMU at once (no guest shutdown).
func (q *QMP) Quit(ctx context.Context) error {
	_, err := q.Execute(ctx, "quit", nil)
	return err
}

// Status is QEMU's query-status answer.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "shutdown", ...
}

// QueryStatus reports whether the guest runs.
func (q *QMP) QueryStatus(ctx context.Context) (Status, error) {
	raw, err := q.Execute(ctx, "query-status", nil)
	if err != nil {
		return Status{}, err
	}
	var s Status
	if err := json.Unmarshal(raw, &s); err != nil {
		return Status{}, fmt.Errorf("qmp query-status: %w", err)
	}
	return s, nil
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }
