"""The metrics facade: every serving metric goes through these methods, never a bare Counter.

Built on `ray.serve.metrics`, which Ray aggregates per node and exports on its metrics port
(a prometheus_client registry inside one replica would show that replica only). Ray prefixes
the names with `ray_` and adds its own labels (deployment, replica, application, session,
node); ours are `variant`, `outcome`, `reason` and `transport`, and on the controller's `phase`, `gate`,
`action`, `segment` (declared) and `stream` (declared classes and segments): all low-cardinality.

Names as Prometheus stores them (histograms add _bucket/_sum/_count):

    ray_kdcanary_requests_total{variant,outcome}       answered requests; outcome ok | failover
    ray_kdcanary_rejected_requests_total{reason}       4xx answers; reason = status code
    ray_kdcanary_request_latency_seconds{variant}      router-side latency of answered requests
    ray_kdcanary_failovers_total{reason}               student failed, teacher answered; error | timeout
                                                       | other_model (a student mid-swap, not yet vetted)
    ray_kdcanary_shadow_comparisons_total              inputs answered by both models
    ray_kdcanary_shadow_agreements_total               ... whose top-1 labels agreed
    ray_kdcanary_shadow_divergence                     total-variation distance per compared input
    ray_kdcanary_shadow_dropped_total{reason}          shadow calls skipped; overload | error | other_model
    ray_kdcanary_forced_requests_total{variant}        answered requests whose model a forced variant
                                                       (X-Kdcanary-Variant) or a dogfood key chose; in
                                                       requests_total too, never in the rollout's evidence
    ray_kdcanary_student_weight                        student share of traffic a router applies (0..1)
    ray_kdcanary_feedback_labels_total                 labels taken through POST /v1/feedback
    ray_kdcanary_feedback_refused_total{reason}        feedback requests refused; reason = HTTP status (401 token,
                                                       404 unknown id, 409 repeated, 410 too old, 422 bad label)
    ray_kdcanary_model_compute_seconds_total{variant}  seconds the model spent (shadow included)
    ray_kdcanary_model_inputs_total{variant}           inputs the model scored (shadow included)
    ray_kdcanary_cost_dollars_total{variant}           compute seconds x replica CPUs x price / 3600
    ray_kdcanary_model_calls_total{variant,transport}  calls a model replica took; stream (lane) | handle
    ray_kdcanary_stream_refused_total{variant,reason}  lane calls a replica refused untaken; busy | draining

The rollout controller's (ControllerMetrics):

    ray_kdcanary_rollout_phase{phase}                  1 for the current phase, 0 for the others
    ray_kdcanary_rollout_stage                         index of the current stage (0 = shadow)
    ray_kdcanary_rollout_weight                        student share the controller publishes (0..1)
    ray_kdcanary_rollout_gate_{estimate,lower,upper,threshold,samples}{gate}
    ray_kdcanary_rollout_gate_verdict{gate}            1 pass, 0 inconclusive, -1 fail
    ray_kdcanary_rollout_gate_binding{gate}            1 when the verdict counts, 0 when the spec sets it aside
    ray_kdcanary_rollout_labelled{variant}             labelled answers this rollout, by the variant that served
    ray_kdcanary_rollout_labelled_correct{variant}     ... of which right (online accuracy = correct / labelled)
    ray_kdcanary_rollout_paired_labels{outcome}        labelled inputs both answered: both_right | both_wrong
                                                       | only_student | only_teacher
    ray_kdcanary_rollout_segment_{agreed,compared}{segment}   shadow-compared inputs per declared segment (and
                                                       "other"), and how many agreed
    ray_kdcanary_rollout_segment_accuracy_difference{segment} student - teacher accuracy on labelled inputs
    ray_kdcanary_rollout_watch_level{stream}           after promotion: each watched stream's change detector as a
                                                       share of its alarm threshold (1 = alarm); stream = agreement
                                                       | accuracy | class:<teacher label> | segment:<declared>
    ray_kdcanary_rollout_watch_alarmed{stream}         1 once the stream's detector alarmed (latched), else 0
    ray_kdcanary_rollout_deadline_seconds_left         seconds until the stage's deadline acts if it still holds
                                                       (absent when no deadline runs: paused, settled, none set)
    ray_kdcanary_rollout_deadline_passed               1 while the stage's deadline has paused the rollout
    ray_kdcanary_rollout_awaiting_confirmation         1 while the rollout waits for an operator's confirm
    ray_kdcanary_rollout_decisions_total{action}       ticks by action: hold | advance | rollback | complete | alert
    ray_kdcanary_rollout_rollbacks_total{reason}       rollbacks by cause: the failing gate, or operator
    ray_kdcanary_rollout_store_healthy                 1 when the state store's last save succeeded, else 0
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ray.serve import metrics as serve_metrics

from rollout.answer_gates import accuracy_difference
from rollout.evidence import Variant
from rollout.gates import GateResult, Verdict
from rollout.status import Phase
from rollout.views import StatusView

if TYPE_CHECKING:
    from prometheus_client.samples import Sample

LATENCY_BUCKETS_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
DIVERGENCE_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75]


def _keys(*names: str) -> Any:
    """Label names as Ray wants them (a tuple; its stubs say tuple[str] whatever the length)."""
    return tuple(names)


class RouterMetrics:
    """What a router replica records. Create inside the replica (Ray metrics bind to the process)."""

    def __init__(self) -> None:
        self._requests = serve_metrics.Counter(
            "kdcanary_requests_total", "Answered predict requests.", tag_keys=_keys("variant", "outcome")
        )
        self._rejected = serve_metrics.Counter(
            "kdcanary_rejected_requests_total", "Requests answered with a 4xx.", tag_keys=_keys("reason")
        )
        self._latency = serve_metrics.Histogram(
            "kdcanary_request_latency_seconds",
            "Router-side latency of answered predict requests.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=_keys("variant"),
        )
        self._failovers = serve_metrics.Counter(
            "kdcanary_failovers_total", "Student calls that failed and were answered by the teacher.", _keys("reason")
        )
        self._comparisons = serve_metrics.Counter(
            "kdcanary_shadow_comparisons_total", "Inputs answered by both teacher and student."
        )
        self._agreements = serve_metrics.Counter(
            "kdcanary_shadow_agreements_total", "Compared inputs whose top-1 labels agreed."
        )
        self._divergence = serve_metrics.Histogram(
            "kdcanary_shadow_divergence",
            "Total-variation distance between teacher and student probabilities per compared input.",
            boundaries=DIVERGENCE_BUCKETS,
        )
        self._dropped = serve_metrics.Counter(
            "kdcanary_shadow_dropped_total", "Shadow comparisons skipped.", tag_keys=_keys("reason")
        )
        self._forced = serve_metrics.Counter(
            "kdcanary_forced_requests_total",
            "Requests whose model a forced variant or dogfood key chose.",
            tag_keys=_keys("variant"),
        )
        self._weight = serve_metrics.Gauge("kdcanary_student_weight", "Student share of traffic a router applies.")
        self._feedback = serve_metrics.Counter("kdcanary_feedback_labels_total", "Labels taken through feedback.")
        self._feedback_refused = serve_metrics.Counter(
            "kdcanary_feedback_refused_total", "Feedback requests refused, by HTTP status.", tag_keys=_keys("reason")
        )

    def record_request(self, variant: Variant, outcome: str, latency_s: float) -> None:
        tags = {"variant": variant.value}
        self._requests.inc(1.0, {**tags, "outcome": outcome})
        self._latency.observe(latency_s, tags)

    def record_rejected(self, status: int) -> None:
        self._rejected.inc(1.0, {"reason": str(status)})

    def record_failover(self, reason: str) -> None:
        self._failovers.inc(1.0, {"reason": reason})

    def record_comparison(self, agreed: int, divergences: list[float]) -> None:
        self._comparisons.inc(float(len(divergences)))
        if agreed:
            self._agreements.inc(float(agreed))
        for value in divergences:
            self._divergence.observe(value)

    def record_shadow_dropped(self, reason: str) -> None:
        self._dropped.inc(1.0, {"reason": reason})

    def record_forced(self, variant: Variant) -> None:
        self._forced.inc(1.0, {"variant": variant.value})

    def set_weight(self, weight: float) -> None:
        self._weight.set(weight)

    def record_feedback(self, labels: int) -> None:
        self._feedback.inc(float(labels))

    def record_feedback_refused(self, status: int) -> None:
        self._feedback_refused.inc(1.0, {"reason": str(status)})


class ModelMetrics:
    """What a model replica records: its compute time and what that time cost."""

    def __init__(self, variant: Variant) -> None:
        self._tags = {"variant": variant.value}
        self._compute = serve_metrics.Counter(
            "kdcanary_model_compute_seconds_total", "Seconds the model spent scoring.", tag_keys=_keys("variant")
        )
        self._inputs = serve_metrics.Counter(
            "kdcanary_model_inputs_total", "Inputs the model scored.", tag_keys=_keys("variant")
        )
        self._cost = serve_metrics.Counter(
            "kdcanary_cost_dollars_total", "Compute seconds x replica CPUs x price per CPU-hour.", _keys("variant")
        )

        self._calls = serve_metrics.Counter(
            "kdcanary_model_calls_total", "Calls taken, by how they came.", tag_keys=_keys("variant", "transport")
        )
        self._call_tags = {t: {**self._tags, "transport": t} for t in ("stream", "handle")}
        self._refused = serve_metrics.Counter(
            "kdcanary_stream_refused_total", "Lane calls refused untaken.", tag_keys=_keys("variant", "reason")
        )

    def record_call(self, transport: str) -> None:
        self._calls.inc(1.0, self._call_tags[transport])

    def record_refused(self, reason: str) -> None:
        self._refused.inc(1.0, {**self._tags, "reason": reason})

    def record_batch(self, inputs: int, compute_s: float, cost_dollars: float) -> None:
        self._compute.inc(compute_s, self._tags)
        self._inputs.inc(float(inputs), self._tags)
        if cost_dollars > 0:
            self._cost.inc(cost_dollars, self._tags)


class ControllerMetrics:
    """What the rollout controller shows: where the rollout stands and what it decided.

    Fed a `StatusView` after every tick and intent; counters advance by the difference from
    the last view (the controller's own counts restart with its process, as counters do).
    """

    def __init__(self) -> None:
        gate = _keys("gate")
        self._phase = serve_metrics.Gauge("kdcanary_rollout_phase", "1 for the current phase.", _keys("phase"))
        self._stage = serve_metrics.Gauge("kdcanary_rollout_stage", "Index of the current stage (0 = shadow).")
        self._weight = serve_metrics.Gauge("kdcanary_rollout_weight", "Student share the controller publishes (0..1).")
        self._gate = {
            part: serve_metrics.Gauge(f"kdcanary_rollout_gate_{part}", f"Each gate's {part}.", gate)
            for part in ("estimate", "lower", "upper", "threshold", "samples")
        }
        self._verdict = serve_metrics.Gauge("kdcanary_rollout_gate_verdict", "1 pass, 0 inconclusive, -1 fail.", gate)
        self._binding = serve_metrics.Gauge("kdcanary_rollout_gate_binding", "1 when the verdict counts.", gate)
        self._labelled = {
            part: serve_metrics.Gauge(f"kdcanary_rollout_{part}", f"Labelled answers ({part}).", _keys("variant"))
            for part in ("labelled", "labelled_correct")
        }
        self._paired = serve_metrics.Gauge(
            "kdcanary_rollout_paired_labels", "Labelled inputs both models answered.", _keys("outcome")
        )
        self._segment = {
            part: serve_metrics.Gauge(f"kdcanary_rollout_segment_{part}", f"Per segment: {part}.", _keys("segment"))
            for part in ("agreed", "compared", "accuracy_difference")
        }
        self._watch = {
            part: serve_metrics.Gauge(f"kdcanary_rollout_watch_{part}", f"Watched stream: {part}.", _keys("stream"))
            for part in ("level", "alarmed")
        }
        self._watched: set[str] = set()  # streams shown so far: zeroed when the watch ends
        self._deadline_left = serve_metrics.Gauge(
            "kdcanary_rollout_deadline_seconds_left", "Seconds until the stage's deadline acts if it still holds."
        )
        self._deadline_passed = serve_metrics.Gauge(
            "kdcanary_rollout_deadline_passed", "1 while the stage's deadline has paused the rollout."
        )
        self._awaiting = serve_metrics.Gauge(
            "kdcanary_rollout_awaiting_confirmation", "1 while the rollout waits for an operator's confirm."
        )
        self._decisions = serve_metrics.Counter("kdcanary_rollout_decisions_total", "Ticks by action.", _keys("action"))
        self._rollbacks = serve_metrics.Counter(
            "kdcanary_rollout_rollbacks_total", "Rollbacks by cause.", _keys("reason")
        )
        self._store_healthy = serve_metrics.Gauge("kdcanary_rollout_store_healthy", "1 when the last save succeeded.")
        self._store_fenced = serve_metrics.Gauge(
            "kdcanary_rollout_store_fenced", "1 when another controller claimed the store: this one no longer writes."
        )
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def show(self, view: StatusView) -> None:
        with self._lock:
            for phase in Phase:
                self._phase.set(float(phase is view.phase), {"phase": phase.value})
            self._stage.set(float(view.stage_index))
            self._weight.set(view.routing.weight)
            self._store_healthy.set(float(view.store.healthy))
            self._store_fenced.set(float(view.store.fenced))
            for result in view.gates:
                self._show_gate(result)
            self._show_labels(view)
            self._show_watch(view)
            if view.deadline_at is not None:
                self._deadline_left.set(max(0.0, view.deadline_at - view.now))
            self._deadline_passed.set(float(view.deadline_passed_at is not None and view.phase is Phase.PAUSED))
            self._awaiting.set(float(view.awaiting_confirmation is not None))
            self._advance(self._decisions, "action", view.counters.decisions)
            self._advance(self._rollbacks, "reason", view.counters.rollbacks)

    def new_rollout(self) -> None:
        """A controller for a new model pair counts from 0: its counts add to the counters' totals."""
        with self._lock:
            self._seen.clear()

    def _show_gate(self, result: GateResult) -> None:
        tags = {"gate": result.name}
        values = {"estimate": result.estimate, "lower": result.lower, "upper": result.upper}
        values |= {"threshold": result.threshold, "samples": float(result.n)}
        for part, value in values.items():
            if value is not None:
                self._gate[part].set(value, tags)
        self._verdict.set(_VERDICT_VALUE[result.verdict], tags)
        self._binding.set(float(result.binding), tags)

    def _show_labels(self, view: StatusView) -> None:
        counts = view.evidence
        for variant in Variant:
            tags = {"variant": variant.value}
            self._labelled["labelled"].set(float(getattr(counts, f"{variant.value}_labelled")), tags)
            self._labelled["labelled_correct"].set(float(getattr(counts, f"{variant.value}_correct")), tags)
        for outcome in ("both_right", "both_wrong", "only_student", "only_teacher"):
            self._paired.set(float(getattr(counts, outcome)), {"outcome": outcome})
        for name, segment in counts.segments.items():  # names the spec declared (and "other"): bounded
            tags = {"segment": name}
            self._segment["agreed"].set(float(segment.agreement.agreed), tags)
            self._segment["compared"].set(float(segment.agreement.compared), tags)
            if (difference := accuracy_difference(segment.accuracy)) is not None:
                self._segment["accuracy_difference"].set(difference, tags)

    def _show_watch(self, view: StatusView) -> None:
        streams = view.evidence.watch
        for key in self._watched - set(streams):  # the watch ended (rolled back, a new rollout)
            for gauge in self._watch.values():
                gauge.set(0.0, {"stream": key})
        for key, stream in streams.items():
            self._watch["level"].set(stream.level, {"stream": key})
            self._watch["alarmed"].set(float(stream.alarmed), {"stream": key})
        self._watched |= set(streams)

    def _advance(self, counter: Any, key: str, counts: dict[str, int]) -> None:
        for label, count in counts.items():
            seen = self._seen.get((key, label), 0)
            if count > seen:
                counter.inc(float(count - seen), {key: label})
            self._seen[(key, label)] = count


_VERDICT_VALUE = {Verdict.PASS: 1.0, Verdict.INCONCLUSIVE: 0.0, Verdict.FAIL: -1.0}


def scrape(metrics_url: str, prefix: str = "ray_kdcanary_", timeout_s: float = 10.0) -> list[Sample]:
    """The samples whose names start with `prefix` on a Prometheus text endpoint (Ray's metrics
    port), named as Prometheus stores them (with their _total, _bucket, _sum, _count suffixes).

    Only those lines are parsed: Ray's endpoint carries about a megabyte of its own series
    (histogram buckets per deployment and replica), and parsing all of it took about 0.5 CPU-s a
    scrape (the demo's, every few seconds) against 0.004 for kdcanary's own lines."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(metrics_url, timeout=timeout_s).text
    ours = "\n".join(line for line in text.splitlines() if line.startswith(prefix))
    return [sample for family in text_string_to_metric_families(ours + "\n") for sample in family.samples]
