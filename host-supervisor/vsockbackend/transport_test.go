package vsockbackend

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/sailbox/sailbox/protocol/transport"
)

// The supervisor's own hvsock:// dialer reaches a guest listener through
// the back end, and retries while the guest port is not listening yet.
func TestTransportDialer(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	addr := fmt.Sprintf("hvsock://%s:%d", e.cfg.HybridSocket, 10000)

	go func() {
		time.Sleep(300 * time.Millisecond) // the agent starts late
		serveEcho(g.Listen(10000))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := transport.Dial(ctx, addr)
	if err != nil {
		t.Fatalf("transport.Dial %s: %v", addr, err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "through the dialer"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("through the dialer"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "through the dialer" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	checkClean(t, g, e)
}
