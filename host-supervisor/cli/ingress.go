package cli

import (
	"context"
	"flag"
	"fmt"

	"github.com/sailbox/sailbox/host-supervisor/ingress"
	"github.com/sailbox/sailbox/netfilter"
)

func init() {
	register(&command{
		name:    "ingress",
		usage:   "set|list|clear --device DEV [--max-raw-tcp N] [PORT[/http|/tcp][:public][=CIDR,...]]...",
		summary: "validate a sandbox's ingress ports and program the eBPF allowlist on its host device",
		run:     runIngress,
	})
}

func runIngress(ctx context.Context, stdio Stdio, args []string) int {
	if len(args) == 0 {
		return fail(stdio, invalid("ingress: want set, list or clear"))
	}
	verb := args[0]
	fs := flag.NewFlagSet("ingress "+verb, flag.ContinueOnError)
	dev := fs.String("device", "", "host-side device of the sandbox (its tap, or a veth)")
	maxRaw := fs.Int("max-raw-tcp", 0, "the organisation's raw-TCP endpoint limit (0: the default, 32)")
	inUse := fs.Int("raw-tcp-in-use", 0, "raw-TCP endpoints the organisation holds elsewhere")
	pos, err := parseFlags(fs, args[1:])
	if err != nil {
		return fail(stdio, err)
	}
	if *dev == "" {
		return fail(stdio, invalid("ingress %s: --device is required", verb))
	}
	switch verb {
	case "set":
		ports, err := ingress.ParseSpec(pos)
		if err != nil {
			return fail(stdio, err)
		}
		pol, err := ingress.Policy(ports, ingress.Limits{MaxRawTCP: *maxRaw, RawTCPInUse: *inUse})
		if err != nil {
			return fail(stdio, err)
		}
		if err := netfilter.Apply(*dev, pol); err != nil {
			return fail(stdio, err)
		}
		fmt.Fprintf(stdio.Out, "ingress on %s: %d port(s), %d policed\n", *dev, len(ports), len(pol))
	case "list":
		if len(pos) > 0 {
			return fail(stdio, invalid("ingress list takes no ports"))
		}
		st, err := netfilter.List(*dev)
		if err != nil {
			return fail(stdio, err)
		}
		fmt.Fprintf(stdio.Out, "device %s (%s), %d packets dropped\n", st.Device, st.Mode, st.Drops)
		fmt.Fprint(stdio.Out, st.Policy.String())
	case "clear":
		if len(pos) > 0 {
			return fail(stdio, invalid("ingress clear takes no ports"))
		}
		if err := netfilter.Detach(*dev); err != nil {
			return fail(stdio, err)
		}
	default:
		return fail(stdio, invalid("ingress: unknown verb %q (want set, list or clear)", verb))
	}
	return 0
}
