// Package service is the guest agent's thin ttrpc layer: it maps protocol
// messages to the plain Go packages that do the work (execengine, ...) and
// their errors to gRPC status codes. One file per service.
package service
