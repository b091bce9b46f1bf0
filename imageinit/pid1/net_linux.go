package pid1

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// SetupNetwork brings lo up and, when c is set, gives c.Device its static
// address and default route.
func SetupNetwork(c *IPConfig) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("link lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("link lo up: %w", err)
	}
	if c == nil {
		return nil
	}
	link, err := netlink.LinkByName(c.Device)
	if err != nil {
		return fmt.Errorf("link %s: %w", c.Device, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: c.Addr.Addr().AsSlice(), Mask: net.CIDRMask(c.Addr.Bits(), 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", c.Addr, c.Device, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("link %s up: %w", c.Device, err)
	}
	if c.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: c.Gateway.AsSlice()}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %s on %s: %w", c.Gateway, c.Device, err)
		}
	}
	return nil
}
