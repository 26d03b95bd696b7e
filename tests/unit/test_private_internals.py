"""Libraries' private internals stay quarantined: pika's in broker/pika_fast.py, typer's in
cli/typer_private.py, each with a public-API fallback and a canary test.

The rule, checked on the source of ``orchestra_cli/`` (the AST; imports inside
functions count) for every module but those two:

1. no import of a private module or name of pika or typer (``pika.adapters.x._y``,
   ``from typer._completion_shared import …``, ``from pika.x import _Y``), nor a
   string naming one (``importlib.import_module("typer._completion_classes")``);
2. no attribute path from the ``pika`` or ``typer`` module through a private name
   (``pika.adapters.blocking_connection._IoloopTimerContext``);
3. no ``x._name`` where ``_name`` is one the quarantined modules use (the canaries'
   lists: ``_impl``, ``_transport``, ``_flush_output``, ``_closing_reason``…), unless
   ``x`` is ``self``/``cls`` and orchestra's class defines a ``_name`` of its own;
4. no ``x._name`` (``x`` not ``self``/``cls``) where ``_name`` is private in pika's or
   typer's own source (a method, a class, an attribute they assign) and orchestra's
   code outside the quarantine defines no ``_name`` of its own.

Whether ``x`` holds a pika object is not known statically; rules 3 and 4 are the
pragmatic stand-in: a private name only pika or typer defines belongs to them. A
private name orchestra defines too (``_lock``, ``_conn``) is let through unless a
quarantined module uses it (rule 3).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from orchestra_cli.broker import pika_fast
from orchestra_cli.cli import typer_private

PACKAGE = Path(__file__).resolve().parents[2] / "orchestra_cli"
LIBRARIES = ("pika", "typer")
QUARANTINE = {
    PACKAGE / "broker" / "pika_fast.py": "pika",
    PACKAGE / "cli" / "typer_private.py": "typer",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_path(dotted: str) -> bool:
    """``pika.x._y`` or ``typer._z``: a library's name with a private part."""
    parts = dotted.split(".")
    return parts[0] in LIBRARIES and any(_private(p) for p in parts[1:])


def _defined(tree: ast.AST) -> set[str]:
    """Private names a source defines: functions, classes, assigned names and attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Name):
                    names.add(part.id)
                elif isinstance(part, ast.Attribute):
                    names.add(part.attr)
    return {n for n in names if _private(n)}


def _sources(root: Path) -> Iterable[Path]:
    return sorted(root.rglob("*.py"))


@cache
def library_private_names() -> frozenset[str]:
    names: set[str] = set()
    for library in LIBRARIES:
        spec = importlib.util.find_spec(library)
        assert spec is not None and spec.origin is not None, library
        for path in _sources(Path(spec.origin).parent):
            names |= _defined(ast.parse(path.read_text(encoding="utf-8")))
    return frozenset(names)


@cache
def orchestra_private_names() -> frozenset[str]:
    names: set[str] = set()
    for path in _sources(PACKAGE):
        if path not in QUARANTINE:
            names |= _defined(ast.parse(path.read_text(encoding="utf-8")))
    return frozenset(names)


def quarantined_names() -> frozenset[str]:
    """Every private name the canaries list (the quarantined modules' whole use)."""
    dotted = [n.where for n in (*pika_fast.NEEDS, *pika_fast.LIVE_NEEDS)]
    dotted += [f"{module}.{name}" for module, name, _ in typer_private.NEEDS]
    return frozenset(p for d in dotted for p in d.split(".") if _private(p))


def _attribute_path(node: ast.Attribute) -> str | None:
    parts = [node.attr]
    value: ast.expr = node.value
    while isinstance(value, ast.Attribute):
        parts.append(value.attr)
        value = value.value
    if isinstance(value, ast.Name):
        return ".".join([value.id, *reversed(parts)])
    return None


def _base_is_self(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def violations(source: str, where: str) -> list[str]:
    """What in ``source`` (a module outside the quarantine) breaks the rule, one line each."""
    found: list[str] = []
    strict, library = quarantined_names(), library_private_names()
    own = orchestra_private_names()
    for node in ast.walk(ast.parse(source)):
        at = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{at} imports {a.name}" for a in node.names if _private_path(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in LIBRARIES:
                names = [f"{node.module}.{a.name}" for a in node.names]
                found += [f"{at} imports {n}" for n in names if _private_path(n)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _private_path(node.value) and " " not in node.value:
                found += [f"{at} names {node.value!r}"]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            path = _attribute_path(node)
            if path is not None and _private_path(path):
                found.append(f"{at} reaches {path}")
            elif node.attr in strict and not (_base_is_self(node) and node.attr in own):
                found.append(f"{at} uses .{node.attr} (quarantined: pika_fast / typer_private)")
            elif node.attr in library and node.attr not in own and not _base_is_self(node):
                found.append(f"{at} uses .{node.attr}, private in pika or typer")
    return found


def test_only_the_quarantined_modules_touch_pika_or_typer_internals() -> None:
    found = []
    for path in _sources(PACKAGE):
        if path not in QUARANTINE:
            where = str(path.relative_to(PACKAGE.parent))
            found += violations(path.read_text(encoding="utf-8"), where)
    assert found == [], "\n".join(found)


def test_the_quarantined_modules_exist_and_are_the_ones_the_canaries_cover() -> None:
    for path, library in QUARANTINE.items():
        text = path.read_text(encoding="utf-8")
        assert library in text and "canary" in text, path


def test_the_check_sees_each_kind_of_reach_into_internals() -> None:
    source = "\n".join(
        [
            "import pika.adapters._private_mod",
            "from pika.adapters.blocking_connection import _IoloopTimerContext",
            "from typer._completion_classes import completion_init",
            "import importlib",
            "importlib.import_module('typer._completion_shared')",
            "timer = pika.adapters.blocking_connection._IoloopTimerContext",
            "delivery.channel._impl.basic_ack(tag)",
            "conn._adapter_emit_data(b'')",
            "ctx._protected_args",
        ]
    )
    found = violations(source, "m.py")
    lines = sorted(int(line.split(" ", 1)[0].split(":")[1]) for line in found)
    assert lines == [1, 2, 3, 5, 6, 7, 8, 9], found  # each once; `import importlib` is fine


def test_the_check_lets_orchestras_own_private_names_and_public_pika_through() -> None:
    source = "\n".join(
        [
            "import pika.exceptions",
            "from pika.adapters.blocking_connection import BlockingConnection",
            "broker._url, broker._call(command)",  # RabbitBroker's own
            "self._conn.channel()",
            "link._channel.unwritten",
            "log.info('pika._x is a sentence, not a name')",
        ]
    )
    assert violations(source, "m.py") == []
