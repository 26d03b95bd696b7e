"""Request bodies; responses are the CLI's ``--json`` shapes (``cli.render``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, create_model

from orchestra_cli.engine.budget import LABEL_TOKENS, LABEL_USD
from orchestra_cli.engine.submission import SubmitRequest, described


class Budget(BaseModel):
    """A spending cap for the whole task tree."""

    model_config = ConfigDict(extra="forbid")

    usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    tokens: int | None = Field(default=None, gt=0)


class _SubmitBody(BaseModel):
    """``POST /v1/tasks``: the options of `orchestra task submit`.

    Range checks (empty text, priority, timeout…) are the service's, as for
    the CLI, so both reject the same input with the same words.
    """

    model_config = ConfigDict(extra="forbid")

    budget: Budget | None = Field(default=None, description='{"usd": 0.5} and/or {"tokens": 20000}')

    def to_request(self) -> SubmitRequest:
        """The service's request; a budget becomes the labels the budget hook reads."""
        fields = {name: getattr(self, name) for name in described()}
        labels = dict(fields.pop("labels"))
        if self.budget is not None:
            if self.budget.usd is not None:
                labels[LABEL_USD] = str(self.budget.usd)
            if self.budget.tokens is not None:
                labels[LABEL_TOKENS] = str(self.budget.tokens)
        return SubmitRequest(**fields, labels=labels)


def _submit_body() -> type[_SubmitBody]:
    """The body's fields from the one description of a submission (engine/submission.py).

    Their limits go into the document only (``json_schema_extra``): the service checks
    them, in the same words as for the CLI; schemathesis holds the API to the
    document (tests/api/test_api_schema.py)."""
    fields: dict[str, Any] = {
        name: (
            d.hint,
            Field(
                default=... if d.default is msgspec.NODEFAULT else d.default,
                description=d.help,
                json_schema_extra=d.limits or None,
            ),
        )
        for name, d in described().items()
    }
    return create_model("SubmitBody", __base__=_SubmitBody, __doc__=_SubmitBody.__doc__, **fields)


if TYPE_CHECKING:  # the class the type checker knows; FastAPI reads the generated one
    SubmitBody = _SubmitBody
else:
    SubmitBody = _submit_body()
