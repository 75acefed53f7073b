"""Rollout decisions: the pure core the controller wraps (no Ray, no I/O, no clock).

    spec.py      RolloutSpec: stages as data, gate configs, fast-rollback trip wire
    status.py    RolloutStatus: the one persisted record, phases, admin intents
    evidence.py  Evidence: mergeable per-model aggregates of router observations
    stats.py     anytime-valid confidence sequences (Robbins 1970; Howard & Ramdas 2022)
    gates.py     evidence -> GateResult(pass | fail | inconclusive, with its numbers)
    policy.py    decide(spec, status, evidence, now) -> Decision; apply(status, decision, now)
    errors.py    RolloutError and its subclasses

Imports run one way: policy -> gates -> spec -> evidence -> stats -> errors, and
policy -> status -> errors. Nothing here imports serving/.
"""
