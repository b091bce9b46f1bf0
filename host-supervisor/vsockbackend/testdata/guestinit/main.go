// Command guestinit is a throwaway PID 1 for BenchmarkInVM: it loads the
// virtio and vsock modules listed in /modules.list and serves AF_VSOCK
// test ports (10000 echo, 10001 sink, 10002 source, 10003 power off), then
// dials the host
// (CID 2, port 5000) once.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

func say(format string, args ...any) { fmt.Printf("GUESTINIT: "+format+"\n", args...) }

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "guestinit: not PID 1, refusing to run")
		os.Exit(1)
	}
	unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	unix.Mount("proc", "/proc", "proc", 0, "")
	unix.Mount("sysfs", "/sys", "sysfs", 0, "")
	list, _ := os.ReadFile("/modules.list")
	for _, m := range strings.Fields(string(list)) {
		f, err := os.Open(m)
		if err != nil {
			say("open %s: %v", m, err)
			continue
		}
		if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
			say("load %s: %v", m, err)
		}
		f.Close()
	}
	serve := func(port uint32, h func(net.Conn)) {
		for i := 0; ; i++ {
			ln, err := vsock.Listen(port, nil)
			if err != nil {
				if i%50 == 0 {
					say("listen %d: %v", port, err)
				}
				time.Sleep(20 * time.Millisecond)
				continue
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						say("accept %d: %v", port, err)
						return
					}
					go func() { defer c.Close(); h(c) }()
				}
			}()
			return
		}
	}
	serve(10000, func(c net.Conn) { io.Copy(c, c) })
	serve(10001, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d\n", n)
	})
	serve(10002, func(c net.Conn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		n, _ := strconv.Atoi(strings.TrimSpace(line))
		buf := make([]byte, 256<<10)
		for n > 0 {
			k, err := c.Write(buf[:min(n, len(buf))])
			if err != nil {
				return
			}
			n -= k
		}
	})
	serve(10003, func(c net.Conn) {
		say("powering off")
		unix.Sync()
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	})
	cid, _ := vsock.ContextID()
	say("ready cid=%d", cid)
	go func() {
		for i := 0; i < 100; i++ {
			c, err := vsock.Dial(2, 5000, nil)
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			fmt.Fprintf(c, "hello from guest\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			say("host said %q", line)
			c.Close()
			return
		}
		say("could not dial the host")
	}()
	select {}
}
