"""The README is the front door: it must document every setting and every command."""
from __future__ import annotations

from pathlib import Path

from service.cli import app
from service.contract.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    for name in Settings.model_fields:
        assert f"`GROKLAB_{name.upper()}`" in README, name


def test_every_command_is_in_the_readme():
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    commands += [g.name for g in app.registered_groups]
    for command in commands:
        assert f"groklab {command}" in README, command


def test_readme_has_the_two_commands():
    assert "make up" in README and "make test" in README
