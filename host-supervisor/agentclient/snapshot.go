package agentclient

import (
	"context"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// The Snapshot service through the reconnecting connection: every snapshot
// resets the vsock links, so a thaw or resume right after one redials.
// All four calls are safe to resend: a second freeze only re-arms the
// watchdog, thaw is harmless when thawed, and the same resume generation
// again is harmless.

var _ agentv1.SnapshotService = (*Client)(nil)

// Freeze quiesces the guest's filesystems.
func (c *Client) Freeze(ctx context.Context, req *agentv1.FreezeRequest) (resp *agentv1.FreezeResponse, err error) {
	err = c.call(ctx, func(cn *conn) error {
		resp, err = agentv1.NewSnapshotClient(cn.tc).Freeze(ctx, req)
		return err
	})
	return resp, err
}

// Thaw undoes Freeze.
func (c *Client) Thaw(ctx context.Context, req *agentv1.ThawRequest) (resp *agentv1.ThawResponse, err error) {
	err = c.call(ctx, func(cn *conn) error {
		resp, err = agentv1.NewSnapshotClient(cn.tc).Thaw(ctx, req)
		return err
	})
	return resp, err
}

// FreezeStatus reports whether the guest is frozen.
func (c *Client) FreezeStatus(ctx context.Context, req *agentv1.FreezeStatusRequest) (resp *agentv1.FreezeStatusResponse, err error) {
	err = c.call(ctx, func(cn *conn) error {
		resp, err = agentv1.NewSnapshotClient(cn.tc).FreezeStatus(ctx, req)
		return err
	})
	return resp, err
}

// Resume brings a restored, forked or long-paused guest up to date.
func (c *Client) Resume(ctx context.Context, req *agentv1.ResumeRequest) (resp *agentv1.ResumeResponse, err error) {
	err = c.call(ctx, func(cn *conn) error {
		resp, err = agentv1.NewSnapshotClient(cn.tc).Resume(ctx, req)
		return err
	})
	return resp, err
}

// Disconnect drops the current connection (if any); the next call redials.
// After a VM restore the old links lead nowhere: dropping them at once beats
// waiting for a call to fail on them.
func (c *Client) Disconnect() {
	c.mu.Lock()
	cn := c.conn
	c.mu.Unlock()
	if cn != nil {
		c.drop(cn)
	}
}
