"""Stop reasons are outcomes: what a call's ``stop_reason`` means for its task.

- ``end_turn``, ``stop_sequence``, ``tool_use``: the answer is complete.
- ``refusal``: the model declined; the task fails with the reason and is not
  retried (``LLMRefusal``: the same request would be refused again).
- ``max_tokens``: the output was cut. A text answer is continued — the cut
  turn goes back with a request to go on — at most ``max_continuations``
  times, and the pieces are joined; still cut, the task fails with "output
  truncated at max_tokens" (``LLMTruncated``), never a silent success.
- ``pause_turn``: the API paused a long turn; it is sent back as it is, and
  the model resumes (bounded like a continuation).
- ``model_context_window_exceeded``: the prompt and the output do not fit;
  the task fails (not retried).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestra_cli.errors import LLMError, LLMRefusal, LLMTruncated
from orchestra_cli.llm.base import LLMProvider, LLMRequest, LLMResponse, Turn
from orchestra_cli.models import Usage

CONTINUE_PROMPT = (
    "Your answer was cut off at the output limit. Continue exactly where it stopped, "
    "without repeating anything already written."
)


def check_final(response: LLMResponse, model: str) -> None:
    """Raise for a stop reason that ends the task: a refusal, a full context window."""
    if response.stop_reason == "refusal":
        raise LLMRefusal(
            f"the model ({response.model or model}) refused the request (stop_reason: refusal)",
            "a refusal is not retried; change the task's text, then submit it again",
        )
    if response.stop_reason == "model_context_window_exceeded":
        error = LLMError(
            f"the prompt and its answer do not fit {response.model or model}'s context window",
            "shorten the task's input or its dependencies' results",
        )
        error.retryable = False
        raise error


class Continued:
    """The calls of one text answer: ``next()`` the request to send, ``add()`` its
    response, until ``next()`` is None; then ``response``. The same for a thread
    (``complete_text``) and a coroutine (``acomplete_text``)."""

    def __init__(self, request: LLMRequest, max_continuations: int) -> None:
        self.first = request
        self.request: LLMRequest | None = request
        self.left = max_continuations + 1
        self.pieces: list[str] = []
        self.usage = Usage()
        self.response: LLMResponse | None = None

    def next(self) -> LLMRequest | None:
        if self.request is not None and self.left == 0:
            raise LLMTruncated(
                f"output truncated at max_tokens ({self.request.max_tokens}) after "
                f"{len(self.pieces) - 1} continuation(s)",
                "raise max_tokens in the role file (or llm.max_tokens), or llm.max_continuations",
            )
        return self.request

    def add(self, response: LLMResponse) -> None:
        assert self.request is not None
        self.left -= 1
        self.usage = self.usage + response.usage
        check_final(response, self.first.model)
        self.pieces.append(response.text)
        if response.stop_reason not in ("max_tokens", "pause_turn"):
            self.response = replace(response, text="".join(self.pieces), usage=self.usage)
            self.request = None
            return
        turns = [response.as_turn()]
        if response.stop_reason == "max_tokens":
            turns.append(Turn(role="user", text=CONTINUE_PROMPT))
        self.request = replace(self.request, followups=[*self.request.followups, *turns])


def complete_text(
    provider: LLMProvider, request: LLMRequest, *, max_continuations: int
) -> LLMResponse:
    """One text answer: continued past ``max_tokens`` and ``pause_turn``, bounded.

    The response's ``text`` joins every piece and ``usage`` sums every call
    (each call is charged on its own by a metered provider).
    """
    calls = Continued(request, max_continuations)
    while (req := calls.next()) is not None:
        calls.add(provider.complete(req))
    assert calls.response is not None
    return calls.response


async def acomplete_text(
    provider: Any, request: LLMRequest, *, max_continuations: int
) -> LLMResponse:
    """``complete_text`` with a provider's ``acomplete`` (see ``llm.base.awaitable``)."""
    calls = Continued(request, max_continuations)
    while (req := calls.next()) is not None:
        calls.add(await provider.acomplete(req))
    assert calls.response is not None
    return calls.response
