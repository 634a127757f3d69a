"""Offline replay of request traces under policies: the simulator behind `smart-proxy simulate`."""
