"""Following a task: the one loop behind `task watch`, the API's WebSocket stream and
`task submit --wait`.

A ``Follower`` reads, each step, the followed task and the tree's events after the
last one it read (a subtask's follower keeps only its own subtree's events). It
has ended once the task has ended *and* a later read found nothing new: a cancel
writes its subtasks' events just after the task's own. ``follow`` drives a
follower in this thread, blocking on the event log between steps (a change shows
at once, without polling); an async caller (the WebSocket) drives ``poll`` itself.
With ``events=False`` only the end wakes the caller (``TaskStore.wait_ended``): what
`submit --wait` needs, without reading every event of a busy tree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestra_cli.errors import BrokerError, BrokerUnavailable
from orchestra_cli.models import Event, Task
from orchestra_cli.status import TERMINAL

if TYPE_CHECKING:
    from orchestra_cli.backends import Backends

log = logging.getLogger(__name__)

WAIT_SECONDS = 1.0  # longest block on the event log before status and deadline are checked
FLUSH_SECONDS = 2.0  # longest an end-only wait spends asking the broker about its messages
PAGE = 1000


@dataclass
class Update:
    """One step of a follow."""

    task: Task  # the followed task, as it is now
    events: list[Event] = field(default_factory=list)  # new events of its subtree, in order
    ended: bool = False  # the last update: the task has ended and its last events are in
    timed_out: bool = False  # the last update: the caller's timeout passed first
    full_page: bool = False  # more events are waiting: read again at once


class Follower:
    """Where one follow is: the last event read and the tasks whose events it shows."""

    def __init__(
        self,
        b: Backends,
        subtree: Callable[[str], list[Task]],
        task: Task,
        *,
        after: int = 0,
    ) -> None:
        self.b = b
        self._subtree = subtree
        self.task = task
        self.seq = after
        self._ended_seen = False
        # a subtask's follow shows only its own subtree; the root's shows everything
        self.members: set[str] | None = None if task.id == task.root_id else self._members()

    def _members(self) -> set[str]:
        return {t.id for t in self._subtree(self.task.id)}

    def poll(self, wait: float = 0.0) -> Update:
        """The task and the events since the last poll (blocking up to ``wait`` for one,
        unless the task has ended already: then only its last events are awaited)."""
        state = self.b.state
        current = state.get_task(self.task.id)  # first: an end is then in the read below
        block = 0.0 if self._ended_seen or current.status in TERMINAL else wait
        events = state.events(root_id=self.task.root_id, after=self.seq, limit=PAGE, wait=block)
        quiet, full = not events, len(events) >= PAGE  # of the tree's log, before filtering
        self.seq = events[-1].seq if events else self.seq
        if self.members is not None:
            if any(e.type == "created" for e in events):
                self.members = self._members()
            events = [e for e in events if e.task_id in self.members]
        ended = current.status in TERMINAL and self._ended_seen and quiet
        self._ended_seen = current.status in TERMINAL
        self.task = current
        return Update(current, events, ended=ended, full_page=full)


def follow(
    b: Backends,
    subtree: Callable[[str], list[Task]],
    task: Task,
    *,
    after: int = 0,
    timeout: float | None = None,
    events: bool = True,
    counted: bool = False,
) -> Iterator[Update]:
    """Updates until the task has ended (the last one says ``ended``) or ``timeout``
    seconds have passed (the last one says ``timed_out``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    if not events:
        yield _until_end(b, task, deadline, counted=counted)
        return
    follower = Follower(b, subtree, task, after=after)
    while True:
        left = WAIT_SECONDS if deadline is None else min(WAIT_SECONDS, deadline - time.monotonic())
        update = follower.poll(max(0.0, left))
        if not update.ended and deadline is not None and time.monotonic() >= deadline:
            update.timed_out = True
        yield update
        if update.ended or update.timed_out:
            return


def _until_end(b: Backends, task: Task, deadline: float | None, *, counted: bool) -> Update:
    """Block until ``task`` has ended (or ``deadline``); only its end wakes the caller.

    Between steps (one a second) the broker is asked, briefly, what it did with
    this process's messages: one it returned is an error (if the task has not
    ended after all), not a silent hang; an unreachable broker is only a warning —
    the outcome is read from the state store, and the recovery sweep re-sends a
    lost message.
    """
    state = b.state
    warned = False
    while task.status not in TERMINAL:
        left = WAIT_SECONDS if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return Update(state.get_task(task.id), timed_out=True)
        ended = state.wait_ended(task.id, min(left, WAIT_SECONDS), counted=counted)
        if ended is not None:
            return Update(ended, ended=True)
        counted = True
        left = FLUSH_SECONDS if deadline is None else deadline - time.monotonic()
        if left <= 0:
            continue
        try:  # what did the broker do with the messages this process sent?
            # returns of a live connection; a dropped one is not reconnected here (a
            # connect attempt is not bounded by this wait's deadline)
            b.broker.flush(min(left, FLUSH_SECONDS), reconnect=False)
        except BrokerUnavailable as exc:
            if not warned:
                log.warning("waiting for task %s without the broker: %s", task.id, exc)
                warned = True
        except BrokerError:  # it returned one: an error, unless the task ended anyway
            task = state.get_task(task.id)
            if task.status not in TERMINAL:
                raise
    return Update(task, ended=True)
