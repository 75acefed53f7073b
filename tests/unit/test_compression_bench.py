"""The compression benchmark's paired-bootstrap interval of the accuracy gap (pure numpy)."""

import numpy as np

from bench.compression import paired_gap_interval


def test_same_answers_have_no_gap() -> None:
    right = np.random.default_rng(1).random(1000) < 0.85
    assert paired_gap_interval(right, right) == [0.0, 0.0]


def test_interval_holds_the_gap_and_is_narrower_than_unpaired() -> None:
    rng = np.random.default_rng(2)
    student = rng.random(1000) < 0.85
    teacher = student.copy()
    teacher[np.flatnonzero(~student)[:30]] = True  # the teacher also gets 30 of the student's misses: 3 points
    low, high = paired_gap_interval(teacher, student)
    assert low < 3.0 < high
    assert low > 0  # paired: the texts both get right add no spread, so 3 points on 1k texts is clear of 0
    assert paired_gap_interval(student, teacher) == [-high, -low]
