"""GitHub Actions workflow commands, outputs and the job summary.

Commands go to stdout, in order with the rest of the log, because the runner
parses annotations, masks and groups out of stdout. Outside GitHub Actions (GitLab
CI, a laptop) the same calls print plain lines instead, so the log stays readable.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO


def escape_data(value: str) -> str:
    # The runner splits commands on newlines, so a multi-line message would be cut.
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def format_command(command: str, message: str, properties: Mapping[str, str] | None = None) -> str:
    props = ""
    if properties:
        props = " " + ",".join(f"{key}={escape_property(value)}" for key, value in properties.items())
    return f"::{command}{props}::{escape_data(message)}"


def format_output(name: str, value: str) -> str:
    """One entry for $GITHUB_OUTPUT, in the heredoc form so any value is safe.

    A fixed delimiter could occur in the value (a device name, a receiver message)
    and end the entry early; a random one that is checked cannot.
    """
    delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
    while delimiter in value or delimiter in name:  # pragma: no cover - 128 random bits
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
    if "\n" in name or "\r" in name or not name:
        raise ValueError(f"output name must be one non-empty line, got {name!r}")
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


@dataclass
class Workflow:
    """Where this run reports to: the log, step outputs and the job summary."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    # True on a GitHub runner: emit `::command::` lines rather than plain text.
    annotations: bool = False
    output_path: Path | None = None
    summary_path: Path | None = None
    _masked: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], stdout: TextIO | None = None) -> Workflow:
        def path(name: str) -> Path | None:
            value = environ.get(name, "")
            return Path(value) if value else None

        return cls(
            stdout=stdout if stdout is not None else sys.stdout,
            annotations=environ.get("GITHUB_ACTIONS") == "true",
            output_path=path("GITHUB_OUTPUT"),
            summary_path=path("GITHUB_STEP_SUMMARY"),
        )

    def _print(self, line: str) -> None:
        print(line, file=self.stdout, flush=True)

    def info(self, message: str) -> None:
        self._print(message)

    def error(self, message: str, *, title: str | None = None) -> None:
        self._annotate("error", message, title)

    def warning(self, message: str, *, title: str | None = None) -> None:
        self._annotate("warning", message, title)

    def notice(self, message: str, *, title: str | None = None) -> None:
        self._annotate("notice", message, title)

    def _annotate(self, level: str, message: str, title: str | None) -> None:
        if self.annotations:
            self._print(format_command(level, message, {"title": title} if title else None))
        else:
            prefix = f"{level}: {title}: " if title else f"{level}: "
            self._print(prefix + message)

    def mask(self, secret: str | None) -> None:
        # Each line is masked separately by the runner, so mask every line.
        if not self.annotations or not secret:
            return
        for line in secret.splitlines():
            if line.strip() and line not in self._masked:
                self._masked.add(line)
                self._print(format_command("add-mask", line))

    @contextlib.contextmanager
    def group(self, title: str) -> Iterator[None]:
        if self.annotations:
            self._print(format_command("group", title))
        else:
            self._print(f"--- {title}")
        try:
            yield
        finally:
            if self.annotations:
                self._print("::endgroup::")

    def set_outputs(self, outputs: Mapping[str, str]) -> None:
        if self.output_path is None:
            return
        with self.output_path.open("a", encoding="utf-8") as handle:
            for name, value in outputs.items():
                handle.write(format_output(name, value))

    def append_summary(self, markdown: str) -> None:
        if self.summary_path is None:
            return
        with self.summary_path.open("a", encoding="utf-8") as handle:
            handle.write(markdown if markdown.endswith("\n") else markdown + "\n")
