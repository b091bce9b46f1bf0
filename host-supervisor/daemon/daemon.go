package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/execstore"
	"github.com/sailbox/sailbox/host-supervisor/lifecycle"
	"github.com/sailbox/sailbox/host-supervisor/sandbox"
)

// Config configures a Daemon.
type Config struct {
	// StateDir holds the journal (journal.db) and output files (out/).
	StateDir string
	// OutputCap is the per-stream cap on stored output (default 64 MiB);
	// output past it is counted and the stream marked truncated.
	OutputCap uint64
	// Retention deletes finished records (and output) older than this
	// (default 7 days; negative: never by age).
	Retention time.Duration
	// RetentionCount keeps at most this many finished records (default 100000; negative: no limit).
	RetentionCount int
	// FlushBytes and FlushInterval say how often output offsets are journalled
	// while an exec runs (defaults 1 MiB, 200ms).
	FlushBytes    uint64
	FlushInterval time.Duration
	// BatchDelay > 0: journal commits wait this long to share an fsync (bbolt Batch); 0: group commit without waiting.
	BatchDelay time.Duration
	// StartTimeout bounds the synchronous part of StartExec (default 30s).
	StartTimeout time.Duration
	Sandbox      sandbox.Config
	// DialVMM connects to a sandbox's VM monitor (AddSandbox with a qmp
	// socket); default QEMU over QMP. Tests put a fake VMM here.
	DialVMM DialVMM
	Logger  *slog.Logger
}

func (c *Config) defaults() {
	if c.OutputCap == 0 {
		c.OutputCap = 64 << 20
	}
	if c.Retention == 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.RetentionCount == 0 {
		c.RetentionCount = 100000
	}
	if c.FlushBytes == 0 {
		c.FlushBytes = 1 << 20
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 200 * time.Millisecond
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 30 * time.Second
	}
	if c.DialVMM == nil {
		c.DialVMM = dialQEMU
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Sandbox.Logger == nil {
		c.Sandbox.Logger = c.Logger
	}
}

// Daemon is the supervisor.
type Daemon struct {
	cfg    Config
	log    *slog.Logger
	store  *execstore.Store
	reg    *sandbox.Registry
	outDir string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	live map[string]*liveExec

	kick chan struct{} // asks the flusher to run now

	// The lifecycles of the sandboxes with a VMM, and their monitors.
	lc    *lifecycle.Manager
	vmmMu sync.Mutex
	vmms  map[string]attachedVMM
}

// Open opens the state dir, recovers the journal and re-attaches every
// unfinished exec (see the package comment).
func Open(cfg Config) (*Daemon, error) {
	cfg.defaults()
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("daemon: no state dir")
	}
	outDir := filepath.Join(cfg.StateDir, "out")
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", cfg.StateDir, err)
	}
	store, err := execstore.Open(filepath.Join(cfg.StateDir, "journal.db"), execstore.Options{BatchDelay: cfg.BatchDelay})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	reg, err := sandbox.NewRegistry(ctx, store, cfg.Sandbox)
	if err != nil {
		cancel()
		store.Close()
		return nil, err
	}
	d := &Daemon{
		cfg: cfg, log: cfg.Logger, store: store, reg: reg, outDir: outDir,
		ctx: ctx, cancel: cancel, live: map[string]*liveExec{}, kick: make(chan struct{}, 1),
		lc: lifecycle.NewManager(), vmms: map[string]attachedVMM{},
	}
	if err := d.recover(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.loadVMMs(); err != nil {
		d.Close()
		return nil, err
	}
	d.wg.Add(2)
	go d.flusher()
	go d.retention()
	return d, nil
}

// Close stops the daemon: copying stops where it is (the journal says
// where), nothing is marked lost; the next Open re-attaches.
func (d *Daemon) Close() error {
	d.detachAll()
	d.cancel()
	d.wg.Wait()
	d.reg.Close()
	return d.store.Close()
}

// recover re-attaches every unfinished record: running ones resume copying
// at the journalled offsets; accepted ones are resolved by asking the agent
// (never re-sent).
func (d *Daemon) recover() error {
	recs, err := d.store.NonFinal()
	if err != nil {
		return err
	}
	for _, r := range recs {
		sb, err := d.reg.Get(r.Sandbox)
		if err != nil {
			if _, err := d.store.Update(r.Id, func(r *execstore.Record) error {
				return execstore.Lose(r, "sandbox "+r.Sandbox+" is no longer registered")
			}); err != nil {
				return err
			}
			continue
		}
		l, err := d.newLive(sb, r, false)
		if err != nil {
			return err
		}
		d.log.Info("re-attaching exec", "exec", r.Id, "sandbox", r.Sandbox, "state", execstore.StateName(r.State),
			"stdout_offset", r.StdoutOffset, "stderr_offset", r.StderrOffset)
		d.spawn(func() { d.follow(l, reasonCrashedBeforeAck) })
	}
	return nil
}

const (
	reasonCrashedBeforeAck = "not started: supervisor crashed before the agent acknowledged"
	reasonLinkBeforeAck    = "not started: the agent restarted before it acknowledged"
	reasonUnknownToAgent   = "unknown to the agent: it restarted or the sandbox was restored"
)

func (d *Daemon) spawn(f func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
}

// retention deletes old finished records and their output, now and then.
func (d *Daemon) retention() {
	defer d.wg.Done()
	every := time.Minute
	if d.cfg.Retention > 0 && d.cfg.Retention/4 < every {
		every = max(d.cfg.Retention/4, 50*time.Millisecond)
	}
	for {
		d.expire()
		select {
		case <-d.ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

func (d *Daemon) expire() {
	var cutoff time.Time
	if d.cfg.Retention > 0 {
		cutoff = time.Now().Add(-d.cfg.Retention)
	}
	ids, err := d.store.Expire(cutoff, d.cfg.RetentionCount)
	if err != nil {
		d.log.Error("retention", "err", err)
		return
	}
	for _, id := range ids {
		d.removeOutput(id)
	}
	if len(ids) > 0 {
		d.log.Info("retention: deleted finished execs", "count", len(ids))
	}
}

func (d *Daemon) outPath(id, stream string) string {
	return filepath.Join(d.outDir, id+"."+stream)
}

func (d *Daemon) removeOutput(id string) {
	os.Remove(d.outPath(id, "stdout"))
	os.Remove(d.outPath(id, "stderr"))
}
