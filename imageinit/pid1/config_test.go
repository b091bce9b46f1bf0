package pid1

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestSplitCmdline(t *testing.T) {
	got := SplitCmdline(`console=ttyAMA0  init=/init  a="b c" sailbox.hostname=x` + "\n")
	want := []string{"console=ttyAMA0", "init=/init", "a=b c", "sailbox.hostname=x"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestParseCmdlineDefaults(t *testing.T) {
	c, err := ParseCmdline("console=ttyAMA0 panic=-1 init=/init")
	if err != nil {
		t.Fatal(err)
	}
	if c.Agent != DefaultAgent || !reflect.DeepEqual(c.AgentArgs, []string{"--listen", DefaultListen}) ||
		c.Modules != DefaultModules || c.ControlPort != DefaultControlPort || c.Net != nil || c.BootOnly || c.DataDisk != "" ||
		c.Root != "" || c.RootFSType != "ext4" || c.RootInit != "/sbin/init" {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestParseCmdlineKeys(t *testing.T) {
	c, err := ParseCmdline("sailbox.agent=/bin/a sailbox.listen=unix:///run/a.sock sailbox.modules=/m sailbox.control=0 " +
		"sailbox.data=/dev/vdb sailbox.bootonly ip=10.0.0.2::10.0.0.1:255.255.255.0:box1:eth1:off")
	if err != nil {
		t.Fatal(err)
	}
	if c.Agent != "/bin/a" || !reflect.DeepEqual(c.AgentArgs, []string{"--listen", "unix:///run/a.sock"}) ||
		c.Modules != "/m" || c.ControlPort != 0 || c.DataDisk != "/dev/vdb" || c.DataDir != "/data" || !c.BootOnly {
		t.Fatalf("keys: %+v", c)
	}
	want := &IPConfig{Addr: netip.MustParsePrefix("10.0.0.2/24"), Gateway: netip.MustParseAddr("10.0.0.1"), Hostname: "box1", Device: "eth1"}
	if !reflect.DeepEqual(c.Net, want) || c.Hostname != "box1" {
		t.Fatalf("ip=: %+v hostname %q", c.Net, c.Hostname)
	}
	c, _ = ParseCmdline("sailbox.root=/dev/vda sailbox.rootfstype=xfs sailbox.rootinit=/init2")
	if c.Root != "/dev/vda" || c.RootFSType != "xfs" || c.RootInit != "/init2" {
		t.Fatalf("root keys: %+v", c)
	}
	c, _ = ParseCmdline("sailbox.agent=none sailbox.hostname=h ip=10.0.0.2::::x")
	if c.Agent != "" || c.AgentArgs != nil || c.Hostname != "h" || c.Net.Device != "eth0" || c.Net.Gateway.IsValid() {
		t.Fatalf("none/hostname precedence: %+v %+v", c, c.Net)
	}
}

func TestParseIP(t *testing.T) {
	for _, v := range []string{"", "off", "dhcp"} {
		if c, err := ParseIP(v); c != nil || err != nil {
			t.Errorf("ip=%s: %v %v", v, c, err)
		}
	}
	if c, err := ParseIP("192.168.1.5:::16"); err != nil || c.Addr != netip.MustParsePrefix("192.168.1.5/16") {
		t.Errorf("prefix length netmask: %v %v", c, err)
	}
	for _, bad := range []string{"x", "10.0.0.1::bad", "10.0.0.1:::255.0.255.0", "::1"} {
		if _, err := ParseIP(bad); err == nil {
			t.Errorf("ip=%s: no error", bad)
		}
	}
}
