"""Benchmarks write their tables into the README between `<!-- bench:NAME:start/end -->` markers."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_section(name: str, body: str) -> None:
    """Put `body` between the markers of section `name`; a README without them is left alone."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = README.read_text()
    if start not in text:
        return
    before, rest = text.split(start, 1)
    README.write_text(before + start + "\n" + body + "\n" + end + rest.split(end, 1)[1])
