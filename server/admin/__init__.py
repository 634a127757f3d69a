"""`/proxy/*` and `/metrics`: admin auth, the routes, and the pure views they answer with."""
