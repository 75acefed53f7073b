"""rollout.disagreements and the controller's log: bounded, rotated, nothing lost or written twice
across a restart, off unless the spec asks, paged for export."""

from __future__ import annotations

from pathlib import Path

from rollout.clock import FakeClock
from rollout.controller import RolloutController
from rollout.disagreements import Disagreement, DisagreementFile, MemoryDisagreements
from rollout.evidence import Observation, Variant
from rollout.spec import RolloutSpec
from rollout.store import MemoryStateStore
from rollout.webhooks import RecordingWebhookSender


def entry(i: int, text: str = "a plot twist nobody saw coming") -> Disagreement:
    return Disagreement(
        id=f"nonce{i}:0",
        at=1_000.0 + i,
        text=f"{text} {i}",
        teacher_label="positive",
        student_label="negative",
        teacher_probabilities=(0.2, 0.8),
        student_probabilities=(0.7, 0.3),
    )


def test_the_file_log_pages_rotates_and_survives_a_restart_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "pair.disagreements.jsonl"
    log = DisagreementFile(path, max_bytes=2**16, keep_files=2)
    assert log.append([entry(i) for i in range(3)], stage=1) == 3
    assert log.append([entry(2), entry(3)], stage=2) == 1  # entry 2 is already there
    again = DisagreementFile(path, max_bytes=2**16, keep_files=2)  # a restarted controller
    assert again.append([entry(3), entry(4)], stage=2) == 1
    logged = again.entries()
    assert [e.seq for e in logged] == [1, 2, 3, 4, 5] and [e.stage for e in logged] == [1, 1, 1, 2, 2]
    assert [e.seq for e in again.entries(after=3, limit=1)] == [4]
    with path.open("a") as torn:  # a crash mid-write: the torn line is skipped, not fatal
        torn.write('{"id": "half')
    assert len(DisagreementFile(path, max_bytes=2**16, keep_files=2).entries()) == 5


def test_rotation_keeps_the_log_bounded(tmp_path: Path) -> None:
    path = tmp_path / "pair.disagreements.jsonl"
    log = DisagreementFile(path, max_bytes=2**16, keep_files=2)
    for i in range(2_000):  # ~400 bytes a line: several rotations
        log.append([entry(i, text="x" * 200)], stage=0)
    assert [p.name for p in log.files()] == [f"{path.name}.2", f"{path.name}.1", path.name]
    assert sum(p.stat().st_size for p in log.files()) <= 3 * 2**16 + 1_000
    seqs = [e.seq for e in log.entries(limit=100_000)]
    assert seqs == sorted(seqs) and seqs[-1] == 2_000 and seqs[0] > 1  # the oldest were dropped


def observations(entries: list[Disagreement]) -> list[Observation]:
    student = Observation(variant=Variant.STUDENT, latency_s=0.01, agreed=False, disagreements=tuple(entries))
    return [student, Observation(variant=Variant.TEACHER, latency_s=0.02)]


def test_the_controller_logs_only_when_the_spec_asks_and_bounds_each_batch() -> None:
    sink = MemoryDisagreements()
    spec = RolloutSpec.from_mapping({"disagreements": {"per_batch": 2}})
    controller = RolloutController(
        spec, MemoryStateStore(), FakeClock(0.0), RecordingWebhookSender(), disagreements=sink
    )
    assert controller.routing().log_disagreements == 1.0 and controller.routing().log_per_batch == 2
    controller.start(actor="alice", reason="ship v2")
    controller.record(observations([entry(i) for i in range(5)]))
    assert [e.id for e in controller.disagreements()] == ["nonce0:0", "nonce1:0"]
    off = RolloutController(
        RolloutSpec(), MemoryStateStore(), FakeClock(0.0), RecordingWebhookSender(), disagreements=sink
    )
    assert off.routing().log_disagreements == 0.0  # the default: no user text is kept
    off.start(actor="alice", reason="ship v2")
    off.record(observations([entry(9)]))
    assert len(sink.logged) == 2
