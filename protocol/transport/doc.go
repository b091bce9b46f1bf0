// Package transport turns sailbox agent addresses into connections.
//
// Three schemes are understood:
//
//	vsock://CID:PORT        AF_VSOCK (QEMU vhost-vsock); vsock://:PORT to listen
//	hvsock:///path.sock:PORT hybrid vsock (Firecracker, Cloud Hypervisor, sailbox's
//	                        vhost-user backend): connect to the unix socket, write
//	                        "CONNECT PORT\n", expect a line starting "OK "
//	unix:///path            a local agent on a unix socket
//
// Both sides share it: the guest agent listens, the host supervisor dials.
package transport
