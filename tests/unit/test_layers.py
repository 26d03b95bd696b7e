"""The architecture's dependency rules (README "How it works"), checked on the source.

Layers, top to bottom; a module may import from its own layer and the ones below,
never above — imports inside functions (the lazy ones) count too:

    cli/  api/                      front ends (cli also: main, completion)
    engine/                         the application: TaskService, orchestrator, agent, loop
    state/  broker/  secrets/  llm/  tools/  services/   the seams and their backends
    models, settings, status, errors, util, ids, … (top-level modules): the base

The top-level modules besides the base (backends, health, reports, snapshots, …)
sit between the seams and the engine: they wire and read the seams.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orchestra_cli"
FRONT = {"cli", "api"}
ENGINE = {"engine"}
SEAMS = {"state", "broker", "secrets", "llm", "tools", "services"}
MAX_MODULE_LINES = 600


def _layer(module: str) -> str:
    """cli|api → front, engine → engine, a seam package → seam, else top (top-level)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "orchestra_cli":
        return "outside"
    head = parts[1]
    if head in FRONT:
        return "front"
    if head in ENGINE:
        return "engine"
    if head in SEAMS:
        return "seam"
    return "top"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(n, m) for n, m in found if m.startswith("orchestra_cli.")]


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((".".join(rel.parts), path))
    return out


FORBIDDEN = {  # importer layer → layers it must not import
    "engine": {"front"},
    "seam": {"front", "engine"},
    "top": {"front"},
}


def _upward(module: str, path: Path) -> list[str]:
    """The imports of ``module`` (at ``path``) that reach a layer above it."""
    importer = _layer(module)
    return [
        f"{module}:{line} imports {target}"
        for line, target in _imports(path)
        if _layer(target) in FORBIDDEN.get(importer, set())
    ]


def test_no_module_imports_from_a_layer_above_it() -> None:
    wrong = []
    for module, path in _modules():
        if module != "orchestra_cli.__main__":  # the entry point runs the CLI
            wrong += _upward(module, path)
    assert wrong == [], "\n".join(wrong)


def test_api_and_engine_never_import_the_cli() -> None:
    """The rule issue 15 named: JSON shapes live in orchestra_cli/shapes.py."""
    for module, path in _modules():
        if _layer(module) in ("engine",) or module.startswith("orchestra_cli.api"):
            assert not [t for _, t in _imports(path) if t.startswith("orchestra_cli.cli")], module


def test_front_ends_reach_the_state_only_through_the_task_service() -> None:
    """cli/ and api/ never call the state store's methods themselves."""
    offenders = []
    for module, path in _modules():
        if _layer(module) != "front":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "state"
                and not (isinstance(node.value.value, ast.Name) and node.value.value.id == "app")
            ):
                offenders.append(f"{module}:{node.lineno} .state.{node.attr}")
    assert offenders == [], "\n".join(offenders)


@pytest.mark.parametrize("module,path", _modules(), ids=lambda v: str(v).rsplit("/", 1)[-1])
def test_modules_stay_short(module: str, path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines: split it by concern"


def test_the_layer_check_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself, on a module that breaks the rules (a lazy import included)."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from orchestra_cli.models import Task\n"
        "def f():\n"
        "    from orchestra_cli.cli.render import task_json\n"
        "    import orchestra_cli.engine.service\n"
    )
    assert _upward("orchestra_cli.engine.bad", bad) == [
        "orchestra_cli.engine.bad:3 imports orchestra_cli.cli.render",
        "orchestra_cli.engine.bad:3 imports orchestra_cli.cli.render.task_json",
    ]
    assert len(_upward("orchestra_cli.state.bad", bad)) == 3  # the engine import too
    assert _upward("orchestra_cli.cli.bad", bad) == []  # the front end may import both
