"""The README's table of environment variables is the code's (server/settings.py), and every
variable in it is read somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from server.settings import ENV_VARS

ROOT = Path(__file__).resolve().parent.parent


def readme_variables() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| variable | meaning | default |"):].split("\n\n", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1]))
    return names


def test_the_readme_lists_exactly_the_variables_the_code_declares() -> None:
    assert readme_variables() == set(ENV_VARS)


def test_every_declared_variable_is_read_by_the_code() -> None:
    sources = "\n".join(
        p.read_text(encoding="utf-8")
        for folder in ("server", "policy", "schemas")
        for p in (ROOT / folder).rglob("*.py")
        if p != ROOT / "server" / "settings.py"
    )
    unread = [name for name in ENV_VARS if f'"{name}"' not in sources]
    assert unread == []
