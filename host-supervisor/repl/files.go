package repl

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func filesCommands() []*command {
	return []*command{
		{name: "write", usage: "PATH --from LOCAL [--mode 0644] [--no-parents]",
			summary: "copy a local file to an absolute path in the sandbox (atomically; missing parents are created)",
			example: "write /srv/app.py --from ./app.py --mode 0755", args: argRemotePath,
			flags: []string{"--from", "--mode", "--no-parents"}, run: cmdWrite},
		{name: "read", usage: "PATH [--to LOCAL]", summary: "print a regular file of the sandbox, or copy it to a local file",
			example: "read /etc/os-release   |   read /var/log/app.log --to app.log", args: argRemotePath,
			flags: []string{"--to"}, run: cmdRead},
		{name: "stat", usage: "PATH", summary: "describe a path in the sandbox (a final symlink is not followed)",
			example: "stat /etc/hostname", args: argRemotePath, run: cmdStat},
	}
}

func cmdWrite(ctx context.Context, s *session, c *call) error {
	fs := flag.NewFlagSet("write", flag.ContinueOnError)
	from := fs.String("from", "", "")
	modeFlag := fs.String("mode", "", "")
	noParents := fs.Bool("no-parents", false, "")
	pos, err := parseArgs(fs, c.args())
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("write", "want one remote PATH")
	}
	if *from == "" {
		return usageErr("write", "give the content with --from LOCAL_FILE")
	}
	var o agentclient.WriteOptions
	o.NoParents = *noParents
	if *modeFlag != "" {
		m, err := strconv.ParseUint(*modeFlag, 8, 32)
		if err != nil || m > 0o7777 {
			return usageErr("write", "--mode %q: want octal permission bits such as 0644", *modeFlag)
		}
		mode := uint32(m)
		o.Mode = &mode
	}
	f, err := os.Open(*from)
	if err != nil {
		return status.Errorf(codes.NotFound, "write: local file: %v", err)
	}
	defer f.Close()
	start := time.Now()
	info, err := s.b.WriteFile(ctx, pos[0], f, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.out, "wrote %s: %d bytes, mode %04o, in %v\n", info.Path, info.Size, info.Mode, time.Since(start).Round(time.Millisecond))
	return nil
}

func cmdRead(ctx context.Context, s *session, c *call) error {
	fs := flag.NewFlagSet("read", flag.ContinueOnError)
	to := fs.String("to", "", "")
	pos, err := parseArgs(fs, c.args())
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("read", "want one remote PATH")
	}
	if *to == "" {
		_, _, err := s.b.ReadFile(ctx, pos[0], s.out, agentclient.ReadOptions{})
		return err
	}
	// A temp file next to the target, renamed into place once complete: an
	// interrupted read never leaves half a file under the name.
	tmp, err := os.CreateTemp(filepath.Dir(*to), "."+filepath.Base(*to)+".part-")
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "read: local file: %v", err)
	}
	defer os.Remove(tmp.Name())
	info, n, err := s.b.ReadFile(ctx, pos[0], tmp, agentclient.ReadOptions{})
	if cerr := tmp.Close(); err == nil && cerr != nil {
		err = status.Errorf(codes.Internal, "read: local file %s: %v", *to, cerr)
	}
	if err != nil {
		return err
	}
	os.Chmod(tmp.Name(), os.FileMode(info.Mode&0o777))
	if err := os.Rename(tmp.Name(), *to); err != nil {
		return status.Errorf(codes.Internal, "read: local file: %v", err)
	}
	fmt.Fprintf(s.out, "read %s: %d bytes to %s\n", info.Path, n, *to)
	return nil
}

func cmdStat(ctx context.Context, s *session, c *call) error {
	pos, err := parseArgs(flag.NewFlagSet("stat", flag.ContinueOnError), c.args())
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("stat", "want one remote PATH")
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	info, err := s.b.StatFile(ctx, pos[0])
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "path\t%s\n", info.Path)
	kind := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(info.Type.String(), "FILE_TYPE_"), "_", " "))
	if info.Type == agentv1.FileType_FILE_TYPE_SYMLINK {
		kind += " -> " + info.SymlinkTarget
	}
	fmt.Fprintf(tw, "type\t%s\n", kind)
	fmt.Fprintf(tw, "size\t%d\n", info.Size)
	fmt.Fprintf(tw, "mode\t%04o\n", info.Mode)
	fmt.Fprintf(tw, "owner\t%d:%d\n", info.Uid, info.Gid)
	fmt.Fprintf(tw, "modified\t%s\n", time.Unix(0, info.MtimeUnixNano).UTC().Format(time.RFC3339Nano))
	return tw.Flush()
}
