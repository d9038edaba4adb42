"""Run a composite action.yml the way the GitHub runner does, for tests.

What the runner does and this does too:
- parses action.yml, applies input defaults, refuses a missing required input;
- substitutes `${{ inputs.* }}`, `${{ steps.<id>.outputs.* }}`, `${{ github.* }}`
  and `${{ runner.* }}` in `env:`, `run:`, `working-directory:` and the outputs;
- runs each `run:` step with `bash --noprofile --norc -eo pipefail`, in the
  workspace, with GITHUB_OUTPUT, GITHUB_ENV, GITHUB_PATH and GITHUB_STEP_SUMMARY
  files of its own and the GITHUB_REF* variables;
- reads each step's outputs (`name=value` and heredoc form), carries GITHUB_ENV
  and GITHUB_PATH to later steps, and joins the step summaries;
- stops at the first failing step, as a composite action does.

What it does not: `uses:` steps are skipped (recorded, not run), so whatever they
would provide must be provided by the caller. For actions/setup-python that is a
`python` on PATH: `python_stand_in` writes one that is this test's interpreter,
except that `python -m pip install …` is only recorded, because pip would
otherwise reinstall packages over the test environment (and download them).
Asked for platformio, it puts the given stand-in `pio` beside itself, where
pip would put PlatformIO's console script.
Expressions beyond plain context lookups raise, so a test notices when action.yml
starts to need more than this emulates.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
CONTEXT_PATH = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")


class UnsupportedExpression(ValueError):
    pass


@dataclass
class StepResult:
    name: str
    id: str | None
    skipped: bool
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class ActionRun:
    steps: list[StepResult]
    outputs: dict[str, str]
    summary: str

    @property
    def failed(self) -> StepResult | None:
        return next((step for step in self.steps if step.returncode not in (None, 0)), None)

    @property
    def stdout(self) -> str:
        return "".join(step.stdout for step in self.steps)

    def step(self, step_id: str) -> StepResult:
        return next(step for step in self.steps if step.id == step_id)


def parse_file_commands(text: str) -> dict[str, str]:
    """$GITHUB_OUTPUT / $GITHUB_ENV: `name=value` lines and `name<<DELIMITER` blocks."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip():
            continue
        equals = line.find("=")
        heredoc = line.find("<<")
        if heredoc != -1 and (equals == -1 or heredoc < equals):
            name, delimiter = line[:heredoc], line[heredoc + 2 :]
            block: list[str] = []
            while True:
                if index >= len(lines):
                    raise ValueError(f"unterminated {name}<<{delimiter} in a file command")
                if lines[index] == delimiter:
                    index += 1
                    break
                block.append(lines[index])
                index += 1
            values[name] = "\n".join(block)
        elif equals != -1:
            values[line[:equals]] = line[equals + 1 :]
        else:
            raise ValueError(f"invalid file command line {line!r}")
    return values


def evaluate(expression: str, contexts: Mapping[str, Any]) -> str:
    """A context lookup such as `inputs.api-key`; an unset step output is ""."""
    if not CONTEXT_PATH.match(expression):
        raise UnsupportedExpression(f"the test runner only evaluates context lookups, not {expression!r}")
    parts = expression.split(".")
    if parts[0] not in contexts:
        raise UnsupportedExpression(f"unknown context {parts[0]!r} in {expression!r}")
    value: Any = contexts[parts[0]]
    for part in parts[1:]:
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part, "")
    return "" if value is None else str(value)


def substitute(text: str, contexts: Mapping[str, Any]) -> str:
    return EXPRESSION.sub(lambda match: evaluate(match.group(1), contexts), text)


def python_stand_in(folder: Path, pip_log: Path, pio: Path) -> Path:
    """A `python` for the skipped actions/setup-python: this interpreter, pip recorded."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "python"
    script.write_text(
        "#!/bin/sh\n"
        "# Stands in for the Python that actions/setup-python installs; see tests/action_runner.py.\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then\n'
        f'  printf "%s\\n" "$*" >> {shlex.quote(str(pip_log))}\n'
        f'  case " $* " in *" platformio "*) ln -sf {shlex.quote(str(pio))} {shlex.quote(str(folder / "pio"))} ;; esac\n'
        '  echo "pip (stand-in): recorded $*"\n'
        "  exit 0\n"
        "fi\n"
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    script.chmod(0o755)
    # setup-python puts its scripts folder on PATH, so the console scripts that the
    # recorded `pip install` would have made are there too: this interpreter's.
    deploy = folder / "otaship-deploy"
    deploy.write_text(
        "#!/bin/sh\n"
        f'exec {shlex.quote(sys.executable)} -P -c "from otaship.action.__main__ import main; raise SystemExit(main())" "$@"\n'
    )
    deploy.chmod(0o755)
    return folder


def run_action(
    action_path: Path,
    *,
    inputs: Mapping[str, str],
    workspace: Path,
    env: Mapping[str, str],
    github: Mapping[str, str] | None = None,
    runner_temp: Path,
    timeout: float = 300,
) -> ActionRun:
    """Run `action_path/action.yml`; `env` is the job's environment (PATH, HOME, GITHUB_REF…)."""
    definition = yaml.safe_load((action_path / "action.yml").read_text())
    assert definition["runs"]["using"] == "composite", "only composite actions are emulated"
    github_context = {
        "action_path": str(action_path),
        "workspace": str(workspace),
        "sha": env.get("GITHUB_SHA", ""),
        "ref": env.get("GITHUB_REF", ""),
        "ref_name": env.get("GITHUB_REF_NAME", ""),
        "ref_type": env.get("GITHUB_REF_TYPE", ""),
        # The job's own token; GitHub would give a real one.
        "token": "",
        **(github or {}),
    }
    resolved: dict[str, str] = {}
    for name, spec in (definition.get("inputs") or {}).items():
        if name in inputs:
            resolved[name] = inputs[name]
        elif spec.get("default") is not None:
            # GitHub evaluates a default's expressions (`${{ github.token }}`) too.
            resolved[name] = substitute(str(spec["default"]), {"github": github_context})
        elif spec.get("required"):
            raise ValueError(f"input {name!r} is required")
        else:
            resolved[name] = ""
    unknown = set(inputs) - set(resolved)
    if unknown:
        raise ValueError(f"action.yml has no inputs {sorted(unknown)}")

    steps_context: dict[str, dict[str, dict[str, str]]] = {}
    contexts: dict[str, Any] = {
        "inputs": resolved,
        "github": github_context,
        "steps": steps_context,
        "runner": {"os": "Linux", "temp": str(runner_temp)},
    }
    job_env = dict(env)
    results: list[StepResult] = []
    summaries: list[str] = []

    for index, step in enumerate(definition["runs"]["steps"]):
        name = step.get("name") or step.get("uses") or f"step {index}"
        step_id = step.get("id")
        if "uses" in step:
            results.append(StepResult(name, step_id, skipped=True))
            if step_id:
                steps_context[step_id] = {"outputs": {}}
            continue
        assert step.get("shell") == "bash", (
            f"step {name!r}: composite run steps must name their shell; this emulates bash"
        )
        assert "if" not in step, "conditional steps are not emulated"
        files = {
            key: runner_temp / f"{key.lower()}_{index}_{uuid.uuid4().hex}"
            for key in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY")
        }
        for path in files.values():
            path.touch()
        step_env = {
            **job_env,
            **{key: substitute(str(value), contexts) for key, value in (step.get("env") or {}).items()},
            **{key: str(path) for key, path in files.items()},
            "GITHUB_ACTION_PATH": str(action_path),
            "GITHUB_WORKSPACE": str(workspace),
            "GITHUB_ACTIONS": "true",
            "CI": "true",
            "RUNNER_OS": "Linux",
            "RUNNER_TEMP": str(runner_temp),
        }
        script = runner_temp / f"step_{index}.sh"
        script.write_text(substitute(step["run"], contexts))
        cwd = workspace / substitute(step.get("working-directory", "."), contexts)
        completed = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            env=step_env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        outputs = parse_file_commands(files["GITHUB_OUTPUT"].read_text())
        result = StepResult(
            name,
            step_id,
            skipped=False,
            returncode=completed.returncode,
            stdout=completed.stdout,
            stderr=completed.stderr,
            outputs=outputs,
        )
        results.append(result)
        if step_id:
            steps_context[step_id] = {"outputs": outputs}
        job_env.update(parse_file_commands(files["GITHUB_ENV"].read_text()))
        added_paths = [line for line in files["GITHUB_PATH"].read_text().splitlines() if line.strip()]
        if added_paths:
            job_env["PATH"] = os.pathsep.join([*reversed(added_paths), job_env.get("PATH", "")])
        summaries.append(files["GITHUB_STEP_SUMMARY"].read_text())
        if completed.returncode != 0:
            break

    outputs = {
        name: substitute(str(spec.get("value", "")), contexts)
        for name, spec in (definition.get("outputs") or {}).items()
    }
    return ActionRun(results, outputs, "".join(summaries))
