"""The one error table: complete, unshadowed, consistent with the client's mapping and the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from compression.errors import CompressionError
from rollout.errors import RolloutError, SpecError, StoreError
from serving.error_table import (
    EXIT_CHECK_FAILED,
    TABLE,
    UNKNOWN,
    exit_code_for_status,
    lookup,
    one_line,
)
from serving.errors import ServingError

README = Path(__file__).resolve().parents[2] / "README.md"


def every_subclass(base: type[BaseException]) -> list[type[BaseException]]:
    found = [base]
    for sub in base.__subclasses__():
        found += every_subclass(sub)
    return found


@pytest.mark.parametrize("base", [CompressionError, RolloutError, ServingError])
def test_every_deliberate_error_has_a_row(base: type[BaseException]) -> None:
    for error in every_subclass(base):
        rows = [row.error for row in TABLE]
        assert any(issubclass(error, row) for row in rows), error
        # the most specific row answers: a row listed for the class itself is the one found
        if error in rows:
            assert lookup(error.__new__(error)).error is error


def test_no_row_is_shadowed_by_an_earlier_one() -> None:
    for i, earlier in enumerate(TABLE):
        for later in TABLE[i + 1 :]:
            assert not issubclass(later.error, earlier.error), f"{later.error.__name__} after {earlier.error.__name__}"


def test_the_clients_exit_code_agrees_with_the_table() -> None:
    for row in (*TABLE, UNKNOWN):
        if row.exit_code != EXIT_CHECK_FAILED:  # a failed check is the CLI's own verdict, not an HTTP answer
            assert exit_code_for_status(row.http_status) == row.exit_code, row
    assert exit_code_for_status(None) == exit_code_for_status(429) == UNKNOWN.exit_code


def test_unknown_errors_are_an_outage_and_messages_are_one_line() -> None:
    assert lookup(RuntimeError("actor died")) is UNKNOWN
    assert lookup(StoreError("disk full", "/x")).http_status == 503
    assert one_line(SpecError("stages.1.weight: too big\nstages.2: missing")) == (
        "stages.1.weight: too big stages.2: missing"
    )

    class Body(BaseModel):
        weight: float

    with pytest.raises(ValidationError) as info:
        Body.model_validate({"weight": "lots"})
    assert one_line(info.value) == "weight: Input should be a valid number, unable to parse string as a number"


def test_the_readme_shows_the_table() -> None:
    section = README.read_text().split("#### Errors", 1)[1].split("\n#", 1)[0]
    shown = re.findall(r"^\| `?([\w ]+?)`? \| (\d+) \| (\d) \| (.+?) \|$", section, re.M)
    expected = [(row.error.__name__, str(row.http_status), str(row.exit_code), row.meaning) for row in TABLE]
    assert shown == [*expected, ("anything else", str(UNKNOWN.http_status), str(UNKNOWN.exit_code), UNKNOWN.meaning)]
