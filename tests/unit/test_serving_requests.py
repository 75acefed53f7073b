"""Request validation, admin authentication and the minimal controller (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.admin import TOKEN_ENV, TOKEN_FILE_ENV, authorize, configured_token
from serving.errors import AdminAuthError
from serving.schemas import MAX_INPUT_CHARS, MAX_INPUTS, PredictRequest, WeightUpdate, first_error


def _field(payload: object, model: type[PredictRequest] | type[WeightUpdate] = PredictRequest) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(payload)
    return first_error(info.value)[0]


def test_valid_request() -> None:
    request = PredictRequest.model_validate({"inputs": ["good film"] * MAX_INPUTS, "routing_key": "u1"})
    assert len(request.inputs) == MAX_INPUTS and request.routing_key == "u1"
    assert PredictRequest.model_validate({"inputs": ["x" * MAX_INPUT_CHARS]}).routing_key is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": ["x"] * (MAX_INPUTS + 1)}, "inputs"),
        ({"inputs": ["x", "x" * (MAX_INPUT_CHARS + 1)]}, "inputs.1"),
        ({"inputs": [""]}, "inputs.0"),
        ({"inputs": [1]}, "inputs.0"),
        ({"inputs": ["x"], "routing_key": ""}, "routing_key"),
        ({"inputs": ["x"], "variant": "student"}, "variant"),  # no way to force a variant
        ({}, "inputs"),
    ],
)
def test_invalid_requests_name_the_field(payload: object, field: str) -> None:
    assert _field(payload) == field


def test_first_error_of_bad_json_names_the_body() -> None:
    with pytest.raises(ValidationError) as info:
        PredictRequest.model_validate_json(b"{oops")
    assert first_error(info.value)[0] == "body"


def test_weight_update_bounds() -> None:
    assert WeightUpdate.model_validate({"weight": 0.25, "reason": "canary"}).weight == 0.25
    assert _field({"weight": 1.01, "reason": "x"}, WeightUpdate) == "weight"
    assert _field({"weight": -0.1, "reason": "x"}, WeightUpdate) == "weight"
    assert _field({"weight": 0.5}, WeightUpdate) == "reason"


def test_admin_refuses_everything_without_a_configured_token() -> None:
    with pytest.raises(AdminAuthError, match=f"no token configured.*{TOKEN_ENV}"):
        authorize("Bearer anything", env={})
    assert configured_token({TOKEN_FILE_ENV: "/nonexistent/token"}) is None


def test_admin_token_checks() -> None:
    env = {TOKEN_ENV: "t0ken"}
    authorize("Bearer t0ken", env=env)
    cases = [(None, "missing"), ("t0ken", "malformed"), ("Basic t0ken", "malformed"), ("Bearer no", "invalid")]
    for header, message in cases:
        with pytest.raises(AdminAuthError, match=message) as info:
            authorize(header, env=env)
        assert "t0ken" not in str(info.value)


def test_admin_token_from_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    authorize("Bearer from-file", env={TOKEN_FILE_ENV: str(path)})
    assert configured_token({TOKEN_ENV: "env-wins", TOKEN_FILE_ENV: str(path)}) == "env-wins"
