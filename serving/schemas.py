"""What crosses the HTTP boundary: requests and responses, validated with pydantic.

Bounds keep a single request cheap and predictable: at most MAX_INPUTS inputs of at most
MAX_INPUT_CHARS characters each, and a routing key of at most MAX_KEY_CHARS. The body-size
bound (bytes) is the router's, checked before parsing. A violation becomes a 4xx whose message
names the field (`inputs.3`, `routing_key`, `weight`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from rollout.feedback import MAX_FEEDBACK_ITEMS, FeedbackItem
from rollout.status import PromoteTarget

MAX_INPUTS = 64
MAX_INPUT_CHARS = 2_000
MAX_KEY_CHARS = 256
MAX_BODY_BYTES = 256 * 1024

_STRICT = ConfigDict(extra="forbid", frozen=True)

Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_INPUT_CHARS)]


class PredictRequest(BaseModel):
    """`POST /v1/predict` body."""

    model_config = _STRICT

    inputs: list[Text] = Field(min_length=1, max_length=MAX_INPUTS)
    routing_key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_CHARS)
    segment: str | None = Field(default=None, min_length=1, max_length=64, description="one the spec declares")


FEEDBACK_BODY = TypeAdapter(
    FeedbackItem | Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)]
)
"""`POST /v1/feedback` body: one item, or a list of them (rollout/feedback.py)."""


def feedback_items(body: bytes) -> list[FeedbackItem]:
    """The feedback body's items; ValidationError names the field."""
    parsed = FEEDBACK_BODY.validate_json(body)
    return parsed if isinstance(parsed, list) else [parsed]


class Prediction(BaseModel):
    label: str
    label_id: int
    probabilities: list[float]


class PredictResponse(BaseModel):
    """`POST /v1/predict` answer (DESIGN §2)."""

    predictions: list[Prediction]
    variant: str
    model_id: str
    request_id: str


class AdminNote(BaseModel):
    """Body of an admin intent: who asks and why (both go into the event log, never a token)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    reason: str = Field(default="", max_length=2000)
    actor: str = Field(default="admin-api", min_length=1, max_length=200)


class RollbackRequest(AdminNote):
    """`POST /admin/rollout/rollback`: a reason is required."""

    reason: str = Field(min_length=1, max_length=2000)


class PromoteRequest(AdminNote):
    """`POST /admin/rollout/promote`: the next stage, or `"to": "full"` for all traffic at once."""

    to: PromoteTarget = Field(default=PromoteTarget.NEXT, description="next stage, or full: all traffic, completed")


class WeightUpdate(AdminNote):
    """`PUT /admin/rollout/weight` body: the student's share of traffic, and why."""

    weight: float = Field(ge=0.0, le=1.0, description="the student's share of traffic")
    reason: str = Field(min_length=1, max_length=2000)


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(field path, message) of the first validation error, e.g. ("inputs.3", "String should ...")."""
    err = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in err["loc"]) or "body"
    return field, err["msg"]
