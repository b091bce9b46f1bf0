package main

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// row is one line of the results table.
type row struct {
	item, figure, sailbox, baseline, ratio, target, met string
}

// table turns the runs' results into rows, one group per item of the
// benchmark issue. A run that did not happen yields a "not yet measured" row
// saying why; nothing is ever filled in by hand.
type table struct {
	runs map[string]*run
	rows []row
}

func (t *table) get(key, bench, unit string) (float64, bool) {
	r := t.runs[key]
	if r == nil || r.results == nil {
		return 0, false
	}
	v, ok := r.results[bench][unit]
	return v, ok
}

// absent adds a row for a run that produced nothing and reports whether it did.
func (t *table) absent(item, figure, key, target string) bool {
	r := t.runs[key]
	switch {
	case r == nil:
		return false
	case r.missing != "":
		t.rows = append(t.rows, row{item, figure, "not yet measured", "—", "—", target, "— (" + r.missing + ")"})
		return true
	case len(r.results) == 0:
		t.rows = append(t.rows, row{item, figure, "not measured", "—", "—", target, "— (run failed: " + r.err + ")"})
		return true
	}
	return false
}

func (t *table) add(r row) { t.rows = append(t.rows, r) }

func yesNo(ok bool) string {
	if ok {
		return "**yes**"
	}
	return "**no**"
}

func us(v float64) string {
	if v >= 10000 {
		return fmt.Sprintf("%.1f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}

func (t *table) build() {
	t.exec()
	t.ssh()
	t.supervisor()
	t.stream()
	t.files()
	t.memory()
	t.listener()
	t.netfilter()
	t.freeze()
	t.boot()
	t.vsock()
}

func (t *table) exec() {
	const target = "≤ 1.3×"
	if t.absent("1", "exec round trip", "exec", target) {
		return
	}
	for _, c := range []struct{ sub, figure, base string }{
		{"argv", "exec round trip of `/bin/true` (start, wait, status back) through the agent over a unix socket", "local fork+exec+wait of `/bin/true` in the benchmark process"},
		{"shell", "the same as a shell command `true` (`/bin/sh -c true`, the CLI's form)", "local `/bin/sh -c true`"},
	} {
		name := "BenchmarkExecRoundTrip/" + c.sub
		a, ok1 := t.get("exec", name, "agent-us")
		l, ok2 := t.get("exec", name, "local-us")
		x, ok3 := t.get("exec", name, "x-local")
		if !ok1 || !ok2 || !ok3 {
			t.add(row{"1", c.figure, "not measured", "—", "—", target, "— (no result)"})
			continue
		}
		t.add(row{"1", c.figure, us(a) + " median", c.base + ": " + us(l), fmt.Sprintf("%.2f×", x), target, yesNo(x <= 1.3)})
	}
}

func (t *table) ssh() {
	const target = "≥ 10× faster than ControlMaster"
	if t.absent("2", "exec round trip vs OpenSSH", "ssh", target) {
		return
	}
	for _, c := range []struct{ sub, label, target string }{
		{"controlmaster", "ssh with ControlMaster (multiplexed)", target},
		{"newconn", "ssh, new connection per command", "—"},
	} {
		name := "BenchmarkExecVsSSH/" + c.sub
		a, ok1 := t.get("ssh", name, "agent-us")
		s, ok2 := t.get("ssh", name, "ssh-us")
		x, ok3 := t.get("ssh", name, "x-faster")
		cli, ok4 := t.get("ssh", name, "cli-us")
		cx, ok5 := t.get("ssh", name, "cli-x-faster")
		if !ok1 || !ok2 || !ok3 {
			t.add(row{"2", "`true` through the agent vs " + c.label, "not measured", "—", "—", c.target, "— (no result)"})
			continue
		}
		met := "—"
		if c.target != "—" {
			met = yesNo(x >= 10)
		}
		t.add(row{"2", "`true` through the agent (client library) vs " + c.label, us(a), c.label + ": " + us(s), fmt.Sprintf("%.1f× faster", x), c.target, met})
		if ok4 && ok5 {
			met := "—"
			if c.target != "—" {
				met = yesNo(cx >= 10) + " (informational: a process per command, like ssh)"
			}
			t.add(row{"2", "`host-supervisor exec -- true` (a CLI process per command) vs " + c.label, us(cli), c.label + ": " + us(s), fmt.Sprintf("%.1f× faster", cx), c.target, met})
		}
	}
}

func (t *table) supervisor() {
	const target = "≥ 0.7×"
	if t.absent("3", "durable supervisor execs/s", "supervisor", target) {
		return
	}
	const name = "BenchmarkDurableVsDirect"
	d, ok1 := t.get("supervisor", name, "durable-execs/s")
	a, ok2 := t.get("supervisor", name, "direct-execs/s")
	if !ok1 || !ok2 {
		t.generic("3", "durable supervisor execs/s", "supervisor", target, 0, true)
		return
	}
	t.add(row{"3", "execs/s (`echo hi`, 32 concurrent) through the durable supervisor (journalled, fsynced, output stored)",
		fmt.Sprintf("%.0f execs/s", d), fmt.Sprintf("direct to the agent: %.0f execs/s", a), fmt.Sprintf("%.2f×", d/a), target, yesNo(d/a >= 0.7)})
}

func (t *table) files() {
	const target = "≥ 0.4× raw"
	if !t.absent("5", "file write/read 256 MiB", "files", target) {
		for _, c := range []struct{ bench, what string }{
			{"BenchmarkFileWrite256MiB", "file write of 256 MiB through the agent (streamed chunks, temp file, fsync, rename)"},
			{"BenchmarkFileRead256MiB", "file read of 256 MiB through the agent"},
		} {
			a, ok1 := t.get("files", c.bench, "agent-MB/s")
			r, ok2 := t.get("files", c.bench, "raw-MB/s")
			if !ok1 || !ok2 {
				t.add(row{"5", c.what, "not measured", "—", "—", target, "— (no result)"})
				continue
			}
			t.add(row{"5", c.what, fmt.Sprintf("%.0f MB/s", a), fmt.Sprintf("raw unix socket doing the same file work: %.0f MB/s", r), fmt.Sprintf("%.2f×", a/r), target, yesNo(a/r >= 0.4)})
		}
	}
	const sshTarget = "≥ 3× ssh"
	if t.absent("5", "file write/read 256 MiB vs ssh", "files-ssh", sshTarget) {
		return
	}
	for _, c := range []struct{ sub, what, base string }{
		{"write", "file write of 256 MiB through the agent (client library WriteFile)", "`cat FILE | ssh root@127.0.0.1 'cat > PATH'`"},
		{"read", "file read of 256 MiB through the agent (client library ReadFile)", "`ssh root@127.0.0.1 'cat PATH' > /dev/null`"},
	} {
		name := "BenchmarkFileVsSSH/" + c.sub
		a, ok1 := t.get("files-ssh", name, "agent-MB/s")
		s, ok2 := t.get("files-ssh", name, "ssh-MB/s")
		if !ok1 || !ok2 {
			t.add(row{"5", c.what, "not measured", "—", "—", sshTarget, "— (no result)"})
			continue
		}
		t.add(row{"5", c.what, fmt.Sprintf("%.0f MB/s", a), fmt.Sprintf("%s: %.0f MB/s", c.base, s), fmt.Sprintf("%.1f×", a/s), sshTarget, yesNo(a/s >= 3)})
	}
}

func (t *table) stream() {
	const target = "≥ 0.4×"
	if t.absent("4", "output streaming", "stream", target) {
		return
	}
	a, ok1 := t.get("stream", "BenchmarkOutputStream", "agent-MB/s")
	r, ok2 := t.get("stream", "BenchmarkOutputStream", "raw-MB/s")
	x, ok3 := t.get("stream", "BenchmarkOutputStream", "x-raw")
	if !ok1 || !ok2 || !ok3 {
		t.add(row{"4", "output streaming", "not measured", "—", "—", target, "— (no result)"})
		return
	}
	t.add(row{"4", "output streaming: `head -c 1G /dev/zero` in the agent, stdout to the client (io.Discard)",
		fmt.Sprintf("%.0f MB/s", a), fmt.Sprintf("raw unix-socket copy between two processes (1 MiB writes): %.0f MB/s", r), fmt.Sprintf("%.2f×", x), target, yesNo(x >= 0.4)})
	p, ok4 := t.get("stream", "BenchmarkOutputStream", "pipe-MB/s")
	xp, ok5 := t.get("stream", "BenchmarkOutputStream", "x-pipe")
	if ok4 && ok5 {
		t.add(row{"4", "the same against the producer's own floor", fmt.Sprintf("%.0f MB/s", a),
			fmt.Sprintf("the same `head` locally, its stdout on a 1 MiB pipe read into io.Discard: %.0f MB/s", p), fmt.Sprintf("%.2f×", xp), "—", "—"})
	}
}

func (t *table) memory() {
	if !t.absent("6", "agent memory", "memory", "idle ≤ 10 MiB") {
		idle, ok1 := t.get("memory", "BenchmarkAgentMemory", "idle-MiB")
		busy, ok2 := t.get("memory", "BenchmarkAgentMemory", "busy-MiB")
		hwm, ok3 := t.get("memory", "BenchmarkAgentMemory", "hwm-MiB")
		if ok1 {
			t.add(row{"6", "agent RSS, idle (VmRSS)", fmt.Sprintf("%.1f MiB", idle), "— (absolute)", fmt.Sprintf("%.2f× of target", idle/10), "≤ 10 MiB", yesNo(idle <= 10)})
		}
		if ok2 && ok3 {
			t.add(row{"6", "agent RSS with 1,000 concurrent `sleep 1` execs (VmRSS while running / VmHWM peak)",
				fmt.Sprintf("%.1f / %.1f MiB", busy, hwm), fmt.Sprintf("idle: %.1f MiB", idle), fmt.Sprintf("%.1f KiB per exec", (hwm-idle)*1024/concurrentExecs), "—", "—"})
		}
	}
	const bin = "bin/linux-arm64/guest-agent"
	fi, err := os.Stat(bin)
	if err != nil {
		t.add(row{"6", "static arm64 guest-agent binary size", "not measured", "—", "—", "≤ 15 MiB", "— (" + bin + " not built: run make build)"})
		return
	}
	mib := float64(fi.Size()) / (1 << 20)
	t.add(row{"6", "static arm64 guest-agent binary size (`" + bin + "`, -ldflags '-s -w')", fmt.Sprintf("%.1f MiB", mib), "— (absolute)", fmt.Sprintf("%.2f× of target", mib/15), "≤ 15 MiB", yesNo(mib <= 15)})
}

func (t *table) listener() {
	const target = "≤ 20 ms median"
	if t.absent("7", "listener detection latency", "listener", target) {
		return
	}
	sd, ok1 := t.get("listener", "BenchmarkDetectionLatency/sock_diag", "ns/op")
	p90, _ := t.get("listener", "BenchmarkDetectionLatency/sock_diag", "p90-ns/op")
	poll, ok2 := t.get("listener", "BenchmarkDetectionLatency/poll1s", "ns/op")
	if !ok1 {
		t.add(row{"7", "listener detection latency", "not measured", "—", "—", target, "— (no result)"})
		return
	}
	base, ratio := "—", "—"
	if ok2 {
		base = fmt.Sprintf("a 1 s poll (peers' approach): %.0f ms median", poll/1e6)
		ratio = fmt.Sprintf("%.0f× faster", poll/sd)
	}
	t.add(row{"7", "listener detection latency after listen() (sock_diag, adaptive poll)", fmt.Sprintf("%.1f ms median (p90 %.1f ms)", sd/1e6, p90/1e6), base, ratio, target, yesNo(sd <= 20e6)})
}

func (t *table) netfilter() {
	if t.absent("8", "eBPF per-packet cost", "netfilter", "≤ 100 ns at 1,000 prefixes; open port ≤ 2× parse-only") {
		return
	}
	frames := []string{"v4-allowed", "v4-denied", "v4-open-port", "v6-allowed", "v6-denied"}
	for _, n := range []int{0, 10, 1000, 100000} {
		worst, worstParse, worstX, worstFrame := 0.0, 0.0, 0.0, ""
		for _, f := range frames {
			name := fmt.Sprintf("BenchmarkFilter/prefixes=%d/%s", n, f)
			ns, ok := t.get("netfilter", name, "ns/pkt")
			if !ok {
				continue
			}
			if ns >= worst {
				worst, worstFrame = ns, f
				worstParse, _ = t.get("netfilter", name, "parse-ns/pkt")
				worstX, _ = t.get("netfilter", name, "x-parse")
			}
		}
		if worstFrame == "" {
			continue
		}
		target, met := "—", "—"
		if n == 1000 {
			target, met = "≤ 100 ns", yesNo(worst <= 100)
		}
		t.add(row{"8", fmt.Sprintf("eBPF filter per packet, %d prefixes (slowest of 5 frames: %s)", n, worstFrame),
			fmt.Sprintf("%.0f ns", worst), fmt.Sprintf("parse-only program: %.0f ns", worstParse), fmt.Sprintf("%.2f×", worstX), target, met})
	}
	worstX, at := 0.0, ""
	for _, n := range []int{0, 10, 1000, 100000} {
		if x, ok := t.get("netfilter", fmt.Sprintf("BenchmarkFilter/prefixes=%d/v4-open-port", n), "x-parse"); ok && x >= worstX {
			worstX, at = x, fmt.Sprint(n)
		}
	}
	if at != "" {
		t.add(row{"8", "eBPF filter, packet to an open port (no allowlist), worst over 0–100,000 prefixes (at " + at + ")",
			"—", "parse-only program", fmt.Sprintf("%.2f×", worstX), "≤ 2×", yesNo(worstX <= 2)})
	}
}

func (t *table) freeze() {
	const target = "≤ 50 ms"
	if t.absent("9", "freeze+thaw", "freeze", target) {
		return
	}
	f, ok1 := t.get("freeze", "BenchmarkFreezeThaw", "ns/op")
	r, ok2 := t.get("freeze", "BenchmarkRawFreezeThaw", "ns/op")
	if !ok1 {
		t.add(row{"9", "freeze+thaw", "not measured", "—", "—", target, "— (no result)"})
		return
	}
	base, ratio := "—", "—"
	if ok2 {
		base = fmt.Sprintf("raw syncfs+FIFREEZE+FITHAW: %.2f ms", r/1e6)
		ratio = fmt.Sprintf("%.2f×", f/r)
	}
	t.add(row{"9", "freeze+thaw of an idle ext4 filesystem (guest-agent/freeze)", fmt.Sprintf("%.2f ms", f/1e6), base, ratio, target, yesNo(f <= 50e6)})
}

func (t *table) boot() {
	const target = "first exec ≤ 4 s"
	if t.absent("9", "VM boot to first exec", "boot", target) {
		return
	}
	first, ok1 := t.get("boot", "BenchmarkBoot", "first-exec-s")
	bare, ok2 := t.get("boot", "BenchmarkBoot", "bare-init-s")
	if !ok1 || !ok2 {
		t.add(row{"9", "VM boot to first exec", "not measured", "—", "—", target, "— (no result)"})
		return
	}
	t.add(row{"9", "arm64 VM (QEMU TCG) boot to the first exec's result", fmt.Sprintf("%.2f s", first), fmt.Sprintf("bare-init boot: %.2f s", bare), fmt.Sprintf("%.2f×", first/bare), target, yesNo(first <= 4)})
}

func (t *table) vsock() {
	const target = "≥ 1 GB/s"
	if t.absent("9", "vhost-user-vsock stream", "vsock", target) {
		return
	}
	for _, sub := range []string{"host-to-guest-rx64k", "host-to-guest-rx4k"} {
		name := "BenchmarkStream256MiB/" + sub
		v, ok1 := t.get("vsock", name, "MB/s")
		b, ok2 := t.get("vsock", name, "baseline-MB/s")
		if !ok1 || !ok2 {
			continue
		}
		t.add(row{"9", "vhost-user-vsock back end, one 256 MiB stream host → guest (" + sub + ")", fmt.Sprintf("%.0f MB/s", v), fmt.Sprintf("unix-socket copy: %.0f MB/s", b), fmt.Sprintf("%.2f×", v/b), target, yesNo(v >= 1000)})
	}
}

// generic reports the benchmarks of a run whose metrics this driver does
// not know by name: every metric, and the ratio where one is reported
// (a unit starting with "x-", or "ratio").
func (t *table) generic(item, figure, key, target string, min float64, higherBetter bool) {
	if t.absent(item, figure, key, target) {
		return
	}
	r := t.runs[key]
	names := make([]string, 0, len(r.results))
	for n := range r.results {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		vals := r.results[n]
		units := make([]string, 0, len(vals))
		for u := range vals {
			units = append(units, u)
		}
		sort.Strings(units)
		var parts []string
		ratio, met := "—", "— (see the metrics)"
		for _, u := range units {
			parts = append(parts, fmt.Sprintf("%.4g %s", vals[u], u))
			if strings.HasPrefix(u, "x-") || u == "ratio" {
				ratio = fmt.Sprintf("%.2f× (%s)", vals[u], u)
				if min > 0 {
					met = yesNo((vals[u] >= min) == higherBetter)
				}
			}
		}
		t.add(row{item, figure + ": " + strings.TrimPrefix(n, "Benchmark"), strings.Join(parts, ", "), "in the metrics", ratio, target, met})
	}
}

func writeReport(w *bytes.Buffer, runs []*run, machine []string, took time.Duration) {
	t := &table{runs: map[string]*run{}}
	for _, r := range runs {
		t.runs[r.key] = r
	}
	t.build()

	fmt.Fprintf(w, "# sailbox benchmarks\n\n")
	fmt.Fprintf(w, "Generated by `make bench` (`go run ./test/bench`) in %s. Do not edit: rerun it.\n\n", took.Round(time.Second))
	fmt.Fprintf(w, "Every figure stands beside a baseline measured in the same run, mostly interleaved with it\n")
	fmt.Fprintf(w, "iteration by iteration, because the machine is shared and noisy: the **ratio** is the figure that\n")
	fmt.Fprintf(w, "counts, absolute numbers move with the load. Latencies are medians, throughputs the best of the\n")
	fmt.Fprintf(w, "iterations. Items are those of the benchmark issue; an item whose package or benchmark is not in\n")
	fmt.Fprintf(w, "the tree yet is listed as not yet measured.\n\n")
	fmt.Fprintf(w, "## Machine\n\n")
	for _, m := range machine {
		fmt.Fprintf(w, "- %s\n", m)
	}
	fmt.Fprintf(w, "\n## Results\n\n")
	fmt.Fprintf(w, "| # | figure | sailbox | baseline (same run) | ratio | target | met? |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|\n")
	esc := func(s string) string { return strings.ReplaceAll(s, "|", "\\|") }
	for _, r := range t.rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.item, esc(r.figure), esc(r.sailbox), esc(r.baseline), esc(r.ratio), esc(r.target), esc(r.met))
	}
	fmt.Fprintf(w, "\n## How each figure is measured\n\n")
	for _, h := range howto {
		fmt.Fprintf(w, "- %s\n", h)
	}
	fmt.Fprintf(w, "\n## Raw benchmark output\n\n")
	for _, r := range runs {
		fmt.Fprintf(w, "### %s (`%s`, Benchmark%s)\n\n", r.key, r.pkg, strings.ReplaceAll(r.bench, "|", ", Benchmark"))
		switch {
		case r.missing != "":
			fmt.Fprintf(w, "not run: %s\n\n", r.missing)
			continue
		case r.err != "":
			fmt.Fprintf(w, "failed after %s: %s\n\n", r.took.Round(time.Second), r.err)
		}
		if len(r.lines) > 0 {
			fmt.Fprintf(w, "```\n$ go test -run '^$' -bench ... -benchtime %s %s   # %s\n%s\n```\n\n", r.benchtime, r.pkg, r.took.Round(time.Second), strings.Join(r.lines, "\n"))
		}
	}
}

var howto = []string{
	"**1** `test/bench` BenchmarkExecRoundTrip: the real `guest-agent` binary on a unix socket (spools on tmpfs, as /run in the guest), the client library's `Run`: one request on a data connection (protocol/agentdata) starts the exec and returns its output and final status; baseline `exec.Command(...).Run()` in the benchmark process; the two alternate, 400 each.",
	"**2** BenchmarkExecVsSSH: Debian OpenSSH `sshd -D` started by the benchmark in a private mount namespace (tmpfs /run for /run/sshd) with a throwaway ed25519 host key, one authorized throwaway client key, key-only root login, HOME set to an empty dir so no rc file of the machine runs; `ssh -p PORT -i KEY ... root@127.0.0.1 true` with a new connection each time, and through a ControlMaster socket. Agent, CLI and ssh alternate.",
	"**4** BenchmarkOutputStream: `head -c 1073741824 /dev/zero` through the agent (output cap raised to 1 GiB, so all of it is also spooled on tmpfs; sent by sendfile over the data connection) into io.Discard; baseline: a second process writes 1 GiB into a unix socket in 1 MiB writes and this one reads it into io.Discard. Alternating, best of 3 each.",
	"**6** BenchmarkAgentMemory: /proc/PID/status of the agent process: VmRSS after a Ping and 1 s of quiet; VmRSS right after 1,000 concurrent Start(`sleep 1`) returned, and VmHWM after they all finished. Binary size: the file `make build` wrote.",
	"**3, 5, 7, 8, 9** are the benchmarks of the packages named in the raw output below, run with `go test -bench` as they are in the tree; their baselines are measured inside those benchmarks (parse-only BPF program, raw FIFREEZE, 1 s poll, bare-init boot, unix-socket copy).",
}
