"""One table at the boundary: every deliberate kdcanary error, its HTTP status and its CLI exit code.

The admin API, the router and the `kdcanary` command all answer an error through `lookup`;
the client turns an HTTP status back into an exit code through `exit_code_for_status`. Rows
are matched in order, first `isinstance` wins (Ray re-raises a remote error as an instance of
its cause, so a controller's IntentError is still an IntentError here).

Exit codes, for scripts:
    0  done
    1  ran to the end, but a check failed (a compression tolerance, the demo's expected outcome)
    2  bad input: fix the command, recipe, spec, bundle or body (argparse's own usage errors too)
    3  refused: the admin token, or the rollout's current phase, forbids it
    4  unavailable: the server, controller, store or a model did not answer; retry later
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from compression.errors import CompressionError, ToleranceError
from rollout.errors import (
    ExpiredRequestError,
    FeedbackError,
    FencedError,
    IntentError,
    LabelError,
    RepeatedRequestError,
    RolloutError,
    SpecError,
    StoreError,
    UnknownRequestError,
    WebhookError,
)
from serving.errors import AdminAuthError, BundleRejectedError, ModelCallError, PairUnknownError, ServingError
from serving.schemas import first_error

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class ErrorAnswer:
    error: type[BaseException]
    http_status: int
    exit_code: int
    meaning: str


TABLE: tuple[ErrorAnswer, ...] = (
    ErrorAnswer(AdminAuthError, 401, EXIT_REFUSED, "no admin (or feedback) token configured or sent, or the wrong one"),
    ErrorAnswer(IntentError, 409, EXIT_REFUSED, "the rollout's current phase forbids this intent"),
    ErrorAnswer(FencedError, 409, EXIT_REFUSED, "another controller took over the rollout's store"),
    ErrorAnswer(UnknownRequestError, 404, EXIT_BAD_INPUT, "feedback for a request id this deployment never issued"),
    ErrorAnswer(ExpiredRequestError, 410, EXIT_BAD_INPUT, "feedback too late, or for a model pair no longer judged"),
    ErrorAnswer(RepeatedRequestError, 409, EXIT_REFUSED, "a label for this request id was already taken"),
    ErrorAnswer(LabelError, 422, EXIT_BAD_INPUT, "a label the model does not have, or the wrong count"),
    ErrorAnswer(FeedbackError, 503, EXIT_UNAVAILABLE, "feedback is not set up yet (no key or label names)"),
    ErrorAnswer(StoreError, 503, EXIT_UNAVAILABLE, "the rollout store cannot be read or written"),
    ErrorAnswer(ModelCallError, 503, EXIT_UNAVAILABLE, "a model deployment did not answer"),
    ErrorAnswer(PairUnknownError, 503, EXIT_UNAVAILABLE, "the controller has not yet heard from both models"),
    ErrorAnswer(SpecError, 422, EXIT_BAD_INPUT, "the rollout spec is invalid (the field is named)"),
    ErrorAnswer(WebhookError, 422, EXIT_BAD_INPUT, "webhook settings are invalid"),
    ErrorAnswer(BundleRejectedError, 422, EXIT_BAD_INPUT, "a bundle fails verification or does not load"),
    ErrorAnswer(ToleranceError, 422, EXIT_CHECK_FAILED, "a compressed model breaches its declared tolerance"),
    ErrorAnswer(CompressionError, 422, EXIT_BAD_INPUT, "a recipe, data, teacher or registry problem"),
    ErrorAnswer(ValidationError, 422, EXIT_BAD_INPUT, "a body, argument or config fails validation"),
    ErrorAnswer(RolloutError, 422, EXIT_BAD_INPUT, "any other rollout error (bad statistics arguments)"),
    ErrorAnswer(ServingError, 422, EXIT_BAD_INPUT, "any other serving error"),
)

UNKNOWN = ErrorAnswer(Exception, 503, EXIT_UNAVAILABLE, "anything else: the callee failed or is gone; retry")
"""A controller actor that died or a Ray call that failed is an outage to the caller, not a
reason to show it a 500 with a traceback."""


def lookup(exc: BaseException) -> ErrorAnswer:
    return next((row for row in TABLE if isinstance(exc, row.error)), UNKNOWN)


def one_line(exc: BaseException) -> str:
    """The message a person sees: a pydantic error is its first field and reason, on one line."""
    if isinstance(exc, ValidationError):
        return "{}: {}".format(*first_error(exc))
    return " ".join(str(exc).split())


def exit_code_for_status(status: int | None) -> int:
    """The exit code of a CLI command whose admin call was answered `status` (None: no answer)."""
    if status is None or status >= 500 or status == 429:
        return EXIT_UNAVAILABLE
    if status in (401, 403, 409):
        return EXIT_REFUSED
    return EXIT_BAD_INPUT
