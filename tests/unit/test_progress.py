"""Progress where tqdm draws nothing (a log, CI): a line per stage, throttled steps."""

from __future__ import annotations

from compression import progress


def test_lines_show_each_stage_and_each_loops_last_step_but_throttle_the_rest() -> None:
    shown: list[str] = []
    report = progress.lines(shown.append, every_s=3600)
    report("teacher", 0, 0)
    for step in range(1, 11):
        report("distill minilm", step, 10)
    report("prune", 0, 0)
    assert shown == ["  teacher", "  distill minilm 1/10", "  distill minilm 10/10", "  prune"]


def test_with_no_throttle_every_step_shows() -> None:
    shown: list[str] = []
    report = progress.lines(shown.append, every_s=0)
    for step in range(1, 4):
        report("distill minilm", step, 3)
    assert shown == [f"  distill minilm {step}/3" for step in range(1, 4)]
