// Package files implements the guest agent's file operations as plain Go:
// an atomic streamed write (a temp file in the target's directory, fsync,
// rename, fsync of the directory), a read of regular files only that never
// blocks on a FIFO, and stat. Errors are gRPC status errors naming the path.
//
// A path whose parent is a regular file is FailedPrecondition (the request
// is well-formed; the file system is not in the state it needs), like every
// other "wrong kind of file" answer here.
package files
