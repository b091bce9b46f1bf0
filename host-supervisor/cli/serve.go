package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/daemon"
)

func init() {
	register(&command{
		name:    "serve",
		usage:   "--state-dir DIR --api unix:///path [--output-cap BYTES] [--retention DUR] [--retention-count N] [--log-level LEVEL]",
		summary: "run the durable supervisor daemon with its control API",
		run:     runServe,
	})
}

func runServe(ctx context.Context, stdio Stdio, args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	stateDir := fs.String("state-dir", "", "directory for the exec journal and stored output (keep it across restarts)")
	api := fs.String("api", "", "control API socket, unix:///path (created mode 0600)")
	outputCap := fs.Uint64("output-cap", 64<<20, "per-exec, per-stream cap on stored output in bytes (past it output is counted and marked truncated)")
	retention := fs.Duration("retention", 7*24*time.Hour, "delete finished exec records this long after they ended (negative: never)")
	retentionCount := fs.Int("retention-count", 100000, "keep at most this many finished exec records (negative: no limit)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return fail(stdio, err)
	}
	if len(pos) > 0 {
		return fail(stdio, invalid("serve: unexpected arguments %q", pos))
	}
	if *stateDir == "" || *api == "" {
		return fail(stdio, invalid("serve: give --state-dir DIR and --api unix:///path"))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fail(stdio, invalid("--log-level: %v", err))
	}
	log := slog.New(slog.NewTextHandler(stdio.Err, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	l, err := daemon.Listen(*api)
	if err != nil {
		return fail(stdio, invalid("%v", err))
	}
	d, err := daemon.Open(daemon.Config{
		StateDir: *stateDir, OutputCap: *outputCap, Retention: *retention, RetentionCount: *retentionCount, Logger: log,
	})
	if err != nil {
		l.Close()
		return fail(stdio, err)
	}
	log.Info("supervisor serving", "api", *api, "state_dir", *stateDir, "pid", syscall.Getpid())
	err = d.Serve(ctx, l)
	d.Close()
	if err != nil && ctx.Err() == nil {
		return fail(stdio, fmt.Errorf("serve %s: %w", *api, err))
	}
	log.Info("supervisor stopped")
	return 0
}
