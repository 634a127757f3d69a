"""What the sidecar tells its operators: Prometheus metrics and the log."""
