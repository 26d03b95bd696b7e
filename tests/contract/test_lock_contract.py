"""The Locks contract (state/base.py, state/locks.py): every backend passes the same tests."""

from __future__ import annotations

import threading
import time

from orchestra_cli.backends import Backends
from orchestra_cli.models import Task


def _task(**kw: object) -> Task:
    return Task(title=str(kw.pop("title", "t")), input="do it", **kw)  # type: ignore[arg-type]


def test_the_recovery_sweep_runs_under_the_store_lock_and_releases_it(
    contract_backends: Backends,
) -> None:
    from orchestra_cli.engine.recovery import locked_sweep

    assert locked_sweep(contract_backends, ttl=5) == []
    assert locked_sweep(contract_backends, ttl=5) == []  # the lock was released
    held = contract_backends.state.lock("recovery-sweep", 5)
    assert held.acquire()  # while another holder has it, the sweep stands aside
    try:
        assert locked_sweep(contract_backends, ttl=5) is None
    finally:
        held.release()


def test_a_lock_is_exclusive_released_only_by_its_holder_and_expires(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    first, second = state.lock("sweep", ttl=0.5), state.lock("sweep", ttl=0.5)
    assert first.acquire()
    assert not second.acquire()
    assert not second.release()  # a stranger's token cannot free the lock
    assert first.owned() and not second.owned()
    assert state.lock("other", ttl=0.5).acquire()  # names are independent
    time.sleep(0.7)
    assert second.acquire()  # the first holder's lock expired
    assert not first.renew() and first.lost.is_set()
    assert not first.release()  # nor can the expired holder free the new one
    assert second.owned() and second.release()


def test_renewal_keeps_a_long_holder_and_a_blocking_acquire_waits_for_the_release(
    contract_backends: Backends,
) -> None:
    state = contract_backends.state
    holder = state.lock("aggregate:p1", ttl=0.3)
    assert holder.acquire()
    holder.auto_renew()
    time.sleep(0.9)
    assert not state.lock("aggregate:p1", ttl=0.3).acquire()  # renewed past three TTLs
    threading.Timer(0.3, holder.release).start()
    waiter = state.lock("aggregate:p1", ttl=0.3)
    started = time.monotonic()
    assert waiter.acquire(blocking=True, timeout=5)
    assert 0.2 <= time.monotonic() - started < 3
    assert waiter.release()
    with state.lock("aggregate:p1", ttl=1) as taken:  # ``with``: taken, then freed
        assert taken.owned()
    assert state.lock("aggregate:p1", ttl=1).acquire()


def test_a_lock_excludes_other_processes_on_the_same_store(contract_backends: Backends) -> None:
    """Two processes, one lock: the second waits until the first frees it."""
    import subprocess
    import sys
    import textwrap

    from tests.contract.conftest import settings_env

    state = contract_backends.state
    held = state.lock("cross-process", ttl=5)
    assert held.acquire()
    script = textwrap.dedent(
        """
        import sys, time
        from orchestra_cli.backends import open_backends
        from orchestra_cli.settings import load_settings
        b = open_backends(load_settings().settings)
        lock = b.state.lock("cross-process", ttl=5)
        print("free" if lock.acquire() else "held", flush=True)
        started = time.monotonic()
        ok = lock.acquire(blocking=True, timeout=10)
        print("taken" if ok else "timeout", round(time.monotonic() - started, 2), flush=True)
        lock.release()
        b.close()
        """
    )
    env = settings_env(contract_backends)
    with subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "held"
            time.sleep(0.5)
            assert held.release()
            word, waited = child.stdout.readline().split()
            assert child.wait(timeout=20) == 0
        finally:
            child.kill()
    assert word == "taken" and float(waited) >= 0.4
