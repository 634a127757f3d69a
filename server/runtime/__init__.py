"""The long-lived parts the sidecar owns: the dispatcher, the upstream poller, hot reload, the
shutdown's holds, the policy/Ollama consistency check, and serving (Hypercorn, signals, limits)."""
