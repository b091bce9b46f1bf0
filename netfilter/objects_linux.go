package netfilter

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
	"google.golang.org/grpc/codes"
)

// objects are one filter instance: the program with its own maps.
type objects struct {
	Prog *ebpf.Program `ebpf:"sailbox_ingress"`
	filterMaps
}

// filterMaps are the state of a filter, pinned as policy, ports and drops.
type filterMaps struct {
	Policy *ebpf.Map `ebpf:"policy"` // the LPM trie
	Ports  *ebpf.Map `ebpf:".bss"`   // policed_ports, the bitmap in front of it
	Drops  *ebpf.Map `ebpf:"drops"`  // per-CPU drop counter
}

func (o *objects) Close() error {
	return errors.Join(o.Prog.Close(), o.filterMaps.Close())
}

func (m *filterMaps) Close() error {
	var errs []error
	for _, x := range []*ebpf.Map{m.Policy, m.Ports, m.Drops} {
		if x != nil {
			errs = append(errs, x.Close())
		}
	}
	return errors.Join(errs...)
}

// portSet is the policed_ports bitmap.
type portSet [65536 / 64]uint64

func (s *portSet) add(port uint16) { s[port/64] |= 1 << (port % 64) }

func readPorts(m *ebpf.Map) (portSet, error) {
	var s portSet
	err := m.Lookup(uint32(0), &s)
	return s, err
}

func writePorts(m *ebpf.Map, s portSet) error {
	return m.Update(uint32(0), &s, ebpf.UpdateExist)
}

func loadObjects() (*objects, error) {
	spec, err := loadIngress()
	if err != nil {
		return nil, err
	}
	var o objects
	if err := spec.LoadAndAssign(&o, nil); err != nil {
		return nil, fmt.Errorf("load BPF program: %w", err)
	}
	return &o, nil
}

// batchSize bounds one BPF_MAP_UPDATE/DELETE_BATCH call.
const batchSize = 4096

// dump reads the whole trie, in batches where the kernel has them (one
// syscall per entry pair otherwise).
func dump(m *ebpf.Map) (map[lpmKey]uint32, error) {
	out := make(map[lpmKey]uint32)
	var cursor ebpf.MapBatchCursor
	keys := make([]lpmKey, batchSize)
	vals := make([]uint32, batchSize)
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read policy: %w", err)
		}
	}
	clear(out)
	var (
		k lpmKey
		v uint32
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return out, nil
}

// putEntries writes entries in batches, falling back to one syscall per
// entry where the kernel lacks batch operations.
func putEntries(m *ebpf.Map, entries map[lpmKey]uint32) error {
	keys := make([]lpmKey, 0, min(len(entries), batchSize))
	vals := make([]uint32, 0, cap(keys))
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		_, err := m.BatchUpdate(keys, vals, nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			for i := range keys {
				if err := m.Put(keys[i], vals[i]); err != nil {
					return err
				}
			}
			err = nil
		}
		keys, vals = keys[:0], vals[:0]
		return err
	}
	for k, v := range entries {
		keys = append(keys, k)
		vals = append(vals, v)
		if len(keys) == batchSize {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func deleteEntries(m *ebpf.Map, keys []lpmKey) error {
	for len(keys) > 0 {
		n := min(len(keys), batchSize)
		_, err := m.BatchDelete(keys[:n], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			for _, k := range keys[:n] {
				if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return err
				}
			}
			err = nil
		}
		if err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

// updateMaps moves the policy maps from their current contents to p's in an
// order that never refuses a source allowed by both: the port bitmap gains
// the new ports, new allows are added, markers of ports that open up are
// removed, markers of newly policed ports are added, stale allows are
// removed, and the bitmap drops the ports that opened up.
func updateMaps(m filterMaps, p Policy) error {
	want, err := p.entries()
	if err != nil {
		return err
	}
	have, err := dump(m.Policy)
	if err != nil {
		return err
	}
	// Allows are added before stale entries go, so for a moment the trie
	// holds both policies; refuse up front rather than fail half way.
	union := len(have)
	for k := range want {
		if _, ok := have[k]; !ok {
			union++
		}
	}
	if max := int(m.Policy.MaxEntries()); union > max {
		return withCode(codes.ResourceExhausted, fmt.Errorf(
			"policy needs %d trie entries (%d during the update from the current one), over the limit of %d",
			len(want), union, max))
	}
	cur, err := readPorts(m.Ports)
	if err != nil {
		return fmt.Errorf("read port bitmap: %w", err)
	}
	var ports portSet
	allows, markers := map[lpmKey]uint32{}, map[lpmKey]uint32{}
	for k, v := range want {
		if v == valDeny {
			ports.add(k.port())
		}
		if hv, ok := have[k]; ok && hv == v {
			continue
		}
		if v == valDeny {
			markers[k] = v
		} else {
			allows[k] = v
		}
	}
	var staleMarkers, staleAllows []lpmKey
	for k, v := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if v == valDeny {
			staleMarkers = append(staleMarkers, k)
		} else {
			staleAllows = append(staleAllows, k)
		}
	}
	both := cur
	for i := range both {
		both[i] |= ports[i]
	}
	if both != cur {
		if err := writePorts(m.Ports, both); err != nil {
			return fmt.Errorf("write port bitmap: %w", err)
		}
	}
	if err := putEntries(m.Policy, allows); err != nil {
		return err
	}
	if err := deleteEntries(m.Policy, staleMarkers); err != nil {
		return err
	}
	if err := putEntries(m.Policy, markers); err != nil {
		return err
	}
	if err := deleteEntries(m.Policy, staleAllows); err != nil {
		return err
	}
	if ports != both {
		if err := writePorts(m.Ports, ports); err != nil {
			return fmt.Errorf("write port bitmap: %w", err)
		}
	}
	return nil
}

// loadPinnedMaps opens the pinned maps of a filter directory.
func loadPinnedMaps(dir string) (filterMaps, error) {
	var m filterMaps
	var err error
	for _, x := range []struct {
		name string
		dst  **ebpf.Map
	}{{"policy", &m.Policy}, {"ports", &m.Ports}, {"drops", &m.Drops}} {
		if *x.dst, err = ebpf.LoadPinnedMap(filepath.Join(dir, x.name), nil); err != nil {
			m.Close()
			return filterMaps{}, err
		}
	}
	return m, nil
}

// update moves the pinned maps of dir to p (see updateMaps).
func update(device, dir string, p Policy) error {
	if _, err := p.entries(); err != nil {
		return withCode(codes.InvalidArgument, fmt.Errorf("netfilter: %s: %w", device, err))
	}
	m, err := loadPinnedMaps(dir)
	if err != nil {
		return fmt.Errorf("netfilter: %s: %w", device, err)
	}
	defer m.Close()
	if err := updateMaps(m, p); err != nil {
		return fmt.Errorf("netfilter: %s: update policy: %w", device, err)
	}
	return nil
}
