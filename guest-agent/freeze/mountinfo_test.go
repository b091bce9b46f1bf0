package freeze

import (
	"strings"
	"testing"
)

const sampleMountInfo = `22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
28 27 0:25 / /run rw,nosuid - tmpfs tmpfs rw,size=4k
40 27 7:1 / /mnt/with\040space rw,relatime shared:5 master:1 - ext4 /dev/loop1 rw
41 27 7:2 / /mnt/ro ro,relatime - ext4 /dev/loop2 ro
42 27 7:3 / /mnt/sbro rw,relatime - ext4 /dev/loop3 ro
43 27 0:40 / /mnt/btr rw - btrfs /dev/vdb rw
44 27 0:41 / /mnt/fuse rw - fuse.sshfs host:/ rw
`

func TestParseMountInfo(t *testing.T) {
	ms, err := ParseMountInfo(strings.NewReader(sampleMountInfo))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 8 {
		t.Fatalf("got %d mounts, want 8", len(ms))
	}
	sp := ms[3]
	if sp.MountPoint != "/mnt/with space" || sp.FSType != "ext4" || sp.Source != "/dev/loop1" ||
		sp.Major != 7 || sp.Minor != 1 || sp.ID != 40 || sp.ParentID != 27 {
		t.Errorf("optional fields / escapes parsed wrong: %+v", sp)
	}
	wantRO := []bool{false, false, false, false, true, true, false, false}
	wantSkip := []bool{true, false, true, false, false, false, false, true}
	for i, m := range ms {
		if m.ReadOnly() != wantRO[i] {
			t.Errorf("%s: ReadOnly=%v, want %v", m.MountPoint, m.ReadOnly(), wantRO[i])
		}
		if unfreezable(m) != wantSkip[i] {
			t.Errorf("%s (%s): unfreezable=%v, want %v", m.MountPoint, m.FSType, unfreezable(m), wantSkip[i])
		}
	}
}

func TestParseMountInfoRejectsGarbage(t *testing.T) {
	for _, line := range []string{"1 2 3", "x 1 7:1 / /a rw - ext4 /dev/x rw", "1 1 71 / /a rw - ext4 /dev/x rw", "1 1 7:1 / /a rw ext4 /dev/x rw"} {
		if _, err := ParseMountInfo(strings.NewReader(line + "\n")); err == nil {
			t.Errorf("%q: parsed without error", line)
		}
	}
}
