"""The emulator's TOML format and CLI: presets load, mistakes are reported by file, path and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.cli import load_settings, register
from sim.config import SimConfigError, load_text
from sim.presets import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads(name: str) -> None:
    """Each built-in preset is a valid file in the documented format."""
    settings = load_text(PRESETS[name], name, 0.0)
    assert settings.models and settings.vram > 0


def test_presets_match_the_issue() -> None:
    """A 24 GB workstation with 1B–32B models and an 80 GB server with a 70B among 8B–32B."""
    work = load_text(PRESETS["workstation-24gb"], "w", 0.0)
    server = load_text(PRESETS["server-80gb"], "s", 0.0)
    assert work.vram == 24_000_000_000 and {"llama3.2:1b", "qwq:32b"} <= {m.name for m in work.models}
    assert server.vram == 80_000_000_000 and {"llama3.3:70b", "llama3.1:8b", "qwq:32b"} <= {
        m.name for m in server.models}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node]\nvram_gb = 'x'\n", 'sim.toml: node.vram_gb: "x": Expected `float`, got `str`'),
        ("[node]\nvram_gb = -1\n", "sim.toml: node.vram_gb: -1: Expected `float` > 0.0"),
        ("[node]\nvram = 2\n", "sim.toml: node.vram: unknown key"),
        ("[[models]]\nname = 'x:1b'\nsize = 1\n", "sim.toml: models[0].size: unknown key"),
        ("[node\n", "sim.toml: not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 6)"),
        ("[node]\nkeep_alive = '-1'\n", 'sim.toml: node.keep_alive: "-1": time: missing unit in duration "-1"'),
        ("[[models]]\nname = 'Bad Name'\n", 'sim.toml: models[0].name: "Bad Name": is not a model name like "llama3.2:3b"'),
        ("[[models]]\nname = 'mistral:7b'\n[[models]]\nname = 'MISTRAL:7b'\n",
         'sim.toml: models[1].name: "MISTRAL:7b": is listed twice'),
    ],
)
def test_config_errors_name_file_path_and_value(text: str, message: str) -> None:
    """Decode and validation errors are one readable line each, never a traceback."""
    with pytest.raises(SimConfigError) as info:
        load_text(text, "sim.toml", 0.0)
    assert str(info.value) == message


def test_unknown_model_needs_its_figures() -> None:
    """A model outside the built-in library must give its size; with it, it loads."""
    with pytest.raises(SimConfigError, match=r"models\[0\]: \"mine:7b\": is not in the built-in library"):
        load_text("[[models]]\nname = 'mine:7b'\n", "sim.toml", 0.0)
    (spec,) = load_text("[[models]]\nname = 'mine:7b'\nsize_gb = 4\nparameter_size = '7B'\n", "f", 0.0).models
    assert (spec.name, spec.size, spec.params_billions) == ("mine:7b", 4_000_000_000, 7.0)


def _args(*argv: str) -> object:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["sim", *argv])


def test_cli_reads_a_config_file_and_time_scale(tmp_path: Path) -> None:
    """--config with --time-scale overrides the file's scale; --preset picks a built-in set-up."""
    path = tmp_path / "sim.toml"
    path.write_text("[node]\nvram_gb = 12\ntime_scale = 1\n[[models]]\nname = 'llama3.2:1b'\n")
    settings = load_settings(_args("--config", str(path), "--time-scale", "0.01"))  # type: ignore[arg-type]
    assert (settings.vram, settings.time_scale) == (12_000_000_000, 0.01)
    assert load_settings(_args("--preset", "server-80gb")).vram == 80_000_000_000  # type: ignore[arg-type]


def test_cli_prints_config_errors_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad file ends the command with code 2 and the error on stderr, no traceback."""
    path = tmp_path / "sim.toml"
    path.write_text("[node]\nvram = 2\n")
    args = _args("--config", str(path))
    assert args.run(args) == 2  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert err.strip() == f"{path}: node.vram: unknown key" and "Traceback" not in err
