package agentclient

import (
	"context"
	"errors"
	"io"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Offsets are positions in an exec's two output streams.
type Offsets struct {
	Stdout, Stderr uint64
}

// Deliver writes one output chunk of exec id to the writer of its stream and
// advances that stream's offset. A chunk that does not start where the last
// one ended is an error (a gap or a duplicate), as is a failed local write
// (a *LocalWriteError, which no caller retries).
func (o *Offsets) Deliver(id string, stream agentv1.Stream, at uint64, data []byte, stdout, stderr io.Writer) error {
	w, pos := stdout, &o.Stdout
	if stream == agentv1.Stream_STREAM_STDERR {
		w, pos = stderr, &o.Stderr
	}
	if at != *pos {
		return status.Errorf(codes.Internal, "exec %s: output chunk at offset %d, expected %d", id, at, *pos)
	}
	if _, err := w.Write(data); err != nil {
		return &LocalWriteError{err}
	}
	*pos += uint64(len(data))
	return nil
}

// OutputChunk is what an output stream carries, from the agent
// (agentv1.OutputChunk) or from the supervisor (its ExecOutputChunk).
type OutputChunk interface {
	GetStream() agentv1.Stream
	GetOffset() uint64
	GetData() []byte
}

// DrainOutput receives an exec's output stream until its end and delivers
// each chunk at off. isFinal recognises the chunk that carries the final
// status (it ends the stream and is returned). A follow stream that ends
// without one was cut: io.ErrUnexpectedEOF, for the caller to resume at off.
func DrainOutput[C OutputChunk](id string, recv func() (C, error), isFinal func(C) bool, follow bool, off *Offsets, stdout, stderr io.Writer) (final C, err error) {
	for {
		chunk, err := recv()
		if err == io.EOF {
			if follow {
				return final, io.ErrUnexpectedEOF
			}
			return final, nil
		}
		if err != nil {
			return final, err
		}
		if isFinal(chunk) {
			return chunk, nil
		}
		if err := off.Deliver(id, chunk.GetStream(), chunk.GetOffset(), chunk.GetData(), stdout, stderr); err != nil {
			return final, err
		}
	}
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
		last, err := DrainOutput(id, stream.Recv, func(c *agentv1.OutputChunk) bool { return c.Final != nil }, follow, &off, stdout, stderr)
		final = last.GetFinal()
		return err
	})
	return final, off, err
}

// LocalWriteError is a failure to write output locally (a closed pipe): not
// a connection error, so never retried.
type LocalWriteError struct{ Err error }

func (e *LocalWriteError) Error() string { return "write output: " + e.Err.Error() }
func (e *LocalWriteError) Unwrap() error { return e.Err }
