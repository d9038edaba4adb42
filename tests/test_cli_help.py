"""Both command lines document themselves: every option says what it is for, what
it defaults to and, for `otaship-deploy`, which variables it falls back to."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from otaship.action.__main__ import EnvOption
from otaship.action.__main__ import cli as deploy_cli
from otaship.receiver.cli import cli as otaship_cli

CLIS = {"otaship": otaship_cli, "otaship-deploy": deploy_cli}


def commands(ctx: click.Context) -> Iterator[click.Context]:
    """The context of every command below `ctx`'s, as the real command line makes them."""
    command = ctx.command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            child = click.Context(sub, parent=ctx, info_name=name)
            yield child
            yield from commands(child)


def every_option() -> Iterator[tuple[str, click.Context, click.Option]]:
    for prog, cli in CLIS.items():
        root = click.Context(cli, info_name=prog, **cli.context_settings)
        for ctx in [root, *commands(root)]:
            for param in ctx.command.params:
                if isinstance(param, click.Option):
                    yield f"{ctx.command_path} {param.opts[0]}", ctx, param


OPTIONS = list(every_option())


def test_the_walk_finds_the_commands() -> None:
    paths = {name.rsplit(" ", 1)[0] for name, _, _ in OPTIONS}
    assert {
        "otaship",
        "otaship serve",
        "otaship gc",
        "otaship user create",
        "otaship user key",
        "otaship group create",
        "otaship group list",
        "otaship device create",
        "otaship device list",
        "otaship simulate",
        "otaship firmware example",
        "otaship firmware inspect",
        "otaship-deploy",
        "otaship-deploy version",
        "otaship-deploy build",
        "otaship-deploy deploy",
        "otaship-deploy follow",
    } <= paths


@pytest.mark.parametrize(("name", "ctx", "option"), OPTIONS, ids=[name for name, _, _ in OPTIONS])
def test_every_option_has_help_and_shows_its_default(
    name: str, ctx: click.Context, option: click.Option
) -> None:
    assert option.help, f"{name} has no help"
    record = option.get_help_record(ctx)
    assert record is not None
    # The info dict says None for "no default", whatever click keeps inside.
    if option.to_info_dict()["default"] is not None and not option.is_flag:
        assert "default: " in record[1], f"{name} hides its default: {record[1]!r}"
    if isinstance(option, EnvOption):
        assert option.envvar and f"env var: {option.envvar[0]}" in record[1], record[1]


@pytest.mark.parametrize(
    ("args", "first_line"),
    [
        (["--version"], "otaship, version"),
        (["-h"], "Usage: otaship [OPTIONS] COMMAND [ARGS]..."),
        (["simulate", "--help"], "Usage: otaship simulate [OPTIONS]"),
    ],
)
def test_otaship_version_and_help(args: list[str], first_line: str) -> None:
    result = CliRunner().invoke(otaship_cli, args, prog_name="otaship")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith(first_line)
    if args == ["--version"]:
        assert result.stdout == f"otaship, version {version('otaship')}\n"


def test_the_readme_names_every_variable_otaship_deploy_reads() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### GitLab CI and laptops")[1].split("```")[0]
    read = {option.envvar[0] for _, _, option in OPTIONS if isinstance(option, EnvOption) and option.envvar}
    assert set(re.findall(r"`(OTASHIP_\w+)`", section)) == read
