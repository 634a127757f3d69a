"""`smart-proxy policy from-env .env [-o policies.toml]`: migrate the earlier proxy's settings
(policy/from_env.py). The policy file goes to stdout or -o; what belongs in the environment
instead, and every variable it did not know, go to stderr as a list."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tomli_w

from policy.errors import PolicyError
from policy.from_env import EnvFileError, migrate, parse_env
from policy.load import load_policy_text
from server.cli.args import CliError, existing_file, output_file, write_output


def _from_env(args: argparse.Namespace) -> int:
    try:
        text = Path(args.env_file).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise CliError(f"{args.env_file}: cannot read: {exc}") from None
    try:
        result = migrate(parse_env(text, args.env_file), args.env_file)
    except EnvFileError as exc:
        raise CliError("; ".join(exc.problems)) from None
    toml = (f"# Converted by `smart-proxy policy from-env {args.env_file}`. Check it with\n"
            "# `smart-proxy policy check`; every other setting has its documented default.\n"
            + tomli_w.dumps(result.document))
    try:
        load_policy_text(toml.encode(), args.output or "<from-env>")
    except PolicyError as exc:  # a value the old proxy accepted and the policy schema does not
        raise CliError("; ".join(exc.lines)) from None
    write_output(args.output, toml)
    err = sys.stderr
    if result.environment:
        print("Set in the sidecar's environment instead:", file=err)
        for name, value, why in result.environment:
            print(f"  {name}={value}    # {why}", file=err)
    for note in result.notes:
        print(f"note: {note}", file=err)
    if result.unknown:
        print("Not converted (unknown to the migration; check whether you still need them): "
              + ", ".join(result.unknown), file=err)
    return 0


def register_from_env(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "from-env", help="convert the earlier proxy's .env into a policy file",
        description="Write a policy file (the `seed` scoring with the file's numbers) from the "
        "earlier proxy's .env, and list the environment variables that replace the rest. "
        "Secrets are never copied. See the README's migration section.",
    )
    parser.add_argument("env_file", type=existing_file, metavar="ENV_FILE")
    parser.add_argument("-o", "--output", type=output_file, metavar="FILE",
                        help="write the policy file here instead of standard output")
    parser.set_defaults(run=_from_env, cli_prog=parser.prog)
