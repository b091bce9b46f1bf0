// Package files implements the guest agent's file operations as plain Go:
// an atomic streamed write, a read of regular files only that never blocks
// on a FIFO, and stat. Errors are gRPC status errors naming the path.
//
// A write goes to a temp file in the target's directory, unnamed
// (O_TMPFILE) where the filesystem supports it so that a crash of the agent
// or the VM mid-transfer leaves nothing behind; at commit it is chowned,
// chmodded (exactly: umask does not apply), fsynced, linked to a temp name,
// renamed over the target, and the directory is fsynced. Filesystems
// without O_TMPFILE get a named temp file from the start, removed on abort.
//
// A path whose parent is a regular file is FailedPrecondition (the request
// is well-formed; the file system is not in the state it needs), like every
// other "wrong kind of file" answer here.
package files
