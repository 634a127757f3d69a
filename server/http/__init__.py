"""HTTP plumbing every other part of `server/` shares: the API dialects' errors, request bodies
and query parameters, who is asking (addresses, API keys, admin credentials), request ids, and
the upstream hop to Ollama. Imports nothing else of `server/`."""
