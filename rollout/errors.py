"""Every error rollout/ raises on purpose.

    RolloutError                  base: the controller and admin API turn it into one line
    ├── SpecError                 a rollout spec fails validation; the message names the field
    ├── IntentError               an admin intent cannot apply in the current phase
    └── StatsError                a statistics routine got arguments outside its domain

Gate verdicts are not errors: a failing gate is a normal outcome that the policy turns into a
rollback, with its numbers in the decision's reasons, not an exception.

Messages carry the numbers: "alpha must lie in (0, 1), got 1.5".
"""


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
