"""Application arguments and the shipped Ray Serve config (no Ray cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from rollout.errors import SpecError
from rollout.spec import RolloutSpec, fixed_share_spec
from serving.app import AppArgs
from serving.config import Autoscaling, Resources
from serving.routing import cost_dollars

CONFIG = Path(__file__).parents[2] / "deploy" / "serve_config.yaml"


def test_serve_config_is_a_valid_ray_serve_config() -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (app,) = schema.applications
    assert app.import_path == "serving.app:app_builder" and app.route_prefix == "/"
    args = AppArgs.model_validate(app.args)
    assert args.student.num_cpus > 0
    assert args.rollout_spec() == RolloutSpec()  # the file spells out the defaults


def test_app_args_accept_strings_like_serve_run_passes() -> None:
    args = AppArgs.model_validate({"teacher_id": "abc", "student_id": "def", "price_per_cpu_hour": "0.05"})
    assert args.price_per_cpu_hour == 0.05


def test_rollout_spec_from_a_yaml_file(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("stages: [{weight: 0}, {weight: 1}]\nagreement: {threshold: 0.9}\n")
    args = AppArgs.model_validate({"teacher_id": "a", "student_id": "b", "rollout": str(spec)})
    assert [s.weight for s in args.rollout_spec().stages] == [0, 1]
    spec.write_text("stages: [{weight: 0}, {weight: 1}]\nagreement: {treshold: 0.9}\n")
    with pytest.raises(SpecError, match=r"agreement\.treshold"):
        args.rollout_spec()


@pytest.mark.parametrize("removed", ["controller", "initial_weight", "shadow_fraction"])
def test_there_is_one_controller_and_a_fixed_share_is_an_intent(removed: str) -> None:
    """The manual controller is gone: its arguments are refused by name, not ignored."""
    with pytest.raises(ValidationError, match=removed):
        AppArgs.model_validate({"teacher_id": "a", "student_id": "b", removed: "manual"})


def test_a_fixed_share_spec_judges_nothing_and_holds_stage_0() -> None:
    spec = fixed_share_spec(0.25)
    assert (spec.agreement, spec.errors, spec.latency, spec.cost, spec.fast_rollback) == (None,) * 5
    assert spec.stages[0].shadow_fraction == 0.25 and spec.stages[0].min_dwell_s >= 24 * 3600


def test_app_args_name_the_bad_field() -> None:
    with pytest.raises(ValidationError, match="price_per_cpu_hour"):
        AppArgs.model_validate({"teacher_id": "a", "student_id": "b", "price_per_cpu_hour": -1})
    with pytest.raises(ValidationError, match="student_id"):
        AppArgs.model_validate({"teacher_id": "a", "student_id": ""})


def test_deployment_options_fit_the_batch() -> None:
    options = Resources(num_cpus=0.5, max_ongoing_requests=4).options("student", at_least_ongoing=16)
    assert options["max_ongoing_requests"] == 16 and options["ray_actor_options"] == {"num_cpus": 0.5}
    scaled = Resources(autoscaling=Autoscaling(min_replicas=1, max_replicas=3)).options("teacher")
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 3


def test_price_example_from_the_readme() -> None:
    # a 2 ms student call on a 1-CPU replica at $0.05 per CPU-hour
    assert cost_dollars(0.002, 1.0, 0.05) == pytest.approx(2.78e-8, rel=1e-2)
