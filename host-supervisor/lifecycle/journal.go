package lifecycle

import (
	"sync"

	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MemJournal keeps generations in memory: for the command line without the
// daemon, where nothing else records them (the caller prints them).
type MemJournal struct {
	mu  sync.Mutex
	gen map[string]uint64
}

// NewMemJournal starts sandbox at generation gen.
func NewMemJournal(sandbox string, gen uint64) *MemJournal {
	return &MemJournal{gen: map[string]uint64{sandbox: gen}}
}

func (j *MemJournal) Generation(sandbox string) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.gen[sandbox], nil
}

func (j *MemJournal) BumpGeneration(sandbox string) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.gen[sandbox]++
	return j.gen[sandbox], nil
}

// RestoreGeneration sets the generation; there are no exec records to lose.
func (j *MemJournal) RestoreGeneration(sandbox string, gen uint64) ([]string, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.gen[sandbox] = gen
	return nil, nil
}

// Generations is the daemon's generation API (daemon.Daemon's plain-Go
// methods).
type Generations interface {
	ListSandboxes() []*supervisorv1.Sandbox
	Checkpointed(id string, gen uint64) (*supervisorv1.Sandbox, error)
	RestoreGeneration(id string, gen uint64) (*supervisorv1.RestoreGenerationResponse, error)
}

// DaemonJournal is the Journal of the durable daemon: generations live in
// its registry, and RestoreGeneration marks its journalled execs lost.
type DaemonJournal struct{ D Generations }

func (j DaemonJournal) Generation(sandbox string) (uint64, error) {
	for _, sb := range j.D.ListSandboxes() {
		if sb.Id == sandbox {
			return sb.Generation, nil
		}
	}
	return 0, status.Errorf(codes.NotFound, "sandbox %s: not registered", sandbox)
}

// BumpGeneration records checkpoint current+1. Lifecycle operations of one
// sandbox are serialized, so nobody bumps in between.
func (j DaemonJournal) BumpGeneration(sandbox string) (uint64, error) {
	cur, err := j.Generation(sandbox)
	if err != nil {
		return 0, err
	}
	sb, err := j.D.Checkpointed(sandbox, cur+1)
	if err != nil {
		return 0, err
	}
	return sb.Generation, nil
}

func (j DaemonJournal) RestoreGeneration(sandbox string, gen uint64) ([]string, error) {
	resp, err := j.D.RestoreGeneration(sandbox, gen)
	if err != nil {
		return nil, err
	}
	return resp.Lost, nil
}
