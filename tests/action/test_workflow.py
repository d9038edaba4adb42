from __future__ import annotations

import io
from pathlib import Path

import pytest

from otaship.action.workflow import Workflow, escape_data, escape_property, format_command, format_output
from tests.action_runner import parse_file_commands


def test_command_data_and_properties_are_escaped() -> None:
    assert escape_data("50%\r\nnext") == "50%25%0D%0Anext"
    assert escape_property("a:b,c\n") == "a%3Ab%2Cc%0A"
    assert format_command("error", "bad\nthing", {"title": "T: x"}) == "::error title=T%3A x::bad%0Athing"
    assert format_command("endgroup", "") == "::endgroup::"


@pytest.mark.parametrize("value", ["", "1.2.3", "two\nlines", "ghadelimiter_x\n<<EOF\n", "a=b"])
def test_outputs_survive_any_value(value: str) -> None:
    text = format_output("name", value) + format_output("after", "ok")
    assert parse_file_commands(text) == {"name": value, "after": "ok"}


def test_an_output_name_must_be_one_line() -> None:
    with pytest.raises(ValueError):
        format_output("a\nb", "x")


def test_on_a_github_runner_commands_are_printed(tmp_path: Path) -> None:
    out = io.StringIO()
    workflow = Workflow.from_environ(
        {
            "GITHUB_ACTIONS": "true",
            "GITHUB_OUTPUT": str(tmp_path / "out"),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "sum"),
        },
        out,
    )
    workflow.mask("s3cret\nline2")
    workflow.mask("")
    workflow.mask("s3cret")  # once is enough
    with workflow.group("Build"):
        workflow.info("log line")
    workflow.error("it broke", title="Build failed")
    workflow.warning("careful")
    workflow.set_outputs({"version": "1.0.0", "sha256": "ab"})
    workflow.append_summary("# hi")
    assert out.getvalue().splitlines() == [
        "::add-mask::s3cret",
        "::add-mask::line2",
        "::group::Build",
        "log line",
        "::endgroup::",
        "::error title=Build failed::it broke",
        "::warning::careful",
    ]
    assert parse_file_commands((tmp_path / "out").read_text()) == {"version": "1.0.0", "sha256": "ab"}
    assert (tmp_path / "sum").read_text() == "# hi\n"


def test_elsewhere_the_log_is_plain_and_files_are_skipped() -> None:
    out = io.StringIO()
    workflow = Workflow.from_environ({}, out)
    workflow.mask("s3cret")
    with workflow.group("Build"):
        pass
    workflow.error("it broke", title="Build failed")
    workflow.set_outputs({"version": "1"})
    workflow.append_summary("x")
    assert out.getvalue().splitlines() == ["--- Build", "error: Build failed: it broke"]
    assert "s3cret" not in out.getvalue()
