"""Rollout decisions: the pure core, and the controller that does the I/O around it (no Ray).

Pure core (no I/O, no clock):

    spec.py          RolloutSpec: stages as data, gate configs, fast-rollback trip wire
    status.py        RolloutStatus: the one persisted record, phases, admin intents
    evidence.py      Evidence: mergeable per-model aggregates of router observations
    latency.py       LatencyHistogram: log-bucketed latency counts that merge exactly
    stats.py         anytime-valid confidence sequences (Robbins 1970; Howard & Ramdas 2022)
    verdict.py       Verdict (pass | fail | inconclusive) and GateResult, with its numbers
    answer_gates.py  agreement overall / by class / by segment, accuracy on labels, their combination
    gates.py         operational gates (errors, latency, cost, trip wire); evaluate_gates runs them all
    watch.py         e-detectors for after promotion: agreement, classes, segments, accuracy
    smoke.py         the smoke test: served answers against a bundle's recorded ones
    disagreements.py the disagreement log: shadowed inputs the models answered differently
    decision.py      Action and Decision: what a tick decides
    watching.py      a tick while the promoted student is watched (alarms -> rollback or alert)
    policy.py        decide(spec, status, evidence, now) -> Decision; apply(status, decision, now)
    errors.py        RolloutError and its subclasses

Controller layer (I/O behind injected Protocols, each with an in-package fake):

    clock.py       Clock: SystemClock, FakeClock(start).advance(seconds)
    events.py      Event: one entry of the append-only log (decision, operator, store, controller)
    store.py       StateStore: SqliteStateStore(path) (atomic saves, one writer by term), MemoryStateStore
    sqlite_file.py the SQLite file's schema, statements, migrations and journal mode
    webhooks.py    WebhookSender: HttpWebhookSender (queue + thread, retries), RecordingWebhookSender
    journal.py     Journal: event ids, pending events, store health, exactly-once flush, fencing
    views.py       PublishedRouting (with version), StatusView, ETA, store health
    receipts.py    signed request ids: what was answered, so labels can come back later
    feedback.py    FeedbackDesk: labels for earlier answers -> LabelOutcome (all or nothing)
    intents.py     OperatorIntents: start / pause / resume / promote / rollback / confirm / set_weight
    controller.py  RolloutController: record / feedback / tick / routing / smoke test / snapshot / events

The rollout simulation and its Flagger-style baseline live with their benchmark
(bench/simulation.py, bench/baseline.py): they drive this controller behind serving's router
core, with no copy of either's rules.

Imports run one way: policy -> gates -> answer_gates -> verdict, gates -> spec -> evidence ->
(stats, watch, disagreements) -> errors, policy -> watching -> decision, policy -> status ->
(smoke, errors); controller -> journal -> (store, webhooks, views) -> events -> evidence,
store -> sqlite_file, views -> policy, controller -> intents -> (journal, policy), and
controller -> feedback -> (receipts, store).
Nothing here imports serving/.
"""
