"""The `smart-proxy` command line: the composition root, and the only part of `server/` that may
import `sim/` (demo mode)."""

from server.cli.main import main

__all__ = ["main"]
