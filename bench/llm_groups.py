"""`make bench`'s LLM-bound and tool-loop groups (issue 20): their flags and their run."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

GROUPS = ("noop", "llm", "tools")  # noop: the no-op rows, CLI start-up, queries
TOOL_SYSTEMS = "orchestra,orchestra-2,raw,langgraph,langgraph-sqlite,crewai"


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only", default=",".join(GROUPS), help=f"comma-separated groups of {', '.join(GROUPS)}"
    )
    llm = parser.add_argument_group("llm-bound rows (--only llm)")
    llm.add_argument("--llm-slots", type=_ints, default=[64, 256, 1024], help="in flight, each row")
    llm.add_argument("--llm-rounds", type=int, default=5, help="tasks per row: slots x rounds")
    llm.add_argument("--llm-delay", type=float, default=1.0, help="the endpoint's delay, seconds")
    llm.add_argument("--llm-mode", default="services", choices=["services", "embedded"])
    llm.add_argument("--soak-n", type=int, default=10_000, help="tasks of the RSS soak (0: none)")
    llm.add_argument("--soak-slots", type=int, default=256, help="in flight during the soak")
    tools = parser.add_argument_group("tool-loop rows (--only tools)")
    tools.add_argument("--tool-sizes", type=_ints, default=[100, 400], help="tasks at once")
    tools.add_argument("--tool-delay", type=float, default=0.5, help="seconds per model turn")
    tools.add_argument("--tool-systems", default=TOOL_SYSTEMS, help="comma-separated subset")


def groups(args: argparse.Namespace) -> set[str]:
    wanted = set(args.only.split(","))
    unknown = wanted - set(GROUPS)
    if unknown:
        raise SystemExit(f"bench: unknown group(s) {', '.join(sorted(unknown))}; use {GROUPS}")
    return wanted


def run(args: argparse.Namespace, wanted: set[str]) -> dict[str, Any]:
    """Run the wanted groups, print their tables; their part of latest.json."""
    out: dict[str, Any] = {}
    if "llm" in wanted:
        from bench.llm_rows import llm_rows, print_llm_rows

        rows = llm_rows(
            args.llm_slots,
            args.llm_rounds,
            args.llm_delay,
            args.llm_mode,
            args.soak_n,
            args.soak_slots,
        )
        print_llm_rows(rows)
        out["llm_rows"] = [asdict(r) | {"pct_ideal": r.pct_ideal} for r in rows]
    if "tools" in wanted:
        from bench.tool_rows import print_tool_rows, tool_rows

        systems = args.tool_systems.split(",")
        rows_ = tool_rows(args.tool_sizes, args.tool_delay, systems, args.llm_mode)
        print_tool_rows(rows_)
        out["tool_rows"] = [asdict(r) for r in rows_]
    return out
