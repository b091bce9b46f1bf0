package pid1

import (
	"log/slog"
	"os"
)

func slogStderr() *slog.Logger { return slog.New(slog.NewTextHandler(os.Stderr, nil)) }
