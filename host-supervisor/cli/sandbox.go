package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/execstore"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
)

func init() {
	register(&command{
		name: "sandbox",
		usage: "add --id ID --agent ADDR [--qmp SOCK] [--label K=V]... | list | rm --id ID | checkpointed --id ID --generation G |\n" +
			"                   restore --id ID --generation G | execs [--id ID]   (all with --supervisor unix:///path)",
		summary: "register, list and remove the supervisor's sandboxes; record checkpoints and restores; list the exec journal",
		run:     runSandbox,
	})
}

type sandboxFlags struct {
	supervisor string
	id         string
	labels     stringList
	generation uint64
	qmp        string
}

func runSandbox(ctx context.Context, stdio Stdio, args []string) int {
	if len(args) == 0 {
		return fail(stdio, invalid("sandbox: want a subcommand: add, list, rm, checkpointed, restore or execs"))
	}
	sub := args[0]
	var f sandboxFlags
	var t target
	fs := flag.NewFlagSet("sandbox "+sub, flag.ContinueOnError)
	t.register(fs)
	fs.StringVar(&f.id, "id", "", "sandbox id")
	fs.Var(&f.labels, "label", "KEY=VALUE label (repeatable)")
	fs.Uint64Var(&f.generation, "generation", 0, "checkpoint generation")
	fs.StringVar(&f.qmp, "qmp", "", "add: the VM's QMP unix socket; the daemon holds the monitor and serves checkpoint, restore, fork, pause, sleep and resume")
	pos, err := parseFlags(fs, args[1:])
	if err != nil {
		return fail(stdio, err)
	}
	if len(pos) > 0 {
		return fail(stdio, invalid("sandbox %s: unexpected arguments %q", sub, pos))
	}
	if f.id == "" {
		f.id = t.sandbox
	}
	if t.supervisor == "" {
		return fail(stdio, invalid("sandbox %s: give --supervisor unix:///path", sub))
	}
	sc, err := newSupervisorClient(t.supervisor)
	if err != nil {
		return fail(stdio, err)
	}
	defer sc.Close()
	needID := func() error {
		if f.id == "" {
			return invalid("sandbox %s: give --id ID", sub)
		}
		return nil
	}
	switch sub {
	case "add":
		if err := needID(); err != nil {
			return fail(stdio, err)
		}
		if t.agent == "" {
			return fail(stdio, invalid("sandbox add: give --agent ADDR"))
		}
		labels := map[string]string{}
		for _, kv := range f.labels {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return fail(stdio, invalid("sandbox add: --label %q: want KEY=VALUE", kv))
			}
			labels[k] = v
		}
		var sb *supervisorv1.Sandbox
		err = sc.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
			sb, err = api.AddSandbox(ctx, &supervisorv1.AddSandboxRequest{Id: f.id, Agent: t.agent, Labels: labels, Qmp: strings.TrimPrefix(f.qmp, "unix://")})
			return err
		})
		if err == nil {
			printSandboxes(stdio.Out, []*supervisorv1.Sandbox{sb})
		}
	case "list", "ls":
		var resp *supervisorv1.ListSandboxesResponse
		err = sc.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
			resp, err = api.ListSandboxes(ctx, &supervisorv1.ListSandboxesRequest{})
			return err
		})
		if err == nil {
			printSandboxes(stdio.Out, resp.Sandboxes)
		}
	case "rm", "remove":
		if err := needID(); err != nil {
			return fail(stdio, err)
		}
		err = sc.call(ctx, func(api supervisorv1.SupervisorClient) error {
			_, err := api.RemoveSandbox(ctx, &supervisorv1.SandboxRef{Id: f.id})
			return err
		})
	case "checkpointed":
		if err := needID(); err != nil {
			return fail(stdio, err)
		}
		var sb *supervisorv1.Sandbox
		err = sc.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
			sb, err = api.Checkpointed(ctx, &supervisorv1.GenerationRequest{Sandbox: f.id, Generation: f.generation})
			return err
		})
		if err == nil {
			printSandboxes(stdio.Out, []*supervisorv1.Sandbox{sb})
		}
	case "restore":
		if err := needID(); err != nil {
			return fail(stdio, err)
		}
		var resp *supervisorv1.RestoreGenerationResponse
		err = sc.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
			resp, err = api.RestoreGeneration(ctx, &supervisorv1.GenerationRequest{Sandbox: f.id, Generation: f.generation})
			return err
		})
		if err == nil {
			for _, id := range resp.Lost {
				fmt.Fprintf(stdio.Out, "lost %s\n", id)
			}
		}
	case "execs":
		var recs []*supervisorv1.ExecRecord
		if recs, err = sc.listExecs(ctx, f.id); err == nil {
			printRecords(stdio.Out, recs)
		}
	default:
		return fail(stdio, invalid("sandbox: unknown subcommand %q (want add, list, rm, checkpointed, restore or execs)", sub))
	}
	if err != nil {
		return fail(stdio, err)
	}
	return 0
}

func printSandboxes(w io.Writer, sbs []*supervisorv1.Sandbox) {
	fmt.Fprintf(w, "%-20s %-10s %4s %-40s %-8s %s\n", "ID", "AGENT", "GEN", "ADDRESS", "VM", "LABELS")
	for _, sb := range sbs {
		state := "down"
		if sb.Connected {
			state = "up"
		}
		var labels []string
		for k, v := range sb.Labels {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		vm := sb.State // empty: no VMM attached
		if vm == "" {
			vm = "-"
		}
		fmt.Fprintf(w, "%-20s %-10s %4d %-40s %-8s %s\n", sb.Id, state, sb.Generation, sb.Agent, vm, strings.Join(labels, ","))
	}
}

func printRecords(w io.Writer, recs []*supervisorv1.ExecRecord) {
	fmt.Fprintf(w, "%-28s %-12s %-10s %6s %4s %-8s %s\n", "ID", "SANDBOX", "STATE", "EXIT", "GEN", "AGE", "COMMAND / REASON")
	for _, r := range recs {
		exit := "-"
		switch {
		case r.State == supervisorv1.ExecState_EXEC_STATE_EXITED && r.Signal > 0:
			exit = fmt.Sprintf("sig%d", r.Signal)
		case r.State == supervisorv1.ExecState_EXEC_STATE_EXITED:
			exit = fmt.Sprint(r.ExitCode)
		}
		what := r.GetRequest().GetCommand()
		if what == "" {
			what = strings.Join(r.GetRequest().GetArgv(), " ")
		}
		if r.Reason != "" {
			what += "  (" + r.Reason + ")"
		}
		age := time.Since(time.Unix(0, r.AcceptedUnixNano)).Round(time.Second)
		fmt.Fprintf(w, "%-28s %-12s %-10s %6s %4d %-8s %s\n", r.Id, r.Sandbox, execstore.StateName(r.State), exit, r.Generation, age, what)
	}
}
