"""`hey` (Debian's Go HTTP load generator) for the benchmarks: a client that is not Python on
the cores being measured. Each run POSTs the same JSON body and reads hey's per-request CSV.

    (hey,) = ensure_tools("hey", ["hey"])
    run = run_hey(hey, url, ["-n", "400", "-c", "1"])          # a fixed number of requests
    run = HeyProcess(hey, url, ["-c", "128", "-q", "10", "-z", "60s"]).wait()   # in the background
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PAYLOAD = {"inputs": ["a moving, beautifully acted film that stays with you"]}


@dataclass(frozen=True)
class HeyRun:
    """What one hey run saw: answers by status code (0: no answer), throughput and latency."""

    requests: int
    codes: dict[int, int]
    throughput_rps: float
    p50_ms: float
    p99_ms: float

    @classmethod
    def from_csv(cls, text: str) -> HeyRun:
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            return cls(0, {}, 0.0, float("nan"), float("nan"))
        seconds = np.asarray([float(row["response-time"]) for row in rows])
        offsets = np.asarray([float(row["offset"]) for row in rows])
        span = float((offsets + seconds).max() - offsets.min())
        ms = seconds * 1000
        return cls(
            requests=len(rows),
            codes=dict(Counter(int(row["status-code"] or 0) for row in rows)),
            throughput_rps=round(len(rows) / span, 1) if span > 0 else 0.0,
            p50_ms=round(float(np.percentile(ms, 50)), 2),
            p99_ms=round(float(np.percentile(ms, 99)), 2),
        )


def _command(hey: Path, url: str, options: list[str], body: dict[str, Any]) -> list[str]:
    return [str(hey), "-m", "POST", "-T", "application/json", "-d", json.dumps(body), *options, "-o", "csv", url]


def run_hey(hey: Path, url: str, options: list[str], body: dict[str, Any] = PAYLOAD) -> HeyRun:
    done = subprocess.run(_command(hey, url, options, body), capture_output=True, text=True, check=True, timeout=3600)
    return HeyRun.from_csv(done.stdout)


class HeyProcess:
    """A hey run in the background (started at once); `wait()` gives its HeyRun."""

    def __init__(self, hey: Path, url: str, options: list[str], body: dict[str, Any] = PAYLOAD) -> None:
        # Output to files, not pipes: nobody reads a pipe while hey runs, and a full one would stop it.
        self._out = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in wait)
        self._err = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self._process = subprocess.Popen(_command(hey, url, options, body), stdout=self._out, stderr=self._err)

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def wait(self) -> HeyRun:
        self._process.wait(timeout=3600)
        self._out.seek(0)
        self._err.seek(0)
        with self._out, self._err:
            if self._process.returncode != 0:
                raise RuntimeError(f"hey failed (exit {self._process.returncode}): {self._err.read()[-2000:]}")
            return HeyRun.from_csv(self._out.read())
