"""The Dockerfile, checked without a Docker engine.

Its structure is read with a small parser (stages, ENV, USER, HEALTHCHECK, CMD).
Then the builder stage's COPY and RUN instructions are carried out in a temporary
directory that stands in for the image's root: the same shell commands, with the
same ENV, only with the image's paths under that directory. The final stage's CMD
is started from the venv they built, and its HEALTHCHECK is run against it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import httpx

from otaship.receiver.settings import Settings
from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CMD = ["otaship", "serve", "--host", "0.0.0.0"]


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def _logical_lines(text: str) -> list[str]:
    """Instructions one per line: comments dropped, `\\` continuations joined."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return lines


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults, and the stages in order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = _expand(rest, args).split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=stage))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, rest))
    return args, stages


def exec_form(args: str) -> list[str]:
    """A JSON-array CMD or HEALTHCHECK CMD; the shell form is not used here."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_pairs(args: str) -> list[tuple[str, str]]:
    """`ENV a=1 b="x y"` as pairs, values unexpanded."""
    pairs = []
    for word in shlex.split(args, posix=True):
        name, sep, value = word.partition("=")
        assert sep, f"use ENV name=value, not {args!r}"
        pairs.append((name, value))
    return pairs


def copy_args(args: str) -> tuple[dict[str, str], list[str], str]:
    words = args.split()
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1], paths[-1]


ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
BUILDER, FINAL = STAGES[0], STAGES[-1]


def final_env() -> dict[str, str]:
    """The final stage's ENV, with $PATH as the base image leaves it."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for args in FINAL.all("ENV"):
        for name, value in env_pairs(args):
            env[name] = _expand(value, env)
    return env


# --- structure ---------------------------------------------------------------------


def test_two_stages_on_one_slim_python_base() -> None:
    assert len(STAGES) >= 2
    assert BUILDER.name, "the builder stage is named, for COPY --from"
    # The venv is copied across stages as it is: its interpreter must be the same.
    assert BUILDER.base == FINAL.base
    match = re.fullmatch(r"python:3\.(\d+)-slim", FINAL.base)
    assert match, FINAL.base
    assert int(match.group(1)) >= 11  # pyproject.toml's requires-python
    # What the final stage takes from the builder: the venv, at the same path.
    copies = [copy_args(a) for a in FINAL.all("COPY")]
    assert copies, "the final stage copies the built venv"
    for flags, sources, dest in copies:
        assert flags.get("from") == BUILDER.name
        assert sources == [dest], "a venv is not relocatable"


def test_the_builder_installs_the_receiver_extra() -> None:
    # The plain package is the action alone: without the extra there is no `serve`.
    words = [word for run in BUILDER.all("RUN") for word in shlex.split(run)]
    assert ".[receiver]" in words
    assert "." not in words


def test_runs_as_a_created_user_that_is_not_root() -> None:
    user = FINAL.last("USER")
    assert user is not None
    name = user.split(":")[0]
    assert name not in ("root", "0")
    assert any(re.search(rf"useradd\b.*\b{re.escape(name)}\b", run) for run in FINAL.all("RUN"))


def test_command_healthcheck_ports_and_volume() -> None:
    assert FINAL.all("ENTRYPOINT") == []
    assert exec_form(FINAL.last("CMD") or "") == CMD
    assert FINAL.last("WORKDIR")
    assert "8080" in " ".join(FINAL.all("EXPOSE")).split()

    healthcheck = FINAL.last("HEALTHCHECK")
    assert healthcheck is not None
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    probe = exec_form(command)
    assert probe[0] == "python" and "/healthz" in probe[-1]

    env = final_env()
    volumes = [
        v
        for args in FINAL.all("VOLUME")
        for v in (json.loads(args) if args.startswith("[") else args.split())
    ]
    assert env["OTASHIP_DATA_DIR"] in volumes
    assert FINAL.last("WORKDIR") == env["OTASHIP_DATA_DIR"]


def test_configuration_is_only_otaship_variables_and_valid() -> None:
    env = final_env()
    allowed = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    assert {name for name in env if not name.startswith("OTASHIP_")} <= allowed
    settings = Settings.from_env(env)  # the image's own values parse
    assert settings.port == 8080
    from otaship.protocol import parse_mqtt_url

    parse_mqtt_url(settings.mqtt_url)
    # No secrets baked in.
    assert "OTASHIP_DATABASE_URL" not in env
    assert not any(re.search(r"(?i)(password|secret|key)", name) for name in env)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops `path` (its matching, without `!` exceptions)."""
    parts = PurePosixPath(path).parts
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatchcase(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatchcase(parts[depth - 1], pattern[3:])
            ):
                return True
    return False


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns)  # _ignored does not handle them
    for _, sources, _ in (copy_args(a) for a in BUILDER.all("COPY")):
        for source in sources:
            assert (REPO / source).exists(), source
            assert not _ignored(source.rstrip("/"), patterns), source
    for dropped in (
        ".git",
        ".venv",
        "tests/test_dockerfile.py",
        "src/otaship/receiver/__pycache__/app.cpython-311.pyc",
        "otaship-data/otaship.db",
        ".env",
    ):
        assert _ignored(dropped, patterns), dropped
    # Every source file of the package reaches the build.
    for path in (REPO / "src").rglob("*.py"):
        if "__pycache__" not in path.parts:
            assert not _ignored(str(path.relative_to(REPO)), patterns), path


# --- the commands, in a fresh venv ----------------------------------------------------


class ImageRoot:
    """A directory standing in for the image's filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: The image's own directories (WORKDIR, COPY targets, the venv, the data dir),
        #: longest first; anything else (/usr/local/bin, /bin) is the host's.
        self.prefixes: list[str] = []

    def claim(self, path: str) -> None:
        if path.startswith("/") and path not in self.prefixes:
            self.prefixes.append(path.rstrip("/") or "/")
            self.prefixes.sort(key=len, reverse=True)

    def host(self, path: str) -> str:
        for prefix in self.prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return str(self.root) + path
        return path

    def value(self, value: str) -> str:
        """An ENV value with the image's paths moved under the root (PATH-like lists too)."""
        return ":".join(self.host(part) for part in value.split(":"))


def _host_env() -> dict[str, str]:
    """This machine's environment without this project's venv or configuration."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTASHIP_", "PYTHON", "PIP_")) and name not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    # pip's own settings on this machine (its index, wheel folder) stay; a Docker
    # build would reach PyPI instead.
    env.update({name: value for name, value in os.environ.items() if name.startswith("PIP_")})
    own_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != own_bin)
    return env


def _base_python_dir(tmp_path: Path) -> Path:
    """A folder with `python`: the interpreter the base image would have."""
    shim = tmp_path / "base-bin"
    shim.mkdir()
    base = getattr(sys, "_base_executable", sys.executable)
    (shim / "python").symlink_to(base)
    return shim


def _stage_env(stage: Stage, image: ImageRoot, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    for args in stage.all("ENV"):
        for name, value in env_pairs(args):
            env[name] = image.value(_expand(value, env))
    return env


def build_like_docker(tmp_path: Path) -> tuple[ImageRoot, float]:
    """Carry out the builder stage's WORKDIR, COPY and RUN; returns the root and the seconds taken."""
    image = ImageRoot(tmp_path / "image")
    for stage in STAGES:
        for args in stage.all("WORKDIR"):
            image.claim(args)
        for args in stage.all("ENV"):
            for name, value in env_pairs(args):
                if name in ("VIRTUAL_ENV", "OTASHIP_DATA_DIR"):
                    image.claim(value)
        for args in stage.all("VOLUME"):
            for volume in json.loads(args) if args.startswith("[") else args.split():
                image.claim(volume)
        for args in stage.all("COPY"):
            image.claim(copy_args(args)[2])

    base = _host_env()
    base["PATH"] = f"{_base_python_dir(tmp_path)}{os.pathsep}{base['PATH']}"
    env = _stage_env(BUILDER, image, base)
    # The only change to the build itself: pip may use this machine's cache, which
    # makes the test about twice as fast. The cache never reaches an image.
    env.pop("PIP_NO_CACHE_DIR", None)

    started = time.monotonic()
    workdir = Path(image.host("/"))
    for instruction in BUILDER.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = Path(image.host(instruction.args))
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            flags, sources, dest = copy_args(instruction.args)
            assert not flags, "the builder copies from the build context"
            target = Path(image.host(dest)) if dest.startswith("/") else workdir / dest
            for source in sources:
                origin = REPO / source
                if origin.is_dir():
                    shutil.copytree(
                        origin,
                        target if dest.endswith("/") and len(sources) == 1 else target / origin.name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        dirs_exist_ok=True,
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif instruction.keyword == "RUN":
            assert not instruction.args.startswith("["), "RUN in shell form"
            result = subprocess.run(
                ["/bin/sh", "-c", instruction.args],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, (
                f"RUN {instruction.args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
    return image, time.monotonic() - started


def _healthcheck(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = exec_form((FINAL.last("HEALTHCHECK") or "").partition("CMD ")[2])
    timeout = float(re.search(r"--timeout=(\d+)s", FINAL.last("HEALTHCHECK") or "").group(1))  # type: ignore[union-attr]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_dockerfile_install_and_start_commands_in_a_fresh_venv(tmp_path: Path) -> None:
    """Slow (about a minute): pip installs the package and all its dependencies."""
    image, build_seconds = build_like_docker(tmp_path)
    print(f"builder stage RUN commands took {build_seconds:.1f} s")

    # The final stage: its ENV, with the test's port and no MQTT; its RUN lines
    # (creating the service user) need root and are not carried out, but the data
    # directory they create is.
    env = _stage_env(FINAL, image, _host_env())
    port = free_port()
    env.update({"OTASHIP_PORT": str(port), "OTASHIP_MQTT_URL": "none"})
    data_dir = Path(env["OTASHIP_DATA_DIR"])
    data_dir.mkdir(parents=True)
    workdir = Path(image.host(FINAL.last("WORKDIR") or "/"))
    command = exec_form(FINAL.last("CMD") or "")
    program = shutil.which(command[0], path=env["PATH"])
    assert program is not None and Path(program).is_relative_to(image.root), program
    health_python = shutil.which("python", path=env["PATH"])
    assert health_python is not None and Path(health_python).is_relative_to(image.root)

    process = subprocess.Popen(
        [program, *command[1:]], env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        health = _healthcheck(env, workdir)
        while health.returncode != 0 and time.monotonic() < deadline:
            assert process.poll() is None, f"otaship serve exited: {process.stdout.read().decode()}"  # type: ignore[union-attr]
            time.sleep(0.2)
            health = _healthcheck(env, workdir)
        assert health.returncode == 0, health.stderr
        # It serves the API on every interface, from the fresh venv's package.
        response = httpx.get(f"http://127.0.0.1:{port}/v1/ota/group", timeout=5)
        assert response.status_code == 401 and response.json() == {"message": "Unauthorized"}
        assert (data_dir / "otaship.db").exists()
    finally:
        process.terminate()
        try:
            output = process.communicate(timeout=15)[0].decode()
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0].decode()
    # A graceful stop on SIGTERM (docker stop); uvicorn then re-raises the signal.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert f"0.0.0.0:{port}" in output

    # With the server gone, the health check fails.
    assert _healthcheck(env, workdir).returncode != 0
