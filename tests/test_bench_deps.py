"""The bench's comparison frameworks are the bench's: orchestra never imports them."""

from __future__ import annotations

import subprocess
import sys

BENCH_ONLY = ("langgraph", "langchain_core", "langchain_anthropic", "crewai", "litellm")


def test_no_orchestra_module_imports_the_benchs_frameworks() -> None:
    code = (
        "import importlib, pkgutil, sys, orchestra_cli\n"
        "for m in pkgutil.walk_packages(orchestra_cli.__path__, 'orchestra_cli.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        f"found = [m for m in {BENCH_ONLY!r} if m in sys.modules]\n"
        "print('FOUND=' + ','.join(found))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "FOUND="
