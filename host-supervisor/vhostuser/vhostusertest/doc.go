// Package vhostusertest is a fake vhost-user front end and virtio driver for
// tests: guest memory in a memfd, split virtqueues laid out in it, and the
// vhost-user messages QEMU sends (with fds over SCM_RIGHTS and eventfd kicks
// and calls). It lets device back ends be tested without QEMU.
package vhostusertest
