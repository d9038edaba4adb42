"""The documentation's tables match the code: a command, option, variable, input or output
missing from a table, or a row for one that does not exist, fails here.

- README "Admin CLI": one row per `otaship` command, naming each of its options
  (`otaship simulate`'s are in their own table);
- README "GitLab CI and laptops": one row per `otaship-deploy` command;
- docs/operations.md "Configuration": one row per OTASHIP_* variable the receiver
  reads, and the README has no such table of its own;
- README "Inputs" and "Outputs": action.yml's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from otaship.action.__main__ import cli as deploy_cli
from otaship.receiver.cli import cli as otaship_cli
from otaship.receiver.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])\b")


def section(text: str, heading: str) -> str:
    """From `heading` (a whole line) to the next heading of its level or above."""
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    rest = text[start + len(heading) + 2 :]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """Every Markdown table in `text`: its header cells and its rows' cells."""
    for block in re.findall(r"(?:^\|.*\|\n)+", text + "\n", re.MULTILINE):
        lines = [line.strip() for line in block.strip().splitlines()]
        cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
        yield cells[0], cells[2:]


def table(text: str, first_header: str) -> list[list[str]]:
    found = [rows for header, rows in tables(text) if header[0] == first_header]
    assert len(found) == 1, f"expected one table headed {first_header!r}, found {len(found)}"
    return found[0]


def code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`(.*)", cell)
    assert match, f"not a code cell: {cell!r}"
    return match.group(1).replace("\\|", "|")


def leaf_commands(group: click.Group, path: str) -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaf_commands(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def option_names(command: click.Command) -> list[list[str]]:
    return [p.opts for p in command.params if isinstance(p, click.Option)]


def command_path(usage: str) -> str:
    """`otaship user create EMAIL [--plan …]` -> `otaship user create`."""
    words = []
    for word in usage.split():
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        words.append(word)
    return " ".join(words)


OTASHIP_COMMANDS = dict(leaf_commands(otaship_cli, "otaship"))
ADMIN_ROWS = {
    command_path(code(row[0])): code(row[0]) for row in table(section(README, "## Admin CLI"), "command")
}
SIMULATE_OPTIONS = [code(row[0]) for row in table(README, "`otaship simulate` option")]


def test_the_admin_table_has_one_row_per_command() -> None:
    assert sorted(ADMIN_ROWS) == sorted(OTASHIP_COMMANDS)


@pytest.mark.parametrize("path", sorted(OTASHIP_COMMANDS))
def test_each_row_names_every_option_of_its_command(path: str) -> None:
    named = set(OPTION.findall(ADMIN_ROWS.get(path, "")))
    if path == "otaship simulate":
        named |= {OPTION.findall(cell)[0] for cell in SIMULATE_OPTIONS}
    options = option_names(OTASHIP_COMMANDS[path])
    missing = [opts[-1] for opts in options if not named & set(opts)]
    extra = named - {name for opts in options for name in opts}
    assert (missing, extra) == ([], set()), f"{path}: missing {missing}, no such option {extra}"


def test_the_otaship_deploy_table_has_one_row_per_command() -> None:
    rows = table(section(README, "### GitLab CI and laptops: `otaship-deploy`"), "command")
    assert sorted(command_path(code(row[0])) for row in rows) == sorted(
        f"otaship-deploy {name}" for name in deploy_cli.commands
    )


class Recording(dict[str, str]):
    """An environment that notes every variable asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


def test_the_configuration_table_has_one_row_per_variable_the_receiver_reads() -> None:
    env = Recording()
    Settings.from_env(env)
    assert env.asked, "Settings.from_env read nothing"
    rows = table(section(OPERATIONS, "## Configuration"), "variable")
    documented = [code(row[0]) for row in rows]
    assert len(documented) == len(set(documented))
    assert sorted(v for v in documented if v.startswith("OTASHIP_")) == sorted(env.asked)


def test_the_configuration_table_is_not_repeated() -> None:
    assert not [header for header, _ in tables(README) if header[0] == "variable"]
    assert sum(1 for header, _ in tables(OPERATIONS) if header[0] == "variable") == 1


@pytest.mark.parametrize(("heading", "key"), [("### Inputs", "inputs"), ("### Outputs", "outputs")])
def test_the_action_tables_match_action_yml(heading: str, key: str) -> None:
    rows = table(section(README, heading), heading.removeprefix("### ").lower().rstrip("s"))
    assert [code(row[0]) for row in rows] == list(ACTION[key])
