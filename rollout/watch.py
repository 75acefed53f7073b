"""Watching after promotion: change detection that stays valid however long it runs.

A completed rollout keeps shadowing a small share of requests to the teacher. Repeating a
fixed-sample test every tick would raise a false alarm sooner or later; a sequential change
detector bounds how soon. Each watched stream is a quantity X in [0, 1] whose mean must stay
at or below `null_mean` while all is well: the disagreement indicator (1 - agreed) overall,
per class of the teacher's label and per declared segment, and, once labels arrive, the
paired accuracy loss (1 when only the teacher was right, 0 when only the student was, 1/2
when both or neither were).

The detector is a Shiryaev-Roberts e-detector (Shin, Ramdas & Rinaldo, "E-detectors", 2024):
per observation the bet e = 1 + lambda (X - null_mean) has expectation <= 1 whenever the mean
of X is at most null_mean, so R <- (R + 1) e grows by at most 1 per observation in
expectation; a mixture over a few bets (alternatives) keeps that. Every stream's statistic is
weighted by its share w of the false-alarm budget (the shares sum to at most 1, and one
observation touches streams whose shares sum to at most 1), so the weighted sum M grows by at
most 1 per event and the first time any stream reaches `arl / w` comes no sooner, on average,
than `arl` events (observations plus labels) after the watch began or the last alarm: the
average run length to a false alarm is at least `arl`, by optional stopping, however long the
watch runs. For a Bernoulli stream the bet with alternative mean mu1 is exactly the likelihood
ratio of Bernoulli(mu1) against Bernoulli(null_mean), so the detector is the classical
Shiryaev-Roberts procedure (delay about log(arl / w) / KL(mu1 || null_mean) once the mean has
moved to mu1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

_STATE = ConfigDict(frozen=True, extra="forbid")

AGREEMENT = "agreement"
ACCURACY = "accuracy"
ACCURACY_LOSS = {(True, False): 1.0, (False, True): 0.0, (True, True): 0.5, (False, False): 0.5}
"""A labelled shadowed input's accuracy loss X, by (teacher right, student right): its mean is
(1 - (student - teacher accuracy)) / 2, so a margin m puts the null mean at (1 + m) / 2."""
BUDGET = {AGREEMENT: 0.5, ACCURACY: 0.25, "class": 0.125, "segment": 0.125}
"""Shares of the false-alarm budget: the overall agreement, which the watch is mostly for, half;
accuracy a quarter; classes and segments an eighth each, split evenly among the declared ones
(more classes than declared go unwatched: their share is spent)."""
ALTERNATIVE_FACTORS = (2.0, 4.0, 8.0)
"""The alternatives bet on, as multiples of the null mean (for an agreement floor of 0.97:
disagreement 0.06, 0.12 and 0.24), capped at 0.99: one bet each."""


class Stream(BaseModel):
    """One watched quantity: its bets, their Shiryaev-Roberts statistics, and its counts."""

    model_config = _STATE

    null_mean: float = Field(gt=0.0, lt=1.0)  # the most the mean of X may be while all is well
    weight: float = Field(gt=0.0, le=1.0)  # its share of the false-alarm budget
    bets: tuple[float, ...]
    statistics: tuple[float, ...]
    n: int = 0  # observations since the watch began
    total: float = 0.0  # their sum of X
    alarmed: bool = False  # latched: a stream alarms once per watch (its counts go on)

    @property
    def score(self) -> float:
        """The mixture statistic: the mean of the bets' statistics."""
        return sum(self.statistics) / len(self.statistics)

    def threshold(self, arl: float) -> float:
        return arl / self.weight


class Alarm(BaseModel):
    """A detected change: which stream, and the numbers behind it."""

    model_config = _STATE

    stream: str
    n: int
    observed_mean: float  # the mean of X since the watch began
    null_mean: float
    score: float
    threshold: float
    message: str


class WatchState(BaseModel):
    """The detectors of one watch, persisted with the evidence (a restart resumes them)."""

    model_config = _STATE

    arl: float = Field(gt=1.0)
    # The agreement each stream must keep: "agreement", one per "class:<label>" or
    # "segment:<name>" known at promotion, and "class" / "segment" for ones first seen later.
    floors: dict[str, float]
    accuracy_margin: float | None = Field(default=None, ge=0.0, lt=1.0)
    classes: int = Field(default=0, ge=0)  # declared classes to watch (0: none)
    segments: tuple[str, ...] = ()  # declared segments to watch, "other" included
    streams: dict[str, Stream] = Field(default_factory=dict)
    alarms: tuple[Alarm, ...] = ()  # newest last, one per stream at most; the policy acts on new ones


class StreamSummary(BaseModel):
    """One stream for status, events and metrics: for agreement streams the agreement observed
    and its floor, for accuracy student - teacher and -margin; `level` is the statistic as a
    share of its alarm threshold (1 = alarm)."""

    model_config = _STATE

    n: int
    observed: float | None
    bound: float
    level: float
    alarmed: bool


def summary(state: WatchState) -> dict[str, StreamSummary]:
    """Every stream of `state`, by key."""
    shown = {}
    for key, stream in state.streams.items():
        mean = stream.total / stream.n if stream.n else None
        if key == ACCURACY:  # X = (1 - difference) / 2
            observed, bound = (None if mean is None else 1.0 - 2.0 * mean), 1.0 - 2.0 * stream.null_mean
        else:
            observed, bound = (None if mean is None else 1.0 - mean), 1.0 - stream.null_mean
        level = stream.score / stream.threshold(state.arl)
        shown[key] = StreamSummary(n=stream.n, observed=observed, bound=bound, level=level, alarmed=stream.alarmed)
    return shown


def bets_for(null_mean: float) -> tuple[float, ...]:
    """One bet per alternative mean mu1 = factor x null_mean (capped at 0.99): lambda =
    (mu1 - null_mean) / (null_mean (1 - null_mean)), the Bernoulli likelihood ratio's slope;
    it keeps e >= 0 for every X in [0, 1] because mu1 <= 1."""
    alternatives = sorted({min(0.99, factor * null_mean) for factor in ALTERNATIVE_FACTORS} - {null_mean})
    return tuple((mu1 - null_mean) / (null_mean * (1.0 - null_mean)) for mu1 in alternatives if mu1 > null_mean)


def new_stream(null_mean: float, weight: float) -> Stream:
    bets = bets_for(null_mean)
    return Stream(null_mean=null_mean, weight=weight, bets=bets, statistics=(0.0,) * len(bets))


def start_watch(
    arl: float,
    floors: Mapping[str, float],
    accuracy_margin: float | None = None,
    classes: int = 0,
    segments: Sequence[str] = (),
) -> WatchState:
    """Fresh detectors: agreement at once; accuracy, classes and segments on first sight.
    `floors` names the agreement floor of "agreement" and, where watched, of "class" and
    "segment" (and of single classes or segments, by stream key)."""
    for kind, needed in (("agreement", True), ("class", classes > 0), ("segment", bool(segments))):
        if needed and not 0.0 < floors.get(kind, -1.0) < 1.0:
            raise ValueError(f"floors: need a floor in (0, 1) for '{kind}', got {floors.get(kind)}")
    streams = {AGREEMENT: new_stream(1.0 - floors[AGREEMENT], BUDGET[AGREEMENT])}
    return WatchState(
        arl=arl,
        floors=dict(floors),
        accuracy_margin=accuracy_margin,
        classes=classes,
        segments=tuple(segments),
        streams=streams,
    )


def _stream_for(state: WatchState, key: str, streams: dict[str, Stream]) -> Stream | None:
    """The stream `key` names, created on first sight while the declared budget allows."""
    if key in streams:
        return streams[key]
    kind = key.split(":", 1)[0]
    if kind == ACCURACY and state.accuracy_margin is not None:
        stream = new_stream((1.0 + state.accuracy_margin) / 2.0, BUDGET[ACCURACY])
    elif kind == "class" and sum(k.startswith("class:") for k in streams) < state.classes:
        stream = new_stream(1.0 - state.floors.get(key, state.floors[kind]), BUDGET["class"] / state.classes)
    elif kind == "segment" and key.split(":", 1)[1] in state.segments:
        floor = state.floors.get(key, state.floors[kind])
        stream = new_stream(1.0 - floor, BUDGET["segment"] / len(state.segments))
    else:
        return None
    streams[key] = stream
    return stream


def feed(state: WatchState, events: Iterable[tuple[str, float]]) -> WatchState:
    """Feed `events` (stream key, X) in order: "agreement", "class:<label>", "segment:<name>"
    with X = 1 - agreed, "accuracy" with X the paired accuracy loss. A stream that reaches its
    threshold raises one alarm and is latched: a lasting change is one alarm, not a storm
    (a new rollout, or a rollback and a new start, watches afresh)."""
    streams = dict(state.streams)
    work: dict[str, list[float]] = {}  # mutable statistics, written back once
    counts: dict[str, list[float]] = {}  # n, total
    alarms = list(state.alarms)
    latched = {key for key, stream in streams.items() if stream.alarmed}
    for key, x in events:
        stream = _stream_for(state, key, streams)
        if stream is None:
            continue
        count = counts.setdefault(key, [stream.n, stream.total])
        count[0], count[1] = count[0] + 1, count[1] + x
        if key in latched:
            continue
        stats = work.setdefault(key, list(stream.statistics))
        offset = x - stream.null_mean
        for j, bet in enumerate(stream.bets):
            stats[j] = (stats[j] + 1.0) * (1.0 + bet * offset)
        threshold = stream.threshold(state.arl)
        if sum(stats) / len(stats) >= threshold:
            alarms.append(_alarm(key, stream, int(count[0]), count[1], sum(stats) / len(stats), threshold))
            latched.add(key)
    for key, (n, total) in counts.items():
        update: dict[str, object] = {"n": int(n), "total": total, "alarmed": key in latched}
        if key in work:
            update["statistics"] = tuple(work[key])
        streams[key] = streams[key].model_copy(update=update)
    return state.model_copy(update={"streams": streams, "alarms": tuple(alarms)})


def _alarm(key: str, stream: Stream, n: int, total: float, score: float, threshold: float) -> Alarm:
    mean = total / n
    if key == ACCURACY:
        what = f"accuracy loss {mean:.4f} (student - teacher {1.0 - 2.0 * mean:+.4f})"
        bound = f"null {stream.null_mean:.4f} (margin {2.0 * stream.null_mean - 1.0:.4f})"
    else:
        what = f"agreement {1.0 - mean:.4f}"
        bound = f"floor {1.0 - stream.null_mean:.4f}"
    return Alarm(
        stream=key,
        n=n,
        observed_mean=mean,
        null_mean=stream.null_mean,
        score=score,
        threshold=threshold,
        message=(
            f"watch: change detected in {key}: e-detector {score:.3g} >= {threshold:.3g} "
            f"({what} over n={n} since the watch began, {bound})"
        ),
    )
