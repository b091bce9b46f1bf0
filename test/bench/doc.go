// Command bench is `make bench`: it runs sailbox's Go benchmarks (the ones in
// this directory and those next to the code of other packages), each beside
// a baseline measured in the same run, and writes BENCHMARKS.md at the
// repository root with every figure as a ratio to its baseline, the
// project's target, and whether it was met, plus what machine ran it.
//
// The benchmarks in this directory measure the agent as a whole process:
// exec round trip vs a local fork+exec+wait and vs OpenSSH, output streaming
// vs a raw unix-socket copy between two processes, and the agent's memory.
//
//	go run ./test/bench                   # everything, writes BENCHMARKS.md
//	go test -run '^$' -bench . ./test/bench   # just this directory's benchmarks
package main
