import itertools

from orchestra_cli.status import TERMINAL, TRANSITIONS, Status, can_transition, is_terminal


def test_every_status_has_a_row_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(Status)


def test_the_happy_path_is_allowed() -> None:
    path = [Status.PENDING, Status.QUEUED, Status.RUNNING, Status.SUCCEEDED]
    assert all(can_transition(a, b) for a, b in itertools.pairwise(path))


def test_succeeded_is_final_but_for_a_step_sent_back_with_a_note() -> None:
    # `task retry --note`: only back to pending (a step) or waiting (its parent)
    assert TRANSITIONS[Status.SUCCEEDED] == frozenset({Status.PENDING, Status.WAITING})
    assert is_terminal("succeeded") and Status.SUCCEEDED in TERMINAL


def test_running_may_go_back_to_queued_for_a_retry_or_redelivery() -> None:
    assert can_transition("running", "queued")


def test_a_task_cannot_skip_the_queue() -> None:
    assert not can_transition(Status.PENDING, Status.RUNNING)
    assert not can_transition(Status.QUEUED, Status.SUCCEEDED)
