package rootfs

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A step runs in a chroot through a helper: this same executable, re-run
// with helperEnv set, in a new mount and PID namespace (plus a user
// namespace when it registers its own binfmt_misc handler). The helper
// mounts /proc, /sys and /dev under the root, runs the command chrooted,
// unmounts, and reports the exit status. Because the mounts live in the
// helper's private mount namespace and every process of the step in its PID
// namespace, killing the helper (timeout, builder crash) removes them all:
// no mount is ever visible on the host and nothing outlives the step.
const helperEnv = "SAILBOX_ROOTFS_CHROOT_HELPER"

func init() {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(chrootHelperMain())
	}
}

// mountSpec is one mount the helper makes under the root.
type mountSpec struct {
	Source string  `json:"source"`
	Target string  `json:"target"` // absolute path inside the root
	FSType string  `json:"fstype,omitempty"`
	Flags  uintptr `json:"flags"`
}

// chrootMounts is what every step gets: a fresh proc of the step's PID
// namespace, and the host's /sys and /dev bound recursively.
func chrootMounts() []mountSpec {
	return []mountSpec{
		{Source: "proc", Target: "/proc", FSType: "proc", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{Source: "/sys", Target: "/sys", Flags: unix.MS_BIND | unix.MS_REC},
		{Source: "/dev", Target: "/dev", Flags: unix.MS_BIND | unix.MS_REC},
	}
}

// binfmtReg is a binfmt_misc registration the helper makes in its own
// (user-namespaced) binfmt_misc instance.
type binfmtReg struct {
	MountDir string `json:"mount_dir"` // host directory to mount the instance on
	Register string `json:"register"`  // the line written to register
}

// chrootSpec is what the helper is told to do (JSON on fd 3).
type chrootSpec struct {
	Root   string      `json:"root"`
	Argv   []string    `json:"argv"`
	Env    []string    `json:"env"`
	Dir    string      `json:"dir"` // working directory inside the root
	Mounts []mountSpec `json:"mounts"`
	Binfmt *binfmtReg  `json:"binfmt,omitempty"`
	UserNS bool        `json:"userns"`
}

// chrootResult is what the helper reports (JSON on fd 4).
type chrootResult struct {
	Exit   int    `json:"exit"`
	Signal int    `json:"signal,omitempty"`
	Error  string `json:"error,omitempty"`
	// Unmounted lists the mount targets the helper removed, innermost first.
	Unmounted []string `json:"unmounted,omitempty"`
}

// exitError is a step command that ran and failed.
type exitError struct {
	Argv   []string
	Code   int
	Signal int
}

func (e *exitError) Error() string {
	if e.Signal != 0 {
		return fmt.Sprintf("%s: killed by signal %d", shellQuote(e.Argv), e.Signal)
	}
	return fmt.Sprintf("%s: exit code %d", shellQuote(e.Argv), e.Code)
}

// runChroot runs spec through the helper, its output to out. started, when
// set, is called with the helper's host PID once it runs (tests use it to
// find its namespaces). Cancelling ctx kills the helper, and with it the
// step's PID and mount namespaces.
func runChroot(ctx context.Context, spec chrootSpec, out io.Writer, started func(pid int)) (chrootResult, error) {
	var res chrootResult
	self, err := os.Executable()
	if err != nil {
		return res, fmt.Errorf("chroot helper: %w", err)
	}
	specR, specW, err := os.Pipe()
	if err != nil {
		return res, err
	}
	resR, resW, err := os.Pipe()
	if err != nil {
		specR.Close()
		specW.Close()
		return res, err
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Args = []string{"sailbox-chroot", spec.Root}
	cmd.Env = []string{helperEnv + "=1", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{specR, resW}
	cmd.WaitDelay = 5 * time.Second
	attr := &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
		Pdeathsig:  syscall.SIGKILL,
	}
	if spec.UserNS {
		// Identity map: files the step creates get the same owners as seen
		// from the host, and root inside may chown to any of them.
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 4294967295}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 4294967295}}
		attr.GidMappingsEnableSetgroups = true
	}
	cmd.SysProcAttr = attr
	// Pdeathsig fires when the creating thread exits: keep it alive.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err = cmd.Start()
	specR.Close()
	resW.Close()
	if err != nil {
		specW.Close()
		resR.Close()
		return res, fmt.Errorf("start chroot helper for %s: %w", spec.Root, err)
	}
	if started != nil {
		started(cmd.Process.Pid)
	}
	go func() {
		json.NewEncoder(specW).Encode(spec)
		specW.Close()
	}()
	resCh := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(resR)
		resR.Close()
		resCh <- b
	}()
	werr := cmd.Wait()
	b := <-resCh
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if len(b) == 0 {
		return res, fmt.Errorf("chroot helper for %s died: %v", spec.Root, werr)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return res, fmt.Errorf("chroot helper for %s: bad result: %v", spec.Root, err)
	}
	if res.Error != "" {
		return res, fmt.Errorf("chroot %s: %s", spec.Root, res.Error)
	}
	if res.Exit != 0 || res.Signal != 0 {
		return res, &exitError{Argv: spec.Argv, Code: res.Exit, Signal: res.Signal}
	}
	return res, nil
}

// chrootHelperMain is the helper process: PID 1 of its own PID namespace.
func chrootHelperMain() int {
	result := os.NewFile(4, "result")
	report := func(r chrootResult) int {
		json.NewEncoder(result).Encode(r)
		result.Close()
		if r.Error != "" {
			fmt.Fprintln(os.Stderr, "sailbox-chroot:", r.Error)
			return 125
		}
		return 0
	}
	var spec chrootSpec
	if err := json.NewDecoder(os.NewFile(3, "spec")).Decode(&spec); err != nil {
		return report(chrootResult{Error: "read spec: " + err.Error()})
	}
	// Nothing mounted here may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return report(chrootResult{Error: "make / private: " + err.Error()})
	}
	if spec.Binfmt != nil {
		if err := unix.Mount("binfmt_misc", spec.Binfmt.MountDir, "binfmt_misc", 0, ""); err != nil {
			return report(chrootResult{Error: fmt.Sprintf("mount a private binfmt_misc on %s (needs Linux >= 6.7): %v", spec.Binfmt.MountDir, err)})
		}
		if err := os.WriteFile(filepath.Join(spec.Binfmt.MountDir, "register"), []byte(spec.Binfmt.Register), 0); err != nil {
			return report(chrootResult{Error: "register binfmt_misc handler: " + err.Error()})
		}
	}
	var mounted []string
	unmountAll := func() []string {
		var done []string
		for i := len(mounted) - 1; i >= 0; i-- {
			if err := unix.Unmount(mounted[i], unix.MNT_DETACH); err == nil {
				done = append(done, mounted[i])
			} else {
				fmt.Fprintf(os.Stderr, "sailbox-chroot: unmount %s: %v\n", mounted[i], err)
			}
		}
		return done
	}
	for _, m := range spec.Mounts {
		target := filepath.Join(spec.Root, m.Target)
		if err := os.MkdirAll(target, 0o755); err != nil {
			unmountAll()
			return report(chrootResult{Error: err.Error()})
		}
		if err := unix.Mount(m.Source, target, m.FSType, m.Flags, ""); err != nil {
			unmountAll()
			return report(chrootResult{Error: fmt.Sprintf("mount %s on %s: %v", m.Source, target, err)})
		}
		mounted = append(mounted, target)
	}
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env = spec.Env
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: spec.Root}
	// exec.Command resolves a bare name on the host's PATH; inside the
	// chroot the name must be looked up in the root instead.
	cmd.Path = lookPathIn(spec.Root, spec.Argv[0], spec.Env)
	cmd.Err = nil
	var r chrootResult
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ws := ee.Sys().(syscall.WaitStatus)
			if ws.Signaled() {
				r.Signal = int(ws.Signal())
				r.Exit = 128 + r.Signal
			} else {
				r.Exit = ws.ExitStatus()
			}
		} else {
			r.Error = fmt.Sprintf("run %s in %s: %v", shellQuote(spec.Argv), spec.Root, err)
		}
	}
	r.Unmounted = unmountAll()
	return report(r)
}

// lookPathIn resolves a bare command name against PATH (from env) inside
// root and returns the path as seen in the chroot.
func lookPathIn(root, name string, env []string) string {
	if strings.Contains(name, "/") {
		return name
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		// Stat through the root; a symlink inside resolves on the host side
		// of root only when relative, which is what Debian uses.
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return name
}

// emulation is how the builder runs the target architecture's binaries.
type emulation struct {
	Native bool   // the host runs them itself
	Interp string // host path of the qemu-user interpreter
	// System is the host's binfmt_misc entry for the architecture, when
	// registered; else the helper registers a private one (UserNS).
	System       string
	SystemInterp string // the entry's interpreter path
	SystemFixed  bool   // the entry has the F flag (interpreter opened at registration)
	UserNS       bool
}

// binfmtDir is where the host's binfmt_misc is normally mounted.
var binfmtDir = "/proc/sys/fs/binfmt_misc"

// detectEmulation finds how to run info's binaries on this host.
func detectEmulation(info baseInfo) (emulation, error) {
	if runtime.GOARCH == info.GoArch {
		return emulation{Native: true}, nil
	}
	interp, err := exec.LookPath(info.QEMU)
	if err != nil {
		return emulation{}, fmt.Errorf("%s not found (apt-get install qemu-user-static): %w", info.QEMU, err)
	}
	e := emulation{Interp: interp}
	if name, path, fixed, ok := findBinfmtEntry(binfmtDir, info); ok {
		e.System, e.SystemInterp, e.SystemFixed = name, path, fixed
		return e, nil
	}
	e.UserNS = true
	return e, nil
}

// findBinfmtEntry looks for an enabled binfmt_misc entry that handles ELF
// binaries of info's machine.
func findBinfmtEntry(dir string, info baseInfo) (name, interp string, fixed, ok bool) {
	want, _ := unescapeMagic(info.ELFMagic)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", "", false, false
	}
	for _, de := range entries {
		if de.Name() == "register" || de.Name() == "status" {
			continue
		}
		f, err := os.Open(filepath.Join(dir, de.Name()))
		if err != nil {
			continue
		}
		var enabled bool
		var magic []byte
		var path, flags string
		s := bufio.NewScanner(f)
		for s.Scan() {
			line := s.Text()
			switch {
			case line == "enabled":
				enabled = true
			case strings.HasPrefix(line, "interpreter "):
				path = strings.TrimPrefix(line, "interpreter ")
			case strings.HasPrefix(line, "flags: "):
				flags = strings.TrimPrefix(line, "flags: ")
			case strings.HasPrefix(line, "magic "):
				magic, _ = hex.DecodeString(strings.TrimPrefix(line, "magic "))
			}
		}
		f.Close()
		// ELF class (byte 4) and e_machine (bytes 18-19) decide the arch.
		if enabled && len(magic) >= 20 && string(magic[:4]) == "\x7fELF" &&
			magic[4] == want[4] && magic[18] == want[18] && magic[19] == want[19] {
			return de.Name(), path, strings.Contains(flags, "F"), true
		}
	}
	return "", "", false, false
}

// unescapeMagic turns binfmt_misc's \xNN notation into bytes.
func unescapeMagic(s string) ([]byte, error) {
	return hex.DecodeString(strings.ReplaceAll(s, `\x`, ""))
}

// registerLine is the binfmt_misc register line for a private handler. F
// opens the interpreter now, so it need not exist inside the chroot.
func registerLine(info baseInfo, interp string) string {
	return fmt.Sprintf(":sailbox-%s:M::%s:%s:%s:F", info.DebArch, info.ELFMagic, info.ELFMask, interp)
}

// shellQuote renders argv for messages, quoting what a shell would split.
func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r == '-' || r == '_' || r == '.' || r == '/' || r == '=' || r == ':' || r == '+' || r == ',' ||
				(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9'))
		}) < 0 {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
