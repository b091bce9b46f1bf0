package resume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Netlink configures interfaces over rtnetlink in the network namespace
// that was current when NewNetlink was called.
type Netlink struct {
	h *netlink.Handle
}

// NewNetlink opens an rtnetlink socket in the calling thread's network
// namespace.
func NewNetlink() (*Netlink, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	return &Netlink{h: h}, nil
}

// Close releases the netlink socket.
func (n *Netlink) Close() { n.h.Close() }

// Configure sets the MAC, replaces the global addresses and sets the
// default routes of one interface, and brings it up.
func (n *Netlink) Configure(ctx context.Context, ifc Interface) (InterfaceReport, error) {
	rep := InterfaceReport{Name: ifc.Name}
	link, err := n.h.LinkByName(ifc.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return rep, status.Errorf(codes.NotFound, "interface %s: not found", ifc.Name)
		}
		return rep, fmt.Errorf("interface %s: %w", ifc.Name, err)
	}
	if ifc.MAC != nil && !bytes.Equal(link.Attrs().HardwareAddr, ifc.MAC) {
		if err := n.h.LinkSetHardwareAddr(link, ifc.MAC); err != nil {
			// Drivers without live MAC change want the link down.
			if !errors.Is(err, unix.EBUSY) {
				return rep, fmt.Errorf("interface %s: set MAC %s: %w", ifc.Name, ifc.MAC, err)
			}
			if err := n.h.LinkSetDown(link); err != nil {
				return rep, fmt.Errorf("interface %s: down: %w", ifc.Name, err)
			}
			if err := n.h.LinkSetHardwareAddr(link, ifc.MAC); err != nil {
				return rep, fmt.Errorf("interface %s: set MAC %s: %w", ifc.Name, ifc.MAC, err)
			}
		}
		rep.MACChanged = true
	}
	if err := n.h.LinkSetUp(link); err != nil {
		return rep, fmt.Errorf("interface %s: up: %w", ifc.Name, err)
	}

	if ifc.Addresses != nil {
		cur, err := n.h.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return rep, fmt.Errorf("interface %s: list addresses: %w", ifc.Name, err)
		}
		have := map[netip.Prefix]netlink.Addr{}
		for _, a := range cur {
			p, ok := toPrefix(a.IPNet)
			if !ok || (p.Addr().Is6() && p.Addr().IsLinkLocalUnicast()) {
				continue
			}
			have[p] = a
		}
		// Add first, so the interface is never without an address.
		for _, p := range ifc.Addresses {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
			if _, ok := have[p]; ok {
				delete(have, p)
				continue
			}
			a := &netlink.Addr{IPNet: toIPNet(p)}
			if p.Addr().Is6() {
				a.Flags = unix.IFA_F_NODAD // the host assigned it; no need to wait for DAD
			}
			if err := n.h.AddrAdd(link, a); err != nil {
				return rep, fmt.Errorf("interface %s: add address %s: %w", ifc.Name, p, err)
			}
			rep.AddressesAdded = append(rep.AddressesAdded, p)
		}
		for p, a := range have {
			if err := n.h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return rep, fmt.Errorf("interface %s: remove address %s: %w", ifc.Name, p, err)
			}
			rep.AddressesRemoved = append(rep.AddressesRemoved, p)
		}
		slices.SortFunc(rep.AddressesRemoved, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		if err := waitLocal(ctx, n.h, rep.AddressesAdded, 2*time.Second); err != nil {
			return rep, fmt.Errorf("interface %s: %w", ifc.Name, err)
		}
	}

	for _, gw := range ifc.Gateways {
		gw = gw.Unmap()
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(gw.AsSlice()), Family: unix.AF_INET}
		if gw.Is6() {
			r.Family = unix.AF_INET6
		}
		// Dst nil = the default route; replace whatever default was there.
		if err := n.h.RouteReplace(r); err != nil {
			return rep, fmt.Errorf("interface %s: default route via %s: %w", ifc.Name, gw, err)
		}
		rep.Gateways = append(rep.Gateways, gw)
	}
	return rep, nil
}

// waitLocal waits until every address has its local route. The kernel
// installs it from a workqueue for IPv6 (even with NODAD), so right after
// AddrAdd packets to the address may still be routed out of the interface.
func waitLocal(ctx context.Context, h *netlink.Handle, addrs []netip.Prefix, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, p := range addrs {
		for {
			rs, err := h.RouteGet(net.IP(p.Addr().AsSlice()))
			if err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("address %s: no local route after %s", p, timeout)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
	return nil
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func toIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}
