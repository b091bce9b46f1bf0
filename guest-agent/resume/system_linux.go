package resume

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SystemClock is CLOCK_REALTIME. Set needs CAP_SYS_TIME.
type SystemClock struct{}

func (SystemClock) Now() time.Time { return time.Now() }

func (SystemClock) Set(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime(CLOCK_REALTIME): %w", err)
	}
	return nil
}

// DevRandom feeds /dev/random with RNDADDENTROPY and reseeds with
// RNDRESEEDCRNG (both need CAP_SYS_ADMIN). A plain write to /dev/urandom
// would mix the bytes in without crediting them or reseeding the CRNG.
type DevRandom struct{}

const devRandom = "/dev/random"

func (DevRandom) Add(b []byte) error {
	f, err := os.OpenFile(devRandom, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(8*len(b))) // bits credited
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	conn, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	conn.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0])))
	})
	if errno != 0 {
		return fmt.Errorf("RNDADDENTROPY %s: %w", devRandom, errno)
	}
	return nil
}

func (DevRandom) Reseed() error {
	f, err := os.OpenFile(devRandom, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	conn, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	conn.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDRESEEDCRNG, 0)
	})
	if errno != 0 {
		return fmt.Errorf("RNDRESEEDCRNG %s: %w", devRandom, errno)
	}
	return nil
}

// KernelHostname is the hostname of the calling thread's UTS namespace.
type KernelHostname struct{}

func (KernelHostname) Hostname() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Nodename[:]), nil
}

func (KernelHostname) SetHostname(h string) error { return unix.Sethostname([]byte(h)) }
