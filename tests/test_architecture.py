"""docs/architecture.md is true: the modules it names exist, and imports keep to its layers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
MAP = (ROOT / "docs" / "architecture.md").read_text()

# package -> the otaship packages it must never import (at any depth).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "otaship.protocol": ("otaship.receiver", "otaship.action", "otaship.simulator", "otaship.firmware"),
    "otaship.firmware": ("otaship.receiver", "otaship.action", "otaship.simulator"),
    "otaship.github_deployments": (
        "otaship.receiver",
        "otaship.action",
        "otaship.simulator",
        "otaship.firmware",
    ),
    "otaship.action": ("otaship.receiver", "otaship.simulator"),
    "otaship.receiver.db": (
        "otaship.receiver.http",
        "otaship.receiver.intake",
        "otaship.receiver.rollouts",
        "otaship.receiver.mqtt",
        "otaship.receiver.gc",
        "otaship.receiver.targeting",
    ),
    "otaship.receiver.storage": (
        "otaship.receiver.http",
        "otaship.receiver.intake",
        "otaship.receiver.rollouts",
        "otaship.receiver.mqtt",
        "otaship.receiver.gc",
        "otaship.receiver.targeting",
        "otaship.receiver.db",
    ),
    "otaship.receiver.targeting": (
        "otaship.receiver.http",
        "otaship.receiver.intake",
        "otaship.receiver.mqtt",
        "otaship.receiver.rollouts",
    ),
    "otaship.receiver.gc": ("otaship.receiver.http", "otaship.receiver.mqtt", "otaship.receiver.rollouts"),
    "otaship.receiver.rollouts": (
        "otaship.receiver.http",
        "otaship.receiver.intake",
        "otaship.receiver.mqtt",
    ),
    "otaship.receiver.intake": ("otaship.receiver.http", "otaship.receiver.mqtt"),
    "otaship.receiver.mqtt": ("otaship.receiver.http", "otaship.receiver.intake"),
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_keep_to_the_layers(path: Path) -> None:
    name = module_name(path)
    for package, forbidden in FORBIDDEN.items():
        if inside(name, package):
            bad = sorted(i for i in imports(path) for f in forbidden if inside(i, f))
            assert not bad, f"{name} imports {bad}, which docs/architecture.md puts above it"


def test_the_simulator_touches_the_receiver_only_lazily() -> None:
    for path in (SRC / "otaship" / "simulator").rglob("*.py"):
        eager = sorted(i for i in imports(path, top_level_only=True) if inside(i, "otaship.receiver"))
        assert not eager, f"{module_name(path)} imports {eager} at module level"


def test_every_module_the_map_names_exists() -> None:
    block = MAP.split("```")[1]
    package = Path()
    named = 0
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        words = re.findall(r"[\w/]+\.py|\b\w+/", line)
        for position, word in enumerate(words):
            leading = position == 0 and line.lstrip().startswith(word)
            if leading and word.endswith("/") and indent <= 4:
                package = Path(*package.parts[: indent // 2]) / word.rstrip("/")
                assert (SRC / package).is_dir(), (
                    f"docs/architecture.md names {package}/, which does not exist"
                )
            elif word.endswith(".py"):
                base = Path(*package.parts[: indent // 2]) if leading else package
                assert (SRC / base / word).is_file(), (
                    f"docs/architecture.md names {base / word}, which does not exist"
                )
            elif word.endswith("/"):
                assert (SRC / package / word).is_dir(), f"docs/architecture.md names {package / word}"
            named += 1
    assert named > 30


def test_every_package_is_on_the_map() -> None:
    for directory in sorted((SRC / "otaship").rglob("*/")):
        if directory.name in {"__pycache__", "versions", "migrations"} or not any(directory.glob("*.py")):
            continue
        assert f"{directory.name}/" in MAP, f"docs/architecture.md does not name {directory.relative_to(SRC)}"


# Test folders that stand for no package: the fault-injection suite, which breaks
# several layers at once, and the stand-in for PlatformIO that the action tests run.
CROSS_CUTTING = {"faults", "fake_pio"}


def test_the_test_tree_mirrors_the_source_tree() -> None:
    tests = ROOT / "tests"
    folders = [d for d in sorted(tests.rglob("*/")) if d.name != "__pycache__"]
    assert len(folders) > 10
    for folder in folders:
        relative = folder.relative_to(tests)
        if CROSS_CUTTING & set(relative.parts):
            continue
        assert (SRC / "otaship" / relative).is_dir(), (
            f"tests/{relative} has no package src/otaship/{relative} to mirror"
        )
