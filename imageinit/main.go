// Command imageinit is PID 1 of a sailbox microVM (see package pid1). It
// refuses to run as anything but PID 1, so it can never power off the host
// it was built on by accident.
package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/sailbox/sailbox/imageinit/pid1"
)

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintf(os.Stderr, "imageinit: refusing to run: not PID 1 (pid %d); it is the VM's init\n", os.Getpid())
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "sailbox-init")
	err := pid1.Run(pid1.Options{
		// Tests in a PID namespace set this so the host's cmdline is not followed.
		Cmdline:  os.Getenv("SAILBOX_INIT_CMDLINE"),
		Poweroff: pid1.SystemPoweroff,
	}, log)
	log.Error("power off failed", "err", err)
	// PID 1 must not exit (the kernel would panic); wait for a human.
	for {
		time.Sleep(time.Hour)
	}
}
