"""The disagreement log: shadowed inputs where the student and the teacher answered differently.

Opt-in (`disagreements:` in the spec; off by default, because it stores users' text). Routers
put a `Disagreement` on the student's observation of a shadowed request whose answers differ
(sampled, bounded per batch); the controller appends them here, one JSON line per input, in
the order it records them, each with a sequence number. Those inputs are exactly what the next
student should be distilled on: `kdcanary rollout disagreements --out FILE.jsonl` exports them,
and a recipe takes the file as transfer text (`data.transfer.paths`), labelled by the teacher.

`DisagreementFile(path, max_bytes, keep_files)` writes `path`, rotating it to `path.1` ...
`path.<keep_files>` past `max_bytes` (the oldest is dropped: the log is bounded). Every append is
flushed and fsync'd before `record` returns, and an entry whose id is already in the files is
skipped, so a restarted controller neither loses what it had written nor writes it twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

_ENTRY = ConfigDict(frozen=True, extra="forbid")


class Disagreement(BaseModel):
    """One shadowed input the two models answered differently, as the router saw it."""

    model_config = _ENTRY

    id: str  # the request's nonce and the input's index: unique per input
    at: float  # when it was answered (seconds since the epoch)
    text: str
    teacher_label: str
    student_label: str
    teacher_probabilities: tuple[float, ...]
    student_probabilities: tuple[float, ...]
    segment: str | None = None


class LoggedDisagreement(Disagreement):
    """A disagreement as the log keeps it: with its sequence number and the stage it was seen at."""

    seq: int = Field(ge=1)
    stage: int = Field(ge=0)


class DisagreementSink(Protocol):
    """Where the controller appends disagreements; `entries(after, limit)` pages through them."""

    def append(self, entries: Sequence[Disagreement], stage: int) -> int: ...

    def entries(self, after: int = 0, limit: int = 1000) -> list[LoggedDisagreement]: ...


class MemoryDisagreements:
    """The in-memory fake."""

    def __init__(self) -> None:
        self.logged: list[LoggedDisagreement] = []

    def append(self, entries: Sequence[Disagreement], stage: int) -> int:
        seen = {entry.id for entry in self.logged}
        fresh = [entry for entry in entries if entry.id not in seen]
        for entry in fresh:
            self.logged.append(LoggedDisagreement(**entry.model_dump(), seq=len(self.logged) + 1, stage=stage))
        return len(fresh)

    def entries(self, after: int = 0, limit: int = 1000) -> list[LoggedDisagreement]:
        return [entry for entry in self.logged if entry.seq > after][:limit]


class DisagreementFile:
    """The log on disk (module docstring): JSON lines, rotated, fsync'd, deduplicated by id."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, keep_files: int) -> None:
        self.path, self.max_bytes, self.keep_files = Path(path), max_bytes, keep_files
        self._ids: set[str] = set()
        self._seq = 0
        for entry in self._read_all():
            self._ids.add(entry.id)
            self._seq = max(self._seq, entry.seq)

    def files(self) -> list[Path]:
        """The log's files, oldest first."""
        rotated = [self.path.with_name(f"{self.path.name}.{n}") for n in range(self.keep_files, 0, -1)]
        return [path for path in (*rotated, self.path) if path.is_file()]

    def append(self, entries: Sequence[Disagreement], stage: int) -> int:
        """Write the entries not yet logged; returns how many were written."""
        fresh = [entry for entry in entries if entry.id not in self._ids]
        if not fresh:
            return 0
        lines = []
        for entry in fresh:
            self._seq += 1
            logged = LoggedDisagreement(**entry.model_dump(), seq=self._seq, stage=stage)
            lines.append(logged.model_dump_json() + "\n")
            self._ids.add(entry.id)
        with self.path.open("a", encoding="utf-8") as log:
            log.write("".join(lines))
            log.flush()
            os.fsync(log.fileno())
        if self.path.stat().st_size > self.max_bytes:
            self._rotate()
        return len(fresh)

    def entries(self, after: int = 0, limit: int = 1000) -> list[LoggedDisagreement]:
        found = []
        for entry in self._read_all():
            if entry.seq > after:
                found.append(entry)
                if len(found) == limit:
                    break
        return found

    def _rotate(self) -> None:
        oldest = self.path.with_name(f"{self.path.name}.{self.keep_files}")
        if oldest.is_file():
            dropped = {entry.id for entry in _read(oldest)}
            oldest.unlink()
            self._ids -= dropped
        for n in range(self.keep_files - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.is_file():
                older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))

    def _read_all(self) -> Iterator[LoggedDisagreement]:
        for path in self.files():
            yield from _read(path)


def _read(path: Path) -> Iterator[LoggedDisagreement]:
    """A file's entries; a torn last line (a crash mid-write, before its fsync) is skipped."""
    with path.open(encoding="utf-8") as log:
        for line in log:
            try:
                yield LoggedDisagreement.model_validate(json.loads(line))
            except ValueError:
                continue
