"""The metrics module's own logic: hooks off by default, the event log's last sequence."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from orchestra_cli.metrics import _last


@pytest.mark.parametrize("seqs", [[], [1], [1, 2, 3], list(range(1, 1001)), [5, 9, 1_234_567]])
def test_the_last_sequence_of_the_event_log_is_found_in_logarithmic_reads(
    seqs: list[int],
) -> None:
    reads = 0

    def after(n: int) -> bool:
        nonlocal reads
        reads += 1
        return any(s > n for s in seqs)

    assert _last(after) == max(seqs, default=0)
    assert reads <= 2 * math.log2(max(seqs, default=1) + 1) + 3


def test_hooks_do_nothing_and_import_nothing_until_a_process_enables_metrics() -> None:
    code = (
        "import sys\n"
        "from orchestra_cli import metrics\n"
        "metrics.llm_call({'model': 'm', 'role': 'r', 'input_tokens': 5})\n"
        "metrics.tool_call('Bash', False, 0.1)\n"
        "metrics.recovered([])\n"
        "print(metrics.enabled(), 'prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
