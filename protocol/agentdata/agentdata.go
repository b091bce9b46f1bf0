// Package agentdata is the wire format of the agent's data connections: exec
// output and file reads moved raw beside ttrpc, which copies every payload
// several times and caps a stream far below the socket. The agent sends
// output from its spool, and files, with sendfile.
//
// A data connection starts with Magic from the client, which the agent
// echoes (an agent without data connections does not: the client then uses
// ttrpc). Then, one after the other, requests and their frames:
//
//	request: u32 length (big endian) + a marshaled agentv1.DataRequest
//	frame:   u8 kind + u64 offset + u32 length (big endian) + payload
//
// FrameStdout and FrameStderr carry output at offset. A request ends with
// FrameFinal (follow: the marshaled final agentv1.ExecStatus), FrameEnd (no
// follow: the current end was reached) or FrameError (a marshaled
// google.rpc.Status). The connection can then carry the next request. The
// semantics of an output request are those of the Exec service's Output.
//
// A file read (the semantics of Files.Read) answers FrameFileInfo (the
// marshaled agentv1.FileInfo), then FrameFile frames of the file's bytes at
// their offset, then FrameEnd, or FrameError at any point.
package agentdata

// Magic opens a data connection. Every ttrpc message starts with a 10-byte
// header, so the agent can tell the two apart by a connection's first bytes.
const Magic = "SBXDAT2\n"

// Frame kinds.
const (
	FrameStdout byte = 1
	FrameStderr byte = 2
	FrameFinal  byte = 3
	FrameEnd    byte = 4
	FrameError  byte = 5
	// File reads.
	FrameFileInfo byte = 6
	FrameFile     byte = 7
)

// HeaderLen is the size of a frame header.
const HeaderLen = 13

// MaxRequest bounds a request's length.
const MaxRequest = 1 << 20
