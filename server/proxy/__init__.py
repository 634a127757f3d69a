"""The Ollama-facing request path, in the order a request meets it: `routes` (read, identify,
admit: `intake`), `exchange` (wait for a grant, forward, relay, journal), with `facts` (what the
journal learns) and `disconnect` (a client going away)."""
