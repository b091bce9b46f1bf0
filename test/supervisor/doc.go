// Package supervisor holds the reliability tests of the durable supervisor
// daemon, run as the real host-supervisor binary against real guest-agent
// processes: kill -9 of the daemon in the middle of 300 execs, kill -9 of
// the agent, hostile fake agents, and the durable-vs-direct benchmark.
package supervisor
