package netfilter

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The legacy tc attachment: a direct-action bpf filter on the egress hook of
// a clsact qdisc, for kernels without TCX (< 6.6). The filter is found again
// by this handle and priority; priority 1 runs it before other filters, whose
// TC_ACT_OK would skip it. The clsact qdisc is left in place on detach
// because other filters may use it.
const (
	tcHandle   = 0x5b0c
	tcPriority = 1
	tcName     = "sailbox_ingress"
)

func tcFilter(ifindex int) netlink.BpfFilter {
	return netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    netlink.HANDLE_MIN_EGRESS,
			Handle:    tcHandle,
			Protocol:  unix.ETH_P_ALL,
			Priority:  tcPriority,
		},
		Name:         tcName,
		DirectAction: true,
	}
}

func tcAttach(ifindex int, prog *ebpf.Program) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("clsact qdisc: %w", err)
	}
	f := tcFilter(ifindex)
	f.Fd = prog.FD()
	if err := netlink.FilterReplace(&f); err != nil {
		return fmt.Errorf("bpf filter: %w", err)
	}
	return nil
}

// tcFind returns the id of the program in our filter on ifindex, or 0.
func tcFind(ifindex int) (int, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return 0, err
	}
	filters, err := netlink.FilterList(l, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		return 0, err
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Handle == tcHandle && bf.Priority == tcPriority {
			return bf.Id, nil
		}
	}
	return 0, nil
}

func progID(prog *ebpf.Program) (int, error) {
	info, err := prog.Info()
	if err != nil {
		return 0, err
	}
	id, ok := info.ID()
	if !ok {
		return 0, fmt.Errorf("program id not available")
	}
	return int(id), nil
}

// tcLive reports whether our filter on ifindex runs the pinned program.
func tcLive(pin string, ifindex int) (bool, error) {
	if ifindex == 0 {
		return false, nil
	}
	prog, err := ebpf.LoadPinnedProgram(pin, nil)
	if err != nil {
		return false, nil
	}
	defer prog.Close()
	want, err := progID(prog)
	if err != nil {
		return false, err
	}
	got, err := tcFind(ifindex)
	if err != nil {
		return false, err
	}
	return got == want, nil
}

// tcDetach removes our filter from ifindex if it runs prog.
func tcDetach(ifindex int, prog *ebpf.Program) error {
	want, err := progID(prog)
	if err != nil {
		return err
	}
	got, err := tcFind(ifindex)
	if err != nil || got != want {
		return err
	}
	f := tcFilter(ifindex)
	return netlink.FilterDel(&f)
}
