"""Every error rollout/ raises on purpose.

    RolloutError                  base: the controller and admin API turn it into one line
    ├── SpecError                 a rollout spec fails validation; the message names the field
    ├── IntentError               an admin intent cannot apply in the current phase
    ├── StatsError                a statistics routine got arguments outside its domain
    ├── StoreError                the state store could not be read or written (path and cause)
    │   └── FencedError           another controller claimed the store: this one no longer writes
    ├── WebhookError              webhook settings are invalid (a URL that is not http(s), ...)
    └── FeedbackError             a label cannot be taken (`status` is the HTTP answer)
        ├── UnknownRequestError   404: a request id this deployment never issued (or a forged one)
        ├── ExpiredRequestError   410: issued too long ago, or for a model pair no longer judged
        ├── RepeatedRequestError  409: a label for this request id was already taken
        └── LabelError            422: a label the model does not have, or the wrong count

Gate verdicts are not errors: a failing gate is a normal outcome that the policy turns into a
rollback, with its numbers in the decision's reasons, not an exception.

Messages carry the numbers: "alpha must lie in (0, 1), got 1.5".
"""

from __future__ import annotations

from typing import Any


class RolloutError(Exception):
    """Base of every deliberate error in rollout/."""


class SpecError(RolloutError, ValueError):
    """The rollout spec is invalid; the message names each offending field (e.g. `stages[0]`)."""


class IntentError(RolloutError):
    """An admin intent cannot apply now, e.g. promote after the rollout completed.

    The admin API maps it to 409 Conflict: the request was well formed but the state forbids it.
    """


class StatsError(RolloutError, ValueError):
    """A statistics routine got arguments outside its domain (alpha, counts, a quantile level)."""


class StoreError(RolloutError):
    """The state store could not be read or written: `path` says which store, `cause` why.

    The controller treats a failed save as an outage, not a crash: it holds (never advances),
    keeps the unsaved events in memory and retries on the next tick. A store that cannot be
    loaded at construction is fatal (a controller that cannot know its stage must not guess).
    """

    def __init__(self, message: str, path: str = "", cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.cause = cause

    def __reduce__(self) -> tuple[Any, ...]:  # keep path and cause when Ray pickles the error
        return (type(self), (str(self), self.path, self.cause))


class FencedError(StoreError):
    """Another controller claimed the store (a newer writer term) since this one did.

    Raised by a save that carries the old term, checked inside the save's own transaction, so
    two controllers never both write. The fenced controller stops writing for good: it never
    advances again, and its intents are refused (409) with the new holder named.
    """


class WebhookError(RolloutError, ValueError):
    """Webhook settings are invalid: a URL that is not http(s), a negative timeout or retry count.

    Delivery failures are not errors: the sender counts them and never raises into a decision.
    """


class FeedbackError(RolloutError):
    """A label sent as feedback cannot be taken; nothing of its batch was."""


class UnknownRequestError(FeedbackError):
    """The request id was not issued by this deployment: malformed, or its signature is wrong."""


class ExpiredRequestError(FeedbackError):
    """The request id is older than the spec's `max_label_age_s`, or its model pair is no longer judged."""


class RepeatedRequestError(FeedbackError):
    """A label for this request id was taken already (a retry that had landed, or a replay)."""


class LabelError(FeedbackError):
    """The label is not one of the model's, or the count does not match the request's inputs."""
