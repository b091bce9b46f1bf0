package vhostuser

import (
	"io"
	"log/slog"
)

type nopDevice struct{}

func (nopDevice) Features() uint64                        { return FeatureVersion1 }
func (nopDevice) ProtocolFeatures() uint64                { return ProtocolFeatureConfig }
func (nopDevice) NumQueues() int                          { return 2 }
func (nopDevice) Config(off, size uint32) ([]byte, error) { return make([]byte, size), nil }
func (nopDevice) Start(*Queue)                            {}
func (nopDevice) Stop(*Queue)                             {}
func (nopDevice) Kick(*Queue)                             {}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
