"""rollout.spec: defaults, and validation errors that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rollout.errors import SpecError
from rollout.spec import LatencyGate, RolloutSpec, Stage


def _stages(*weights: float) -> list[dict[str, float]]:
    return [{"weight": weight} for weight in weights]


def test_defaults_climb_0_5_10_25_50_100_percent_with_all_gates_but_cost() -> None:
    spec = RolloutSpec()
    assert [stage.weight for stage in spec.stages] == [0, 0.05, 0.1, 0.25, 0.5, 1]
    assert spec.agreement is not None and spec.agreement.threshold == 0.97
    assert spec.errors is not None and spec.latency is not None and spec.fast_rollback is not None
    assert spec.cost is None
    assert RolloutSpec.from_mapping(None) == spec == RolloutSpec.from_yaml_text("")


@pytest.mark.parametrize(
    ("stages", "needle"),
    [
        (_stages(0.05, 1), "stages[0].weight must be 0 (the shadow stage), got 0.05"),
        (_stages(0, 0.5), "stages[1].weight must be 1 (all traffic), got 0.5"),
        (_stages(0, 0.25, 0.1, 1), "stages[2].weight must be greater than stages[1]'s 0.25"),
        (_stages(0, 0.1, 0.1, 1), "stages[2].weight"),
        (_stages(0), "need at least 2 stages"),
    ],
)
def test_stage_weights_are_fractions_climbing_from_0_to_1(stages: list[dict[str, float]], needle: str) -> None:
    with pytest.raises(SpecError) as raised:
        RolloutSpec.from_mapping({"stages": stages})
    assert needle in str(raised.value)
    assert str(raised.value).startswith("invalid rollout spec: stages:")


def test_a_percent_weight_is_named_as_such() -> None:
    """Weights are fractions; a spec written in percents fails on the field, not silently."""
    with pytest.raises(SpecError, match=r"stages\.1\.weight: Input should be less than or equal to 1"):
        RolloutSpec.from_mapping({"stages": _stages(0, 5, 100)})
    with pytest.raises(SpecError, match=r"stages\.0: weight_percent is now weight, a fraction 0\.\.1"):
        RolloutSpec.from_mapping({"stages": [{"weight_percent": 0}, {"weight": 1}]})


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"agreement": {"treshold": 0.9}}, "agreement.treshold"),
        ({"agreement": {"threshold": 1.2}}, "agreement.threshold"),
        ({"errors": {"alpha": 0}}, "errors.alpha"),
        (
            {"stages": [{"weight": 0}, {"weight": 1, "min_requests": -1}]},
            "stages.1.min_requests",
        ),
        (
            {"stages": [{"weight": 0, "shadow_fraction": 2}, {"weight": 1}]},
            "stages.0.shadow_fraction",
        ),
        ({"latency": {"p99_ratio": None}}, "latency"),
        ({"fast_rollback": {"window_s": 600}}, "fast_rollback.window_s"),
        ({"cost": {}}, "cost.max_ratio"),
        ({"tick_interval_s": 0}, "tick_interval_s"),
        ({"stagez": []}, "stagez"),
    ],
)
def test_errors_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as raised:
        RolloutSpec.from_mapping(data)
    assert f"{field}: " in str(raised.value)


def test_direct_construction_raises_pydantic_validation_error() -> None:
    with pytest.raises(ValidationError, match="stages"):
        RolloutSpec(stages=[Stage(weight=0), Stage(weight=0.99)])
    with pytest.raises(ValidationError, match="p99_ratio, p99_slo_s or both"):
        LatencyGate(p99_ratio=None, p99_slo_s=None)


def test_yaml_text_with_disabled_gates_and_custom_stages() -> None:
    spec = RolloutSpec.from_yaml_text(
        """
        stages:
          - {weight: 0, min_requests: 10, min_dwell_s: 0, shadow_fraction: 1.0}
          - {weight: 1, min_requests: 10, min_dwell_s: 0}
        agreement: {threshold: 0.9, alpha: 0.01}
        latency: {p99_ratio: null, p99_slo_s: 0.25}
        errors: null
        cost: {max_ratio: 0.5}
        tick_interval_s: 0.5
        """
    )
    assert [stage.weight for stage in spec.stages] == [0, 1]
    assert spec.errors is None
    assert spec.latency is not None and spec.latency.p99_slo_s == 0.25
    assert spec.cost is not None and spec.cost.max_ratio == 0.5


@pytest.mark.parametrize(
    ("text", "needle"), [("- 1\n- 2\n", "must be a mapping, got list"), ("a: [", "not valid YAML")]
)
def test_yaml_that_is_not_a_mapping_is_a_spec_error(text: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        RolloutSpec.from_yaml_text(text)


def test_spec_round_trips_through_json() -> None:
    spec = RolloutSpec.from_mapping({"cost": {"max_ratio": 0.3}, "latency": {"p99_slo_s": 0.2}})
    assert RolloutSpec.model_validate_json(spec.model_dump_json()) == spec


def test_a_shadow_stage_without_shadow_traffic_is_refused() -> None:
    with pytest.raises(SpecError, match=r"stages\[0\]\.shadow_fraction is 0"):
        RolloutSpec.from_mapping({"stages": [{"weight": 0, "shadow_fraction": 0}, {"weight": 1}]})
    manual = {"weight": 0, "shadow_fraction": 0, "min_requests": 0}  # promoted by hand only
    assert RolloutSpec.from_mapping({"stages": [manual, {"weight": 1}]}).stages[0].min_requests == 0
