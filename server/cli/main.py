"""The `smart-proxy` command: one entry point whose verbs live next to the code they drive.

Each package that offers verbs has a `cli` module with `register(subparsers)`; this file only
collects them, so adding a verb never means editing a central switch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from server.cli.args import CliError, OneLineParser, fail

# Modules that contribute verbs, in the order `--help` lists them. A module that is absent (a
# feature not built yet) is skipped rather than breaking every other verb.
VERB_MODULES = (
    "server.cli.serve",
    "server.cli.policy",
    "sim.cli",
    "sim.replay.cli",
    "server.cli.db",
    "server.cli.dashboard",
    "server.cli.load",
)


def build_parser() -> argparse.ArgumentParser:
    # One-line usage errors for every verb: sub-parsers inherit the parser class.
    parser = OneLineParser(
        prog="smart-proxy",
        description="Ollama Smart Proxy: a scheduling sidecar for one Ollama server.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only the verb module itself (or its package) may be missing; a missing dependency
            # inside it is a real error and must surface.
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.run(args)
    except CliError as exc:  # a bad input a verb found after parsing (file gone, port busy)
        return fail(getattr(args, "cli_prog", parser.prog), str(exc))
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        # Point stdout at /dev/null so the flush at exit cannot fail again (Python's docs on
        # SIGPIPE recommend exactly this).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
