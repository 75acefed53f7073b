"""What the benchmarks share: the README section writer (tables go between
`<!-- bench:NAME:start/end -->` markers) and the compression benchmark's best student."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def replace_section(name: str, body: str) -> None:
    """Put `body` between the markers of section `name`; a README without them is left alone."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = README.read_text()
    if start not in text:
        return
    before, rest = text.split(start, 1)
    README.write_text(before + start + "\n" + body + "\n" + end + rest.split(end, 1)[1])


def best_student() -> str:
    """The full recipe's best student (`make bench` builds it first), the one the serving
    benchmarks put behind the router."""
    compression = ROOT / "bench" / "results" / "compression-full.json"
    if compression.is_file():
        return str(json.loads(compression.read_text())["target"]["best_student"]["name"])
    return "minilm-l2-pruned-int8"
