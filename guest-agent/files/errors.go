package files

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// CheckPath validates a path from a request: non-empty, no NUL byte,
// absolute. It returns the cleaned path.
func CheckPath(p string) (string, error) {
	switch {
	case p == "":
		return "", status.Error(codes.InvalidArgument, "empty path")
	case strings.IndexByte(p, 0) >= 0:
		return "", status.Errorf(codes.InvalidArgument, "path %q contains a NUL byte", p)
	case !filepath.IsAbs(p):
		return "", status.Errorf(codes.InvalidArgument, "path %q is not absolute", p)
	}
	return filepath.Clean(p), nil
}

// statusErr maps an OS error about path to a gRPC status error.
func statusErr(op, path string, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return status.Errorf(codes.Internal, "%s %s: %v", op, path, err)
	}
	msg := fmt.Sprintf("%s %s: %v", op, path, errno)
	switch errno {
	case syscall.ENOENT:
		return status.Error(codes.NotFound, msg)
	case syscall.EACCES, syscall.EPERM:
		return status.Error(codes.PermissionDenied, msg)
	case syscall.ENOSPC, syscall.EDQUOT:
		return status.Error(codes.ResourceExhausted, msg)
	case syscall.ENOTDIR:
		return status.Errorf(codes.FailedPrecondition, "%s %s: a parent is not a directory", op, path)
	case syscall.EISDIR, syscall.EROFS, syscall.ELOOP, syscall.ETXTBSY, syscall.EEXIST, syscall.ENOTEMPTY, syscall.EXDEV:
		return status.Error(codes.FailedPrecondition, msg)
	case syscall.ENAMETOOLONG, syscall.EINVAL:
		return status.Error(codes.InvalidArgument, msg)
	}
	return status.Error(codes.Internal, msg)
}

// errno extracts the errno of err, or 0.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return errnoOf(pe.Err)
	}
	return 0
}
