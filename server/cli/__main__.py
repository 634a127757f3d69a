"""`python -m server.cli`: the same as the `smart-proxy` command."""

import sys

from server.cli.main import main

if __name__ == "__main__":  # never when a spawned worker process (analytics) imports this
    sys.exit(main())
