"""Request bodies; responses are the CLI's ``--json`` shapes (``cli.render``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from orchestra_cli.engine.budget import LABEL_TOKENS, LABEL_USD
from orchestra_cli.engine.service import (
    MAX_KEY_CHARS,
    MAX_LABELS,
    MAX_TITLE_CHARS,
    SubmitRequest,
)
from orchestra_cli.models import MAX_PRIORITY


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

    # The limits below are written into the document only (json_schema_extra): the
    # service checks them, in the same words as for the CLI; schemathesis holds the
    # API to the document (tests/api/test_api_schema.py).
    text: str = Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})
    title: str | None = Field(default=None, json_schema_extra={"maxLength": MAX_TITLE_CHARS})
    capability: str | None = Field(
        default=None, description="one a role or a live agent has (422 otherwise)"
    )
    priority: int | None = Field(
        default=None, json_schema_extra={"minimum": 0, "maximum": MAX_PRIORITY}
    )
    timeout: float | None = Field(default=None, json_schema_extra={"exclusiveMinimum": 0})
    max_attempts: int | None = Field(default=None, json_schema_extra={"minimum": 1})
    labels: dict[str, str] = Field(
        default_factory=dict, json_schema_extra={"maxProperties": MAX_LABELS}
    )
    idempotency_key: str | None = Field(
        default=None,
        json_schema_extra={"minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": r"\S"},
    )
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
