package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// concurrentExecs is item 6's load: this many `sleep 1` execs at once.
const concurrentExecs = 1000

// A run is one `go test -bench` invocation.
type run struct {
	key       string // how rows refer to it
	pkg       string // ./dir
	bench     string // Benchmark function names (without the prefix), | separated
	benchtime string
	timeout   time.Duration

	// filled in by exec
	results map[string]map[string]float64 // benchmark name (no -N suffix) -> unit -> value
	lines   []string                      // the raw benchmark and failure lines
	missing string                        // why it was not run (no package / benchmark yet)
	err     string                        // why it failed
	took    time.Duration
}

func main() {
	out := flag.String("o", "BENCHMARKS.md", "file to write (relative to the repository root)")
	only := flag.String("only", "", "run only the runs whose key matches this regexp (for trying the driver)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("bench: ")

	root, err := repoRoot()
	if err != nil {
		log.Fatal(err)
	}
	if err := os.Chdir(root); err != nil {
		log.Fatal(err)
	}
	began := time.Now()
	machine := machineInfo()

	runs := plan()
	var keep *regexp.Regexp
	if *only != "" {
		keep = regexp.MustCompile(*only)
	}
	for _, r := range runs {
		if keep != nil && !keep.MatchString(r.key) {
			r.missing = "not run (-only)"
			continue
		}
		r.exec()
	}
	machine = append(machine, fmt.Sprintf("load average at the end: %s", loadavg()))

	var md bytes.Buffer
	writeReport(&md, runs, machine, time.Since(began))
	if err := os.WriteFile(*out, md.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s in %s", *out, time.Since(began).Round(time.Second))
}

// plan lists the benchmark runs: this directory's and those of the other
// packages (run when the package and its benchmark exist in the tree).
func plan() []*run {
	m := time.Minute
	return []*run{
		{key: "exec", pkg: "./test/bench", bench: "ExecRoundTrip", benchtime: "400x", timeout: 3 * m},
		{key: "ssh", pkg: "./test/bench", bench: "ExecVsSSH", benchtime: "30x", timeout: 3 * m},
		{key: "supervisor", pkg: "./test/supervisor", bench: "DurableVsDirect", benchtime: "2x", timeout: 4 * m},
		{key: "stream", pkg: "./test/bench", bench: "OutputStream", benchtime: "3x", timeout: 3 * m},
		{key: "files", pkg: "./test/e2e", bench: "FileWrite256MiB|FileRead256MiB", benchtime: "2x", timeout: 3 * m},
		{key: "files-ssh", pkg: "./test/bench", bench: "FileVsSSH", benchtime: "2x", timeout: 3 * m},
		{key: "memory", pkg: "./test/bench", bench: "AgentMemory", benchtime: "1x", timeout: 2 * m},
		{key: "listener", pkg: "./guest-agent/listener", bench: "DetectionLatency", benchtime: "20x", timeout: 3 * m},
		{key: "netfilter", pkg: "./netfilter", bench: "Filter", benchtime: "1x", timeout: 3 * m},
		{key: "freeze", pkg: "./guest-agent/freeze", bench: "FreezeThaw|RawFreezeThaw", benchtime: "20x", timeout: 2 * m},
		{key: "vsock", pkg: "./host-supervisor/vsockbackend", bench: "Stream256MiB", benchtime: "1x", timeout: 2 * m},
		{key: "boot", pkg: "./test/vm", bench: "Boot", benchtime: "1x", timeout: 4 * m},
	}
}

// present returns the benchmark functions of r.bench that exist in r.pkg.
func (r *run) present() []string {
	files, _ := filepath.Glob(filepath.Join(r.pkg, "*_test.go"))
	var found []string
	for _, name := range strings.Split(r.bench, "|") {
		re := regexp.MustCompile(`(?m)^func Benchmark` + regexp.QuoteMeta(name) + `\(b \*testing\.B\)`)
		for _, f := range files {
			src, err := os.ReadFile(f)
			if err == nil && re.Match(src) {
				found = append(found, name)
				break
			}
		}
	}
	return found
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)

func (r *run) exec() {
	r.results = map[string]map[string]float64{}
	if _, err := os.Stat(r.pkg); err != nil {
		r.missing = fmt.Sprintf("package %s does not exist yet", r.pkg)
		return
	}
	names := r.present()
	if len(names) == 0 {
		r.missing = fmt.Sprintf("no Benchmark%s in %s yet", strings.ReplaceAll(r.bench, "|", " / Benchmark"), r.pkg)
		return
	}
	pattern := "^Benchmark(" + strings.Join(names, "|") + ")$"
	args := []string{"test", "-count=1", "-run", "^$", "-bench", pattern, "-benchtime", r.benchtime,
		"-timeout", r.timeout.String(), r.pkg}
	log.Printf("go %s", strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	var buf bytes.Buffer
	cmd.Stdout = io.MultiWriter(&buf, os.Stderr)
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	err := cmd.Run()
	r.took = time.Since(start)
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var failure []string
	for sc.Scan() {
		line := sc.Text()
		if m := benchLine.FindStringSubmatch(line); m != nil {
			r.lines = append(r.lines, line)
			vals := map[string]float64{}
			f := strings.Fields(m[3])
			for i := 0; i+1 < len(f); i += 2 {
				if v, err := strconv.ParseFloat(f[i], 64); err == nil {
					vals[f[i+1]] = v
				}
			}
			r.results[m[1]] = vals
			continue
		}
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "--- FAIL") || strings.HasPrefix(t, "--- SKIP") || strings.Contains(t, "_test.go:") ||
			strings.HasPrefix(t, "panic:") || strings.HasPrefix(t, "FAIL") || strings.Contains(t, "build failed") {
			failure = append(failure, t)
		}
	}
	if err != nil || len(r.results) == 0 {
		msg := strings.Join(failure, "; ")
		if msg == "" && err != nil {
			msg = err.Error()
		}
		if len(msg) > 400 {
			msg = msg[:400] + "…"
		}
		r.err = msg
		if r.err == "" {
			r.err = "no benchmark output"
		}
		r.lines = append(r.lines, failure...)
	}
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the sailbox module")
	}
	return filepath.Dir(mod), nil
}

func machineInfo() []string {
	var info []string
	add := func(f string, a ...any) { info = append(info, fmt.Sprintf(f, a...)) }
	add("date: %s", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				add("cpu: %s × %d (GOMAXPROCS %d)", strings.TrimSpace(v), runtime.NumCPU(), runtime.GOMAXPROCS(0))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		first, _, _ := strings.Cut(string(b), "\n")
		add("memory: %s", strings.Join(strings.Fields(first)[1:], " "))
	}
	if out, err := exec.Command("uname", "-srm").Output(); err == nil {
		add("kernel: %s", strings.TrimSpace(string(out)))
	}
	if b, err := os.ReadFile("/proc/cmdline"); err == nil && strings.Contains(string(b), "firecracker") {
		add("virtualisation: this machine is itself a Firecracker guest (kernel command line), probably nested")
	}
	if out, err := exec.Command("go", "version").Output(); err == nil {
		add("go: %s", strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		add("commit: %s", strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("ssh", "-V").CombinedOutput(); err == nil {
		add("openssh: %s", strings.TrimSpace(string(out)))
	}
	add("user: uid %d", os.Getuid())
	add("load average at the start: %s", loadavg())
	return info
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
