"""rollout.watch: the e-detector's bets are fair under the null, false alarms come no sooner
than the ARL allows, a real drop is caught with its numbers, and streams respect the budget."""

from __future__ import annotations

import random

import pytest

from rollout.watch import AGREEMENT, BUDGET, WatchState, bets_for, feed, start_watch

FLOORS = {"agreement": 0.97, "class": 0.9, "segment": 0.9}


def _agreement(rng: random.Random, rate: float, n: int, key: str = AGREEMENT) -> list[tuple[str, float]]:
    return [(key, float(rng.random() >= rate)) for _ in range(n)]


@pytest.mark.parametrize("null_mean", [0.01, 0.03, 0.1, 0.505])
def test_every_bet_is_fair_at_the_null_and_never_negative(null_mean: float) -> None:
    for bet in bets_for(null_mean):
        assert bet > 0
        assert null_mean * (1 + bet * (1 - null_mean)) + (1 - null_mean) * (1 - bet * null_mean) == pytest.approx(1)
        assert 1 + bet * (0 - null_mean) >= 0  # X = 0 is the bet's worst case: an alternative above 1 breaks it


def test_false_alarms_at_the_floor_come_no_sooner_than_the_arl() -> None:
    rng, arl = random.Random(7), 500.0
    run_lengths = []
    for _ in range(100):  # each run: a fresh watch, fed at the floor until it alarms
        state, n = start_watch(arl, FLOORS), 0
        while not state.alarms and n < 50_000:
            state, n = feed(state, _agreement(rng, 0.97, 100)), n + 100
        run_lengths.append(n)
    assert sum(run_lengths) / len(run_lengths) >= arl
    assert min(run_lengths) < 50_000  # at the boundary the detector does fire, now and then


def test_a_steady_good_student_raises_no_alarm() -> None:
    state = feed(start_watch(1e5, FLOORS), _agreement(random.Random(3), 0.99, 100_000))
    assert state.alarms == ()
    assert state.streams[AGREEMENT].n == 100_000


def test_a_drop_is_caught_named_with_its_numbers_and_alarms_once() -> None:
    rng = random.Random(11)
    state = feed(start_watch(1e5, FLOORS), _agreement(rng, 0.99, 3_000))
    assert state.alarms == ()
    state = feed(state, _agreement(rng, 0.90, 1_000))
    alarm = state.alarms[0]
    assert alarm.stream == AGREEMENT
    assert alarm.score >= alarm.threshold == 1e5 / BUDGET[AGREEMENT]
    assert "change detected in agreement" in alarm.message and "floor 0.9700" in alarm.message
    state = feed(state, _agreement(rng, 0.90, 5_000))
    assert len(state.alarms) == 1 and state.streams[AGREEMENT].alarmed and state.streams[AGREEMENT].n == 9_000


def test_feeding_in_batches_equals_feeding_at_once() -> None:
    events = _agreement(random.Random(5), 0.95, 2_000)
    start = start_watch(1e3, FLOORS)
    assert feed(feed(start, events[:700]), events[700:]) == feed(start, events)


def test_classes_segments_and_accuracy_are_watched_only_as_declared() -> None:
    state = start_watch(1e5, {**FLOORS, "class:a": 0.8}, accuracy_margin=None, classes=1, segments=("mobile", "other"))
    events = [("class:a", 0.0), ("class:b", 0.0), ("segment:mobile", 0.0), ("segment:tablet", 0.0), ("accuracy", 0.5)]
    state = feed(state, events)
    assert sorted(state.streams) == [AGREEMENT, "class:a", "segment:mobile"]
    assert state.streams["class:a"].weight == BUDGET["class"]
    assert state.streams["class:a"].null_mean == pytest.approx(0.2)  # its own floor
    assert state.streams["segment:mobile"].null_mean == pytest.approx(0.1)  # the segments' floor
    assert state.streams["segment:mobile"].weight == BUDGET["segment"] / 2
    labelled = feed(start_watch(1e5, FLOORS, accuracy_margin=0.01), [("accuracy", 0.5)])
    assert labelled.streams["accuracy"].null_mean == pytest.approx(0.505)


def test_a_student_less_accurate_than_the_margin_alarms_on_accuracy() -> None:
    rng = random.Random(2)
    # only the teacher right in 5 % of labelled pairs, only the student in 1 %: 4 points worse
    losses = [("accuracy", 1.0 if (u := rng.random()) < 0.05 else 0.0 if u < 0.06 else 0.5) for _ in range(20_000)]
    state = feed(start_watch(1e4, FLOORS, accuracy_margin=0.01), losses)
    assert state.alarms and state.alarms[0].stream == "accuracy"
    assert "student - teacher -0.0" in state.alarms[0].message


def test_a_watched_kind_needs_its_floor() -> None:
    with pytest.raises(ValueError, match="floors: need a floor in \\(0, 1\\) for 'class'"):
        start_watch(1e5, {"agreement": 0.97}, classes=2)


def test_the_state_round_trips_through_json() -> None:
    state = feed(start_watch(1e5, FLOORS, classes=2), [("class:a", 1.0), (AGREEMENT, 0.0)])
    assert WatchState.model_validate_json(state.model_dump_json()) == state
