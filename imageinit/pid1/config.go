package pid1

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Defaults of the kernel command line keys.
const (
	DefaultAgent       = "/usr/bin/guest-agent"
	DefaultListen      = "vsock://:10000"
	DefaultModules     = "/etc/sailbox/modules"
	DefaultControlPort = 10001
	DefaultHostname    = "sailbox"
)

// ReadyMarker is printed on the console once the boot steps are done and the
// agent has been started; the host driver times boots by it.
const ReadyMarker = "sailbox-init: ready"

// PoweroffMarker is printed right before the power-off call.
const PoweroffMarker = "sailbox-init: powering off"

// Options are what the caller of Run decides rather than the command line.
type Options struct {
	// Cmdline replaces /proc/cmdline when set (tests in a PID namespace
	// must not follow the host's kernel command line).
	Cmdline string
	// Poweroff ends the machine after the shutdown steps (SystemPoweroff).
	Poweroff func() error
}

// Config is what imageinit does, parsed from the kernel command line.
type Config struct {
	// Agent is the agent binary; "" runs no agent (sailbox.agent=none).
	Agent string
	// AgentArgs are its arguments (sailbox.listen=ADDR gives --listen ADDR).
	AgentArgs []string
	// Modules names a file listing kernel module paths in load order
	// (sailbox.modules=PATH; dependencies first, one per line).
	Modules string
	// Hostname (sailbox.hostname=, else the hostname field of ip=, else
	// /etc/hostname, else "sailbox").
	Hostname string
	// Net is the eth0 configuration from ip=, nil when absent.
	Net *IPConfig
	// ControlPort is the vsock port where "poweroff\n" powers the VM off
	// (sailbox.control=PORT; 0 disables it).
	ControlPort uint32
	// DataDisk is a block device mounted at DataDir as ext4
	// (sailbox.data=/dev/vda[:/data]).
	DataDisk, DataDir string
	// Root is the root disk (sailbox.root=/dev/vda): imageinit on the
	// initramfs mounts it (RootFSType, sailbox.rootfstype=, default ext4),
	// moves it to / and execs RootInit from it (sailbox.rootinit=, default
	// /sbin/init), which then boots as PID 1 from the disk.
	Root, RootFSType, RootInit string
	// BootOnly powers off right after the boot steps (sailbox.bootonly):
	// the bare-init boot used as a timing baseline.
	BootOnly bool
	// Poweroff ends the machine after the shutdown steps. imageinit passes
	// reboot(LINUX_REBOOT_CMD_POWER_OFF); in a PID namespace that only ends
	// the namespace.
	Poweroff func() error
}

// IPConfig is the kernel's ip= parameter for a static address:
// ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>.
type IPConfig struct {
	Addr     netip.Prefix
	Gateway  netip.Addr // invalid when none
	Hostname string
	Device   string // default eth0
}

// ParseIP parses a static ip= value. "dhcp", "off" and friends give nil.
func ParseIP(v string) (*IPConfig, error) {
	switch v {
	case "", "off", "none", "dhcp", "on", "any", "bootp", "rarp", "both":
		return nil, nil
	}
	f := strings.Split(v, ":")
	for len(f) < 7 {
		f = append(f, "")
	}
	client, err := netip.ParseAddr(f[0])
	if err != nil || !client.Is4() {
		return nil, fmt.Errorf("ip=%s: bad client address %q", v, f[0])
	}
	bits := 24
	if f[3] != "" {
		if n, err := strconv.Atoi(f[3]); err == nil && n >= 0 && n <= 32 {
			bits = n
		} else {
			mask, err := netip.ParseAddr(f[3])
			if err != nil || !mask.Is4() {
				return nil, fmt.Errorf("ip=%s: bad netmask %q", v, f[3])
			}
			m := mask.As4()
			u := uint32(m[0])<<24 | uint32(m[1])<<16 | uint32(m[2])<<8 | uint32(m[3])
			bits = 0
			for u&0x80000000 != 0 {
				bits++
				u <<= 1
			}
			if u != 0 {
				return nil, fmt.Errorf("ip=%s: netmask %q is not contiguous", v, f[3])
			}
		}
	}
	c := &IPConfig{Addr: netip.PrefixFrom(client, bits), Hostname: f[4], Device: f[5]}
	if f[2] != "" {
		gw, err := netip.ParseAddr(f[2])
		if err != nil || !gw.Is4() {
			return nil, fmt.Errorf("ip=%s: bad gateway %q", v, f[2])
		}
		c.Gateway = gw
	}
	if c.Device == "" {
		c.Device = "eth0"
	}
	return c, nil
}

// SplitCmdline splits a kernel command line into words; double quotes group
// a value with spaces (as the kernel does).
func SplitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQ, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQ, have = !inQ, true
		case !inQ && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// ParseCmdline builds a Config from a kernel command line. Unknown words
// are ignored: the kernel's own parameters share the line.
func ParseCmdline(cmdline string) (Config, error) {
	c := Config{
		RootFSType:  "ext4",
		RootInit:    "/sbin/init",
		Agent:       DefaultAgent,
		Modules:     DefaultModules,
		ControlPort: DefaultControlPort,
	}
	listen := DefaultListen
	var ipHost string
	for _, w := range SplitCmdline(cmdline) {
		k, v, _ := strings.Cut(w, "=")
		switch k {
		case "sailbox.agent":
			if v == "none" {
				v = ""
			}
			c.Agent = v
		case "sailbox.listen":
			listen = v
		case "sailbox.modules":
			c.Modules = v
		case "sailbox.hostname":
			c.Hostname = v
		case "sailbox.control":
			p, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return c, fmt.Errorf("sailbox.control=%s: bad port", v)
			}
			c.ControlPort = uint32(p)
		case "sailbox.data":
			dev, dir, ok := strings.Cut(v, ":")
			if !ok {
				dir = "/data"
			}
			c.DataDisk, c.DataDir = dev, dir
		case "sailbox.root":
			c.Root = v
		case "sailbox.rootfstype":
			c.RootFSType = v
		case "sailbox.rootinit":
			c.RootInit = v
		case "sailbox.bootonly":
			c.BootOnly = v == "" || v == "1" || v == "true"
		case "ip":
			ipc, err := ParseIP(v)
			if err != nil {
				return c, err
			}
			c.Net = ipc
			if ipc != nil {
				ipHost = ipc.Hostname
			}
		}
	}
	if c.Agent != "" {
		c.AgentArgs = []string{"--listen", listen}
	}
	if c.Hostname == "" {
		c.Hostname = ipHost
	}
	return c, nil
}
