package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// Offsets are positions in an exec's two output streams.
type Offsets struct {
	Stdout, Stderr uint64
}

// CopyOutput copies an exec's output from off to the writers. With follow it
// returns the final status once the exec has finished and all output has
// been copied; without, it returns (nil, ...) at the current end. A broken
// connection is redialed and the stream resumed at the offsets already
// written: no byte is lost or written twice. The returned offsets say how far
// it got, also on error.
func (c *Client) CopyOutput(ctx context.Context, id string, off Offsets, follow bool, stdout, stderr io.Writer) (*agentv1.ExecStatus, Offsets, error) {
	return c.copyOutput(ctx, id, nil, off, follow, stdout, stderr)
}

// copyOutput is CopyOutput that, with start, starts the exec in the same
// request (Output's start field: one round trip). Each attempt also carries
// the releases queued by Run.
func (c *Client) copyOutput(ctx context.Context, id string, start *agentv1.StartRequest, off Offsets, follow bool, stdout, stderr io.Writer) (*agentv1.ExecStatus, Offsets, error) {
	final, err := c.copyOutputData(ctx, &agentv1.OutputRequest{Id: id, Follow: follow, Start: start}, &off, stdout, stderr)
	if !errors.Is(err, errNoData) {
		return final, off, err
	}
	final = nil
	err = c.call(ctx, func(cn *conn) error {
		release := c.takeReleases()
		stream, err := cn.exec.Output(ctx, &agentv1.OutputRequest{
			Id: id, StdoutOffset: off.Stdout, StderrOffset: off.Stderr, Follow: follow,
			Start: start, Release: release,
		})
		if err != nil {
			c.queueRelease(release...) // not delivered for sure: keep them
			return err
		}
		for {
			chunk, err := stream.Recv()
			if err == io.EOF {
				if follow {
					// A follow stream ends with its final status; EOF before it is a cut link.
					return io.ErrUnexpectedEOF
				}
				return nil
			}
			if err != nil {
				return err
			}
			if chunk.Final != nil {
				final = chunk.Final
				return nil
			}
			w, pos := stdout, &off.Stdout
			if chunk.Stream == agentv1.Stream_STREAM_STDERR {
				w, pos = stderr, &off.Stderr
			}
			if chunk.Offset != *pos {
				return fmt.Errorf("exec %s: output chunk at offset %d, expected %d", id, chunk.Offset, *pos)
			}
			if _, err := w.Write(chunk.Data); err != nil {
				return &localWriteError{err}
			}
			*pos += uint64(len(chunk.Data))
		}
	})
	return final, off, err
}

// localWriteError is a failure to write output locally (a closed pipe): not
// a connection error, so never retried.
type localWriteError struct{ err error }

func (e *localWriteError) Error() string { return "write output: " + e.err.Error() }
func (e *localWriteError) Unwrap() error { return e.err }
