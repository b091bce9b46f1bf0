package rootfs

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sailbox/sailbox/internal/errstatus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const imageUsage = `usage:
  host-supervisor image build [--cache-dir DIR] [--timeout DUR] [--bin-dir DIR] [--json] FILE
  host-supervisor image ls    [--cache-dir DIR] [--json]
  host-supervisor image rm    [--cache-dir DIR] ID|DIGEST...

build prints the path of the ext4 image on stdout (--json: the manifest with
path and kernel); progress goes to stderr, the full log beside the image.
`

// RunImageCommand is `host-supervisor image ...`: args are the words after
// "image" (build FILE | ls | rm REF...), with their flags. It returns the
// exit status: 0, 125 for an error (printed on stderr as "error: CODE:
// message" with a gRPC code name), 2 when called with no words at all.
func RunImageCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintln(stderr, errstatus.Line(err))
		return 125
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, imageUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	fs := flag.NewFlagSet("image "+args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // printed for -h below; errors are one line
	cacheDir := fs.String("cache-dir", "", "cache root (default ${SAILBOX_CACHE:-$HOME/.cache/sailbox})")
	asJSON := fs.Bool("json", false, "machine-readable output")
	var timeout *time.Duration
	var binDir *string
	if args[0] == "build" {
		timeout = fs.Duration("timeout", DefaultTimeout, "build timeout (image_build_timeout)")
		binDir = fs.String("bin-dir", "", "static guest binaries (default: bin/linux-arm64 beside host-supervisor)")
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, imageUsage)
			return 0
		}
		return fail(status.Errorf(codes.InvalidArgument, "image %s: %v", args[0], err))
	}
	cache := OpenCache(*cacheDir)
	switch args[0] {
	case "build":
		if fs.NArg() != 1 {
			return fail(status.Error(codes.InvalidArgument, "image build: want exactly one definition FILE"))
		}
		im, err := LoadFile(fs.Arg(0))
		if err != nil {
			return fail(err)
		}
		b := &Builder{CacheRoot: *cacheDir, BinDir: *binDir, Timeout: *timeout, Progress: stderr}
		res, err := b.Build(ctx, im)
		if err != nil {
			return fail(err)
		}
		if *asJSON {
			return writeJSON(stdout, map[string]any{"manifest": res.Manifest, "path": res.Path, "kernel": res.KernelImage,
				"log": res.Log, "cached": res.Cached, "seconds": res.Elapsed.Seconds()}, fail)
		}
		fmt.Fprintln(stdout, res.Path)
		return 0
	case "ls":
		if fs.NArg() != 0 {
			return fail(status.Error(codes.InvalidArgument, "image ls: takes no arguments"))
		}
		list, err := cache.List()
		if err != nil {
			return fail(status.Errorf(codes.Internal, "image cache %s: %v", cache.Dir, err))
		}
		if *asJSON {
			if list == nil {
				list = []Entry{}
			}
			return writeJSON(stdout, list, fail)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tDIGEST\tBASE\tSTEPS\tSIZE\tBUILT\tPATH")
		for _, e := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MiB\t%s\t%s\n", short(e.ID), short(e.Digest), e.Base, len(e.Steps),
				e.Size>>20, e.BuiltAt.Local().Format("2006-01-02 15:04"), e.Path)
		}
		tw.Flush()
		return 0
	case "rm":
		if fs.NArg() == 0 {
			return fail(status.Error(codes.InvalidArgument, "image rm: want at least one ID or DIGEST"))
		}
		for _, ref := range fs.Args() {
			removed, err := cache.Remove(ref)
			if err != nil {
				return fail(err)
			}
			fmt.Fprintf(stdout, "removed %s\n", strings.Join(removed, " "))
		}
		return 0
	}
	return fail(status.Errorf(codes.InvalidArgument, "image %s: unknown command (build, ls, rm)", args[0]))
}

func writeJSON(w io.Writer, v any, fail func(error) int) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fail(status.Errorf(codes.Internal, "write: %v", err))
	}
	return 0
}
