package agentclient

import (
	"context"
	"io"
	"time"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/ids"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// maxQueuedReleases bounds the releases waiting for a request to ride on;
// past it Run releases with a call of its own.
const maxQueuedReleases = 256

// Run runs a foreground exec: it starts req and copies its output to stdout
// and stderr until the exec has finished, then returns the final status. It
// costs one round trip: the start rides in the Output request. A dropped
// link is redialed and the same request resent with the offsets reached
// (Start is idempotent on the id, so the command never runs twice).
//
// Without an id in req, Run picks one, and since nobody else can name that
// exec, it releases it afterwards: the release rides on the client's next
// Run, or is sent by Close.
func (c *Client) Run(ctx context.Context, req *agentv1.StartRequest, stdout, stderr io.Writer) (*agentv1.ExecStatus, error) {
	release := req.Id == ""
	if release {
		req = proto.Clone(req).(*agentv1.StartRequest)
		req.Id = ids.NewExecID()
	}
	final, _, err := c.copyOutput(ctx, req.Id, req, Offsets{}, true, stdout, stderr)
	if err == nil && release {
		c.queueRelease(req.Id)
		if c.queuedReleases() > maxQueuedReleases {
			err = c.flushReleases(ctx)
		}
	}
	return final, err
}

func (c *Client) queueRelease(ids ...string) {
	if len(ids) == 0 {
		return
	}
	c.relMu.Lock()
	c.releases = append(c.releases, ids...)
	c.relMu.Unlock()
}

func (c *Client) takeReleases() []string {
	c.relMu.Lock()
	defer c.relMu.Unlock()
	ids := c.releases
	c.releases = nil
	return ids
}

func (c *Client) queuedReleases() int {
	c.relMu.Lock()
	defer c.relMu.Unlock()
	return len(c.releases)
}

// flushReleases releases the queued execs with calls of their own.
func (c *Client) flushReleases(ctx context.Context) error {
	var first error
	for _, id := range c.takeReleases() {
		if err := c.Release(ctx, id); err != nil && first == nil && !isNotFound(err) {
			first = err
		}
	}
	return first
}

// closeReleaseTimeout bounds the releases Close sends.
const closeReleaseTimeout = 2 * time.Second

func isNotFound(err error) bool {
	s, ok := status.FromError(err)
	return ok && s.Code() == codes.NotFound
}
