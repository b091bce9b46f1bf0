package netfilter

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// objects are one filter instance: the program with its own maps.
type objects struct {
	Prog   *ebpf.Program `ebpf:"sailbox_ingress"`
	Policy *ebpf.Map     `ebpf:"policy"`
	Drops  *ebpf.Map     `ebpf:"drops"`
}

func (o *objects) Close() error {
	return errors.Join(o.Prog.Close(), o.Policy.Close(), o.Drops.Close())
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

// dump reads the whole trie.
func dump(m *ebpf.Map) (map[lpmKey]uint32, error) {
	out := make(map[lpmKey]uint32)
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

// update moves the pinned trie of dir to p (see updateMap).
func update(device, dir string, p Policy) error {
	m, err := ebpf.LoadPinnedMap(dir+"/policy", nil)
	if err != nil {
		return fmt.Errorf("netfilter: %s: %w", device, err)
	}
	defer m.Close()
	if err := updateMap(m, p); err != nil {
		return fmt.Errorf("netfilter: %s: update policy: %w", device, err)
	}
	return nil
}

// updateMap moves a trie from its current contents to p's in an order that
// never refuses a source allowed by both: new allows first, then markers of
// ports that open up are removed, then markers of newly policed ports are
// added, and stale allows go last.
func updateMap(m *ebpf.Map, p Policy) error {
	want, err := p.entries()
	if err != nil {
		return err
	}
	have, err := dump(m)
	if err != nil {
		return err
	}
	allows, markers := map[lpmKey]uint32{}, map[lpmKey]uint32{}
	for k, v := range want {
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
	if err := putEntries(m, allows); err != nil {
		return err
	}
	if err := deleteEntries(m, staleMarkers); err != nil {
		return err
	}
	if err := putEntries(m, markers); err != nil {
		return err
	}
	return deleteEntries(m, staleAllows)
}
