"""One error hierarchy and one set of exit codes for the whole tool.

Adapters turn library exceptions into these with ``raise … from``; the CLI's
single error handler (``cli.main``) renders them as
``orchestra: error: <what failed> — <what to do>`` and exits with
``exc.exit_status``.
"""

from __future__ import annotations

import enum
from typing import Any


class ExitStatus(enum.IntEnum):
    """Documented process exit codes (README, ``orchestra --help``)."""

    OK = 0
    FAILURE = 1  # the thing asked about failed: a task failed, a check failed
    USAGE = 2  # bad command line, bad input, bad config
    UNAVAILABLE = 3  # a required service is unreachable
    INTERRUPTED = 130  # Ctrl-C


class OrchestraError(Exception):
    """Root of every error orchestra reports to a person.

    ``message`` says what failed, ``hint`` what to do about it.
    """

    exit_status: ExitStatus = ExitStatus.FAILURE

    def __init__(
        self, message: str, hint: str | None = None, *, api_hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.api_hint = api_hint  # the hint worded for the API (routes, not CLI flags)

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class UsageError(OrchestraError):
    """Bad input from the operator: arguments, task text, files."""

    exit_status = ExitStatus.USAGE


class ConfigError(OrchestraError):
    """Malformed or invalid configuration."""

    exit_status = ExitStatus.USAGE


class NotFoundError(OrchestraError):
    """An id or name that does not exist."""

    exit_status = ExitStatus.FAILURE


class ConflictError(OrchestraError):
    """The request conflicts with the task's current state (retrying a task that
    succeeded, cancelling one that ended, answering one that waits for nothing):
    exit 1 in the CLI, 409 in the API."""

    exit_status = ExitStatus.FAILURE


class StateError(OrchestraError):
    """The state store failed."""


class StateUnavailable(StateError):
    """The state store cannot be reached."""

    exit_status = ExitStatus.UNAVAILABLE


class TransitionRejected(StateError):
    """A status transition the status machine or the version check refused.

    ``current`` is the task as it stands, so the caller can see why.
    """

    def __init__(self, message: str, current: object = None) -> None:
        super().__init__(message)
        self.current = current


class BrokerError(OrchestraError):
    """The message broker failed."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached."""

    exit_status = ExitStatus.UNAVAILABLE


class Undelivered(BrokerUnavailable):
    """A task is stored but its message could not be sent (it runs later: the
    orchestrator's recovery sweep sends the messages of stored tasks again)."""

    def __init__(self, task_id: str, cause: OrchestraError) -> None:
        super().__init__(
            f"task {task_id} is stored, but its message could not be sent: {cause.message}",
            "do not submit it again: it runs once the broker is back (the orchestrator's "
            "recovery sweep sends it; `orchestra recover` does it at once)",
        )
        self.task_id = task_id
        self.stored: list[Any] = []  # a bulk submit's: every (task, created) it stored
        self.unsent: set[str] = {task_id}  # … and those of them whose message did not go


class PartlyStored(StateError):
    """A bulk create stopped part-way: ``stored`` holds the (task, created) known to be
    stored, in order; of the others some may be stored too (a reply lost with Redis)."""

    def __init__(self, stored: list[Any], of: int, cause: OrchestraError) -> None:
        super().__init__(
            f"{len(stored):,} of {of:,} tasks stored; the state store failed on the "
            f"others: {cause.message}",
            "`orchestra task list` shows what was stored; submit the rest again "
            "(with idempotency keys, submitting again is always safe)",
        )
        self.stored = stored
        self.cause = cause
        self.exit_status = cause.exit_status  # e.g. 3 when Redis went away


class MalformedMessage(BrokerError):
    """A message on a queue that is not a valid orchestra envelope."""


class SecretsError(OrchestraError):
    """A secret could not be resolved."""


class SecretsUnavailable(SecretsError):
    """The secrets backend cannot be reached."""

    exit_status = ExitStatus.UNAVAILABLE


class ServiceError(OrchestraError):
    """`orchestra up/down/ps/logs`: a local service could not be started, stopped or reached."""

    exit_status = ExitStatus.UNAVAILABLE


class LLMError(OrchestraError):
    """The LLM provider failed.

    ``retryable`` says whether running the task again could help; ``usage`` is what a
    call that broke off had used (it is charged).
    """

    retryable: bool = True
    usage: object = None


class LLMAuthError(LLMError):
    """The provider refused the credentials; retrying cannot help."""

    retryable = False


class LLMOutputInvalid(LLMError):
    """The model's output did not validate after the allowed re-asks.

    ``raw_output`` is the last output, for the error event.
    """

    raw_output: str = ""


class LLMRefusal(LLMError):
    """The model declined the request (``stop_reason: refusal``); it would again."""

    retryable = False


class LLMTruncated(LLMError):
    """The output stopped at ``max_tokens`` and the allowed continuations ran out."""

    retryable = False


class BudgetExceeded(LLMError):
    """A task tree spent its token or USD budget; no more calls are made."""

    retryable = False


class TaskTimeout(OrchestraError):
    """A task ran past its timeout."""


class TaskCancelled(OrchestraError):
    """A task was cancelled while it ran.

    ``usage`` is what a model call stopped mid-way had used, so it is charged.
    """

    usage: object = None
