// Package pyfunc runs serialized Python function calls: a pickled
// (callable, args, kwargs) goes to an embedded stdlib-only runner script on
// the image's python3, which unpickles it with the standard pickle module
// (so a payload made with cloudpickle works where the image has
// cloudpickle), calls it, and writes the pickled result or the exception
// (type, message, traceback) to fd 3; the function's prints come back
// separately as stdout and stderr.
//
// The child is started through the agent's reaper (never waited for
// directly) in its own process group, which a timeout kills as a whole.
package pyfunc
