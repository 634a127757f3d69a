"""Docs that cannot drift: policies.example.toml documents every key and every term type.

A key counts as documented when, inside a table of its own struct, some line sets it (a commented-out
`# key = ...` counts) or opens a table through it, and that line carries a `#` comment — or, for a
table header, the line right above it is a comment. Adding a field to a schema or registering a
term type without writing it into the example file fails here.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

import schemas.policy_file
import schemas.terms
from policy.load import load_policy_file
from policy.terms import REGISTRY
from schemas.policy_file import PolicyFile

EXAMPLE = Path(__file__).parent.parent / "policies.example.toml"
# The [backends.NAME] form cannot sit beside [backend] in one file: its keys are shown here.
TWO_GPUS = Path(__file__).parent.parent / "docs" / "examples" / "two-gpus.toml"
EXAMPLE_POLICIES = {"balanced", "throughput", "fair", "fifo", "seed"}

Path_ = tuple[str, ...]

_HEADER = re.compile(r"^\[([^\[\]]+)\]")
_ASSIGN = re.compile(r'^(#\s*)?([A-Za-z_][\w-]*|"[^"]+")\s*=\s*\S')
_INLINE_KEY = re.compile(r"[{,]\s*([A-Za-z_][\w-]*)\s*=")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _unquote(key: str) -> str:
    return key[1:-1] if key.startswith('"') else key


def key_lines(text: str) -> Iterator[tuple[Path_, str, bool]]:
    """(table path, key, documented) for every key the file sets or opens a table through."""
    table: Path_ = ()
    open_array: str | None = None  # key of a multi-line array of inline tables
    previous = ""
    for raw in text.splitlines():
        line = raw.strip()
        code = _STRING.sub('""', line)  # a `#` inside a string is not a comment
        if m := _HEADER.match(line):
            table = tuple(_unquote(part.strip()) for part in m.group(1).split("."))
            documented = "#" in code or previous.startswith("#")
            for i in range(len(table)):
                yield table[:i], table[i], documented
            open_array = None
        elif m := _ASSIGN.match(line):
            commented_out, key = m.group(1), _unquote(m.group(2))
            # A commented-out key needs its own comment after it, as a live key does.
            documented = code.count("#") >= (2 if commented_out else 1)
            yield table, key, documented
            if not commented_out:
                for inline in _INLINE_KEY.findall(code):
                    yield (*table, key), inline, documented
                if code.split("#")[0].rstrip().endswith("["):
                    open_array = key
        elif open_array is not None:
            if code.startswith("]"):
                open_array = None
            for inline in _INLINE_KEY.findall(code):
                yield (*table, open_array), inline, "#" in code
        previous = line


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and `X | None` down to the type that holds keys."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(options) != 1:
                return tp
            tp = options[0]
        else:
            return tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def resolve(path: Path_, data: dict[str, Any]) -> Any:
    """The schema type of the table at `path` in the example file (None if it has no schema)."""
    tp: Any = PolicyFile
    for i, part in enumerate(path):
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if i == 3 and path[0] == "policies" and path[2] == "terms":
            # [policies.NAME.terms.TERM]: the term type decides the parameter struct.
            table = data["policies"][path[1]]["terms"][part]
            tp = REGISTRY.get(table.get("type", part)).params
        elif _is_struct(tp):
            fields = {f.encode_name: f.type for f in msgspec.structs.fields(tp)}
            if part not in fields:
                return None
            tp = fields[part]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin is list:
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    if typing.get_origin(tp) is list:  # an array of inline tables
        tp = _unwrap(typing.get_args(tp)[0])
    return tp


def schema_structs() -> set[type[msgspec.Struct]]:
    """Every struct reachable from the policy file and from each registered term's parameters."""
    seen: set[type[msgspec.Struct]] = set()
    stack: list[Any] = [PolicyFile, *(t.params for t in REGISTRY)]
    while stack:
        tp = _unwrap(stack.pop())
        if _is_struct(tp):
            if tp in seen:
                continue
            seen.add(tp)
            stack.extend(f.type for f in msgspec.structs.fields(tp))
        else:
            stack.extend(typing.get_args(tp))
    return seen


def schema_keys() -> set[str]:
    return {
        f"{struct.__name__}.{f.encode_name}"
        for struct in schema_structs()
        for f in msgspec.structs.fields(struct)
    }


def documented_keys() -> set[str]:
    out = set()
    for example in (EXAMPLE, TWO_GPUS):
        text = example.read_text(encoding="utf-8")
        data = tomllib.loads(text)
        for table, key, documented in key_lines(text):
            struct = resolve(table, data)
            if documented and _is_struct(struct):
                out.add(f"{struct.__name__}.{key}")
    return out


# ---- every key and every term type is in the example, with a comment ---------------------------


def test_walk_reaches_every_struct_of_the_schema_modules() -> None:
    """The schema walk covers every struct declared in schemas/policy_file.py and schemas/terms.py."""
    declared = {
        obj
        for module in (schemas.policy_file, schemas.terms)
        for obj in vars(module).values()
        if _is_struct(obj) and obj.__module__ == module.__name__
    }
    assert declared <= schema_structs()


def test_every_schema_key_is_documented_in_the_example() -> None:
    """Each key of each struct is set, with a `#` comment, in a table of that struct."""
    undocumented = sorted(schema_keys() - documented_keys())
    assert undocumented == [], f"add these keys, with a comment, to {EXAMPLE.name} (or {TWO_GPUS.name}): {undocumented}"


@pytest.mark.parametrize("term_type", REGISTRY.names())
def test_every_term_type_is_listed_and_used_in_the_example(term_type: str) -> None:
    """Each registered term type is described in the term list and used by some example policy."""
    text = EXAMPLE.read_text(encoding="utf-8")
    assert re.search(rf"^#\s+{re.escape(term_type)}\s{{2,}}\S", text, re.MULTILINE), (
        f"describe {term_type!r} in the 'Term types:' comment of {EXAMPLE.name}"
    )
    policies = tomllib.loads(text)["policies"].values()
    used = {
        table.get("type", name)
        for spec in policies
        for name, table in spec.get("terms", {}).items()
    }
    assert term_type in used, f"use {term_type!r} in one of the policies of {EXAMPLE.name}"


def test_key_lines_sees_keys_tables_and_inline_tables() -> None:
    """The line scanner credits comments to the right keys (a check on the checker itself)."""
    text = (
        "# a header comment\n"
        "[a.b]\n"
        "x = 1  # with a comment\n"
        "y = 2\n"
        '# z = "#"   # commented out, explained\n'
        "w = [\n"
        "  { p = 1 },  # first\n"
        "]\n"
        'v = "#"\n'
    )
    assert list(key_lines(text)) == [
        ((), "a", True),
        (("a",), "b", True),
        (("a", "b"), "x", True),
        (("a", "b"), "y", False),
        (("a", "b"), "z", True),
        (("a", "b"), "w", False),
        (("a", "b", "w"), "p", True),
        (("a", "b"), "v", False),
    ]


# ---- the example itself ------------------------------------------------------------------------


def test_example_loads_cleanly_with_balanced_active() -> None:
    """The example file compiles without problems and recommends `balanced`."""
    compiled = load_policy_file(EXAMPLE)
    assert compiled.active.name == "balanced"


def test_example_defines_the_documented_policies() -> None:
    """The example defines exactly balanced, throughput, fair, fifo and seed."""
    assert set(load_policy_file(EXAMPLE).policies) == EXAMPLE_POLICIES


def test_the_readme_table_names_every_section_of_the_file() -> None:
    """The README's table of the policy file's sections follows the schema: a new section (as
    [cloud] and [queue_status] once were) must get its row."""
    from schemas.policy_file import PolicyFile

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| section | what it sets |"):]
    table = table[:table.index("\n\n")]
    named = {m.group(1) for m in re.finditer(r"^\| `\[?([a-z_]+)", table, re.MULTILINE)}
    assert named == set(PolicyFile.__struct_fields__)
