package execstore

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"sync"
	"time"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

var (
	bucketExecs     = []byte("execs")     // exec id → Record
	bucketKeys      = []byte("keys")      // sandbox \x00 idempotency key → exec id
	bucketOrder     = []byte("order")     // seq (big endian) → exec id
	bucketSandboxes = []byte("sandboxes") // sandbox id → Sandbox (journalled fields)
	bucketInline    = []byte("inline")    // exec id \x00 stream → small output kept in the journal
)

// Store is the journal. Safe for concurrent use.
type Store struct {
	db    *bolt.DB
	path  string
	delay time.Duration

	queue   chan *groupCall // group commit (when delay is 0)
	closing chan struct{}
	stopped chan struct{}
	closeMu sync.Once
}

// Options tune Open.
type Options struct {
	// BatchDelay > 0 makes commits wait that long for others to share
	// their fsync (bbolt's Batch). 0 (the default) is group commit without
	// waiting: commits queued while one is being written share the next
	// one, so concurrency amortises the fsync and a lone commit pays no delay.
	BatchDelay time.Duration
}

// groupCall is one queued commit.
type groupCall struct {
	fn  func(*bolt.Tx) error
	err chan error
}

// maxGroup bounds the functions applied in one transaction.
const maxGroup = 1000

// batch runs fn in a durable commit shared with concurrent ones. fn may run
// more than once (when another function of its group fails) and must only
// depend on the transaction.
func (s *Store) batch(fn func(*bolt.Tx) error) error {
	if s.delay > 0 {
		return s.db.Batch(fn)
	}
	c := &groupCall{fn: fn, err: make(chan error, 1)}
	select {
	case s.queue <- c:
	case <-s.closing:
		return bolt.ErrDatabaseNotOpen
	}
	return <-c.err
}

// committer applies queued functions: everything queued while a commit is
// being written goes into the next one.
func (s *Store) committer() {
	defer close(s.stopped)
	for {
		var first *groupCall
		select {
		case first = <-s.queue:
		case <-s.closing:
			// Answer what is still queued, then stop.
			for {
				select {
				case c := <-s.queue:
					c.err <- bolt.ErrDatabaseNotOpen
				default:
					return
				}
			}
		}
		calls := []*groupCall{first}
	more:
		for len(calls) < maxGroup {
			select {
			case c := <-s.queue:
				calls = append(calls, c)
			default:
				break more
			}
		}
		s.commitGroup(calls)
	}
}

// commitGroup commits calls in one transaction; a failing function is
// answered with its error and the rest are committed without it.
func (s *Store) commitGroup(calls []*groupCall) {
	for len(calls) > 0 {
		failed, ferr := -1, error(nil)
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i, c := range calls {
				if err := c.fn(tx); err != nil {
					failed, ferr = i, err
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			calls[failed].err <- ferr
			calls = append(calls[:failed:failed], calls[failed+1:]...)
			continue
		}
		for _, c := range calls {
			c.err <- err
		}
		return
	}
}

// Open opens (creating if needed) the journal at path. A journal left by a
// crash, even in the middle of a commit, opens at its last committed state.
func Open(path string, o Options) (*Store, error) {
	// The freelist is rebuilt on open instead of written by every commit:
	// fewer pages per commit, and commits are what every exec waits for.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("exec journal %s: %w", path, err)
	}
	if o.BatchDelay > 0 {
		db.MaxBatchDelay = o.BatchDelay
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketExecs, bucketKeys, bucketOrder, bucketSandboxes, bucketInline} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("exec journal %s: %w", path, err)
	}
	st := &Store{
		db: db, path: path, delay: o.BatchDelay,
		queue: make(chan *groupCall, 4*maxGroup), closing: make(chan struct{}), stopped: make(chan struct{}),
	}
	go st.committer()
	return st, nil
}

// Close closes the journal (queued commits fail).
func (s *Store) Close() error {
	s.closeMu.Do(func() { close(s.closing) })
	<-s.stopped
	return s.db.Close()
}

// Path is the journal file.
func (s *Store) Path() string { return s.path }

func keyIndex(sandbox, key string) []byte { return []byte(sandbox + "\x00" + key) }

func seqKey(seq uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	return b[:]
}

// applyTx reads a record, applies f (a transition) and writes it back in tx.
func applyTx(tx *bolt.Tx, id string, f func(r *Record) error) (*Record, error) {
	cur, err := getRecord(tx, id)
	if err != nil {
		return nil, err
	}
	if err := f(cur); err != nil {
		return nil, err
	}
	if err := putRecord(tx, cur); err != nil {
		return nil, err
	}
	return cur, nil
}

func getRecord(tx *bolt.Tx, id string) (*Record, error) {
	v := tx.Bucket(bucketExecs).Get([]byte(id))
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "exec %s not found", id)
	}
	r := new(Record)
	if err := proto.Unmarshal(v, r); err != nil {
		return nil, status.Errorf(codes.DataLoss, "exec %s: journal record unreadable: %v", id, err)
	}
	return r, nil
}

func putRecord(tx *bolt.Tx, r *Record) error {
	v, err := proto.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketExecs).Put([]byte(r.Id), v)
}

// Accept journals a new exec in state accepted and returns it with its
// sequence number. When the sandbox already has a record with the same
// idempotency key it is returned instead (created=false) if the request is
// the same, and AlreadyExists otherwise. The commit is durable on return.
func (s *Store) Accept(r *Record) (rec *Record, created bool, err error) {
	if r.Id == "" || r.Sandbox == "" {
		return nil, false, status.Error(codes.InvalidArgument, "exec record without id or sandbox")
	}
	err = s.batch(func(tx *bolt.Tx) error {
		rec, created = nil, false // Batch may run this function twice
		if r.IdempotencyKey != "" {
			if id := tx.Bucket(bucketKeys).Get(keyIndex(r.Sandbox, r.IdempotencyKey)); id != nil {
				old, err := getRecord(tx, string(id))
				if err != nil {
					return err
				}
				if !sameRequest(old.Request, r.Request) {
					return status.Errorf(codes.AlreadyExists, "exec %s: idempotency key %q was used with a different request", old.Id, r.IdempotencyKey)
				}
				rec = old
				return nil
			}
		}
		if tx.Bucket(bucketExecs).Get([]byte(r.Id)) != nil {
			return status.Errorf(codes.AlreadyExists, "exec %s already exists", r.Id)
		}
		n := proto.Clone(r).(*Record)
		seq, err := tx.Bucket(bucketOrder).NextSequence()
		if err != nil {
			return err
		}
		n.Seq = seq
		n.State = Accepted
		if n.Stdout == nil {
			n.Stdout = &supervisorv1.StreamInfo{}
		}
		if n.Stderr == nil {
			n.Stderr = &supervisorv1.StreamInfo{}
		}
		if err := putRecord(tx, n); err != nil {
			return err
		}
		if err := tx.Bucket(bucketOrder).Put(seqKey(seq), []byte(n.Id)); err != nil {
			return err
		}
		if n.IdempotencyKey != "" {
			if err := tx.Bucket(bucketKeys).Put(keyIndex(n.Sandbox, n.IdempotencyKey), []byte(n.Id)); err != nil {
				return err
			}
		}
		rec, created = n, true
		return nil
	})
	return rec, created, err
}

func sameRequest(a, b *agentv1.StartRequest) bool {
	return proto.Equal(a, b)
}

// Get returns a record (NotFound when there is none).
func (s *Store) Get(id string) (r *Record, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		r, err = getRecord(tx, id)
		return err
	})
	return r, err
}

// Output is an exec's small output kept in the journal itself (so a short
// exec needs no output file and no fsync of its own): Has says which
// streams are inline; a stream not inline lives in the caller's file.
type Output struct {
	Data [2][]byte // stdout, stderr
	Has  [2]bool
}

func inlineKey(id string, stream int) []byte { return []byte(id + "\x00" + strconv.Itoa(stream)) }

// UpdateOutput is Update that also stores the inline output in the same
// commit (streams not inline have their inline copy removed: their file
// now holds everything). Inline data is stored only when its length is the
// record's kept count for the stream, so record and data always agree.
func (s *Store) UpdateOutput(id string, out Output, f func(r *Record) error) (r *Record, err error) {
	err = s.batch(func(tx *bolt.Tx) error {
		r = nil
		cur, err := applyTx(tx, id, f)
		if err != nil {
			return err
		}
		b := tx.Bucket(bucketInline)
		kept := [2]uint64{cur.GetStdout().GetKept(), cur.GetStderr().GetKept()}
		for i := range 2 {
			if out.Has[i] && uint64(len(out.Data[i])) != kept[i] {
				// Output of another moment than the record's (a commit
				// overtaken by a later one of the same exec): keep what is there.
				continue
			}
			if out.Has[i] {
				// A marker byte first: an empty stream is still inline.
				err = b.Put(inlineKey(id, i), append([]byte{1}, out.Data[i]...))
			} else {
				err = b.Delete(inlineKey(id, i))
			}
			if err != nil {
				return err
			}
		}
		r = cur
		return nil
	})
	return r, err
}

// InlineOutput returns the output stored in the journal for an exec.
func (s *Store) InlineOutput(id string) (out Output, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketInline)
		for i := range 2 {
			if v := b.Get(inlineKey(id, i)); len(v) > 0 {
				out.Data[i] = append([]byte{}, v[1:]...)
				out.Has[i] = true
			}
		}
		return nil
	})
	return out, err
}

// Update applies f to a record (use the transition functions) and commits
// it durably. An error from f aborts the change and is returned.
func (s *Store) Update(id string, f func(r *Record) error) (r *Record, err error) {
	err = s.batch(func(tx *bolt.Tx) (err error) {
		r, err = applyTx(tx, id, f)
		return err
	})
	return r, err
}

// List returns up to limit records with seq > after, in acceptance order,
// of one sandbox (or all when sandbox is ""), and the seq to pass as after
// for the next page (0 when there is none).
func (s *Store) List(sandbox string, after uint64, limit int) (out []*Record, next uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketOrder).Cursor()
		for k, id := c.Seek(seqKey(after + 1)); k != nil; k, id = c.Next() {
			r, err := getRecord(tx, string(id))
			if err != nil {
				return err
			}
			if sandbox != "" && r.Sandbox != sandbox {
				continue
			}
			if len(out) == limit {
				next = out[len(out)-1].Seq
				return nil
			}
			out = append(out, r)
		}
		return nil
	})
	return out, next, err
}

// NonFinal returns every record not in a final state, in acceptance order.
func (s *Store) NonFinal() (out []*Record, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketOrder).Cursor()
		for k, id := c.First(); k != nil; k, id = c.Next() {
			r, err := getRecord(tx, string(id))
			if err != nil {
				return err
			}
			if !IsFinal(r.State) {
				out = append(out, r)
			}
		}
		return nil
	})
	return out, err
}

func deleteRecord(tx *bolt.Tx, r *Record) error {
	if err := tx.Bucket(bucketExecs).Delete([]byte(r.Id)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketOrder).Delete(seqKey(r.Seq)); err != nil {
		return err
	}
	for i := range 2 {
		if err := tx.Bucket(bucketInline).Delete(inlineKey(r.Id, i)); err != nil {
			return err
		}
	}
	if r.IdempotencyKey != "" {
		return tx.Bucket(bucketKeys).Delete(keyIndex(r.Sandbox, r.IdempotencyKey))
	}
	return nil
}

// Delete forgets a final record. A record that is not final is FailedPrecondition.
func (s *Store) Delete(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		r, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if !IsFinal(r.State) {
			return status.Errorf(codes.FailedPrecondition, "exec %s is %s: only finished execs can be deleted", id, StateName(r.State))
		}
		return deleteRecord(tx, r)
	})
}

// Expire deletes final records that ended before cutoff, and the oldest
// final records beyond keep (keep <= 0: no count limit). It returns the
// deleted ids (their output files are the caller's). The scan runs in a
// read transaction so commits of running execs are not held up by it.
func (s *Store) Expire(cutoff time.Time, keep int) (deleted []string, err error) {
	var victims []string
	err = s.db.View(func(tx *bolt.Tx) error {
		var final []*Record
		c := tx.Bucket(bucketOrder).Cursor()
		for k, id := c.First(); k != nil; k, id = c.Next() {
			r, err := getRecord(tx, string(id))
			if err != nil {
				return err
			}
			if IsFinal(r.State) {
				final = append(final, &Record{Id: r.Id, EndedUnixNano: r.EndedUnixNano})
			}
		}
		over := 0
		if keep > 0 && len(final) > keep {
			over = len(final) - keep
		}
		for i, r := range final {
			if i < over || (!cutoff.IsZero() && r.EndedUnixNano < cutoff.UnixNano()) {
				victims = append(victims, r.Id)
			}
		}
		return nil
	})
	if err != nil || len(victims) == 0 {
		return nil, err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		deleted = deleted[:0]
		for _, id := range victims {
			r, err := getRecord(tx, id)
			if IsNotFound(err) {
				continue // deleted meanwhile
			}
			if err != nil {
				return err
			}
			if err := deleteRecord(tx, r); err != nil {
				return err
			}
			deleted = append(deleted, id)
		}
		return nil
	})
	return deleted, err
}

// LoseFrom marks lost, in one commit, every unfinished exec of a sandbox
// accepted at or after checkpoint generation gen, and returns their ids.
func (s *Store) LoseFrom(sandbox string, gen uint64, reason string) (lost []string, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		lost = nil
		c := tx.Bucket(bucketOrder).Cursor()
		for k, id := c.First(); k != nil; k, id = c.Next() {
			r, err := getRecord(tx, string(id))
			if err != nil {
				return err
			}
			if r.Sandbox != sandbox || r.Generation < gen || IsFinal(r.State) {
				continue
			}
			if err := Lose(r, reason); err != nil {
				return err
			}
			if err := putRecord(tx, r); err != nil {
				return err
			}
			lost = append(lost, r.Id)
		}
		return nil
	})
	return lost, err
}

// Sandbox is a registry entry (the journalled fields of the protocol message).
type Sandbox = supervisorv1.Sandbox

// PutSandbox stores a sandbox's journalled fields.
func (s *Store) PutSandbox(sb *Sandbox) error {
	v, err := proto.Marshal(&supervisorv1.Sandbox{Id: sb.Id, Agent: sb.Agent, Generation: sb.Generation, Labels: sb.Labels})
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSandboxes).Put([]byte(sb.Id), v)
	})
}

// DeleteSandbox removes a sandbox from the registry.
func (s *Store) DeleteSandbox(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSandboxes).Delete([]byte(id))
	})
}

// Sandboxes returns every registered sandbox.
func (s *Store) Sandboxes() (out []*Sandbox, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSandboxes).ForEach(func(k, v []byte) error {
			sb := new(Sandbox)
			if err := proto.Unmarshal(v, sb); err != nil {
				return status.Errorf(codes.DataLoss, "sandbox %s: journal entry unreadable: %v", k, err)
			}
			out = append(out, sb)
			return nil
		})
	})
	return out, err
}

// IsNotFound reports whether err is a NotFound status.
func IsNotFound(err error) bool {
	return status.Code(err) == codes.NotFound
}
