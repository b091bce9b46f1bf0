// Package lifecycletest tests the snapshot lifecycle orchestration
// (host-supervisor/lifecycle) without a VM: a real guest-agent process (in
// its own UTS and network namespaces, without CAP_SYS_TIME, so a resume can
// never change this machine's hostname, connections or clock), a VMM fake
// that records its calls and can reset every agent connection the way a
// real snapshot does, and a journal fake with exec records.
package lifecycletest
