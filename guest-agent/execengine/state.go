package execengine

import "fmt"

// State is an exec's lifecycle state. The only moves are
// running → exited and running → timed_out; both end states are final.
type State int

const (
	StateRunning State = iota + 1
	StateExited
	StateTimedOut
)

func (s State) String() string {
	switch s {
	case StateRunning:
		return "running"
	case StateExited:
		return "exited"
	case StateTimedOut:
		return "timed_out"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Final reports whether no further transition is possible.
func (s State) Final() bool { return s == StateExited || s == StateTimedOut }

// transition returns an error for an illegal move.
func (s State) transition(to State) error {
	if s == StateRunning && to.Final() {
		return nil
	}
	return fmt.Errorf("illegal exec state transition %s → %s", s, to)
}
