"""Request bodies; responses are the CLI's ``--json`` shapes (``cli.render``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from orchestra_cli.engine.budget import LABEL_TOKENS, LABEL_USD
from orchestra_cli.engine.service import SubmitRequest


class Budget(BaseModel):
    """A spending cap for the whole task tree."""

    model_config = ConfigDict(extra="forbid")

    usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    tokens: int | None = Field(default=None, gt=0)


class SubmitBody(BaseModel):
    """``POST /v1/tasks``: the options of `orchestra task submit`.

    Range checks (empty text, priority, timeout…) are the service's, as for
    the CLI, so both reject the same input with the same words.
    """

    model_config = ConfigDict(extra="forbid")

    text: str
    title: str | None = None
    capability: str | None = None
    priority: int | None = None
    timeout: float | None = None
    max_attempts: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None
    budget: Budget | None = Field(default=None, description='{"usd": 0.5} and/or {"tokens": 20000}')

    def to_request(self) -> SubmitRequest:
        """The service's request; a budget becomes the labels the budget hook reads."""
        labels = dict(self.labels)
        if self.budget is not None:
            if self.budget.usd is not None:
                labels[LABEL_USD] = str(self.budget.usd)
            if self.budget.tokens is not None:
                labels[LABEL_TOKENS] = str(self.budget.tokens)
        return SubmitRequest(
            text=self.text,
            title=self.title,
            capability=self.capability,
            priority=self.priority,
            timeout=self.timeout,
            max_attempts=self.max_attempts,
            labels=labels,
            idempotency_key=self.idempotency_key,
        )
