package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

func init() {
	register(&command{
		name:    "write",
		usage:   "--agent ADDR [--mode 0644] [--uid N] [--gid N] [--no-parents] PATH   (content on stdin)",
		summary: "write stdin to a file in the sandbox, atomically",
		run:     runWrite,
	})
	register(&command{
		name:    "read",
		usage:   "--agent ADDR [--offset N] [--limit N] PATH   (content on stdout)",
		summary: "copy a regular file from the sandbox to stdout",
		run:     runRead,
	})
	register(&command{name: "stat", usage: "--agent ADDR PATH", summary: "describe a path in the sandbox", run: runStat})
}

// progressMin is the transfer size from which a progress line is shown
// (only when stderr is a terminal).
const progressMin = 32 << 20

func onePath(stdio Stdio, fs *flag.FlagSet, args []string) (string, int) {
	pos, err := parseFlags(fs, args)
	if err != nil {
		return "", fail(stdio, err)
	}
	if len(pos) != 1 {
		return "", fail(stdio, invalid("%s: want exactly one PATH, got %d arguments", fs.Name(), len(pos)))
	}
	return pos[0], 0
}

// optUint32 is a flag that may be unset.
type optUint32 struct {
	v    *uint32
	base int
}

func (o *optUint32) String() string {
	if o.v == nil {
		return ""
	}
	return strconv.FormatUint(uint64(*o.v), o.base)
}

func (o *optUint32) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimPrefix(s, "0o"), o.base, 32)
	if err != nil {
		return fmt.Errorf("bad value %q", s)
	}
	v := uint32(n)
	o.v = &v
	return nil
}

func runWrite(ctx context.Context, stdio Stdio, args []string) int {
	var t target
	fs := flag.NewFlagSet("write", flag.ContinueOnError)
	t.register(fs)
	mode, uid, gid := optUint32{base: 8}, optUint32{base: 10}, optUint32{base: 10}
	fs.Var(&mode, "mode", "file mode in octal, setuid/setgid/sticky included (default 0644)")
	fs.Var(&uid, "uid", "owner uid (default: the agent's)")
	fs.Var(&gid, "gid", "owner gid (default: the agent's)")
	noParents := fs.Bool("no-parents", false, "fail instead of creating missing parent directories")
	path, code := onePath(stdio, fs, args)
	if code != 0 {
		return code
	}
	if mode.v != nil && *mode.v&^0o7777 != 0 {
		return fail(stdio, invalid("write: --mode %o: want at most 07777", *mode.v))
	}
	cl, err := t.agentClient()
	if err != nil {
		return fail(stdio, err)
	}
	defer cl.Close()
	var total int64 = -1
	if f, ok := stdio.In.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			total = fi.Size()
		}
	}
	p := startProgress(stdio, "write "+path, total)
	in := &countingReader{r: stdio.In, n: &p.n}
	_, err = cl.WriteFile(ctx, path, in, agentclient.WriteOptions{Mode: mode.v, UID: uid.v, GID: gid.v, NoParents: *noParents})
	p.stop()
	if err != nil {
		return fail(stdio, err)
	}
	return 0
}

func runRead(ctx context.Context, stdio Stdio, args []string) int {
	var t target
	fs := flag.NewFlagSet("read", flag.ContinueOnError)
	t.register(fs)
	offset := fs.Uint64("offset", 0, "start at this byte")
	limit := fs.Uint64("limit", 0, "copy at most this many bytes (0: to the end)")
	path, code := onePath(stdio, fs, args)
	if code != 0 {
		return code
	}
	cl, err := t.agentClient()
	if err != nil {
		return fail(stdio, err)
	}
	defer cl.Close()
	p := startProgress(stdio, "read "+path, -1)
	out := &countingWriter{w: stdio.Out, n: &p.n}
	_, _, err = cl.ReadFile(ctx, path, out, agentclient.ReadOptions{
		Offset: *offset, Limit: *limit,
		OnInfo: func(info *agentv1.FileInfo) {
			size := int64(info.Size) - int64(*offset)
			if *limit > 0 {
				size = min(size, int64(*limit))
			}
			p.setTotal(max(size, 0))
		},
	})
	p.stop()
	if err != nil {
		return fail(stdio, err)
	}
	return 0
}

func runStat(ctx context.Context, stdio Stdio, args []string) int {
	var t target
	fs := flag.NewFlagSet("stat", flag.ContinueOnError)
	t.register(fs)
	path, code := onePath(stdio, fs, args)
	if code != 0 {
		return code
	}
	cl, err := t.agentClient()
	if err != nil {
		return fail(stdio, err)
	}
	defer cl.Close()
	info, err := cl.StatFile(ctx, path)
	if err != nil {
		return fail(stdio, err)
	}
	PrintFileInfo(stdio.Out, info)
	return 0
}

// PrintFileInfo prints a FileInfo as "key: value" lines.
func PrintFileInfo(w io.Writer, info *agentv1.FileInfo) {
	fmt.Fprintf(w, "path: %s\n", info.Path)
	fmt.Fprintf(w, "type: %s\n", FileTypeName(info.Type))
	fmt.Fprintf(w, "size: %d\n", info.Size)
	fmt.Fprintf(w, "mode: %04o\n", info.Mode)
	fmt.Fprintf(w, "uid: %d\n", info.Uid)
	fmt.Fprintf(w, "gid: %d\n", info.Gid)
	fmt.Fprintf(w, "mtime: %s\n", time.Unix(0, info.MtimeUnixNano).UTC().Format(time.RFC3339Nano))
	if info.Type == agentv1.FileType_FILE_TYPE_SYMLINK {
		fmt.Fprintf(w, "symlink_target: %s\n", info.SymlinkTarget)
	}
}

// FileTypeName is the lower-case type name: regular, directory, symlink, ...
func FileTypeName(t agentv1.FileType) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(t.String(), "FILE_TYPE_")), "_", "-")
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// progress shows a transfer's progress on stderr, only when stderr is a
// terminal and once the transfer is (or is known to become) large.
type progress struct {
	n     atomic.Int64
	total atomic.Int64
	stopc chan struct{}
	wg    sync.WaitGroup
}

func startProgress(stdio Stdio, what string, total int64) *progress {
	p := &progress{stopc: make(chan struct{})}
	p.total.Store(total)
	if !isTerminal(stdio.Err) {
		return p
	}
	began := time.Now()
	shown := false
	show := func(final bool) {
		n, total := p.n.Load(), p.total.Load()
		if !shown && n < progressMin && total < progressMin {
			return
		}
		if !shown && final && n < progressMin {
			return // a large transfer that failed early: nothing worth a line
		}
		shown = true
		rate := float64(n) / time.Since(began).Seconds() / 1e6
		line := fmt.Sprintf("%s: %.1f MiB", what, float64(n)/(1<<20))
		if total > 0 {
			line += fmt.Sprintf(" of %.1f MiB (%d%%)", float64(total)/(1<<20), n*100/total)
		}
		fmt.Fprintf(stdio.Err, "\r%s, %.1f MB/s\x1b[K", line, rate)
		if final {
			fmt.Fprintln(stdio.Err)
		}
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				show(false)
			case <-p.stopc:
				show(true) // prints only for a large transfer
				return
			}
		}
	}()
	return p
}

func (p *progress) setTotal(n int64) { p.total.Store(n) }

func (p *progress) stop() {
	close(p.stopc)
	p.wg.Wait()
}
