"""Application arguments and the shipped Ray Serve config (no Ray cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from serving.app import AppArgs
from serving.config import Autoscaling, Resources
from serving.routing import cost_dollars

CONFIG = Path(__file__).parents[2] / "deploy" / "serve_config.yaml"


def test_serve_config_is_a_valid_ray_serve_config() -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (app,) = schema.applications
    assert app.import_path == "serving.app:app_builder" and app.route_prefix == "/"
    args = AppArgs.model_validate(app.args)
    assert args.initial_weight == 0.0 and args.student.num_cpus > 0


def test_app_args_accept_strings_like_serve_run_passes() -> None:
    args = AppArgs.model_validate({"teacher_id": "abc", "student_id": "def", "initial_weight": "0.05"})
    assert args.initial_weight == 0.05


def test_app_args_name_the_bad_field() -> None:
    with pytest.raises(ValidationError, match="shadow_fraction"):
        AppArgs.model_validate({"teacher_id": "a", "student_id": "b", "shadow_fraction": 2})
    with pytest.raises(ValidationError, match="student_id"):
        AppArgs.model_validate({"teacher_id": "a"})


def test_deployment_options_fit_the_batch() -> None:
    options = Resources(num_cpus=0.5, max_ongoing_requests=4).options("student", at_least_ongoing=16)
    assert options["max_ongoing_requests"] == 16 and options["ray_actor_options"] == {"num_cpus": 0.5}
    scaled = Resources(autoscaling=Autoscaling(min_replicas=1, max_replicas=3)).options("teacher")
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 3


def test_price_example_from_the_readme() -> None:
    # a 2 ms student call on a 1-CPU replica at $0.05 per CPU-hour
    assert cost_dollars(0.002, 1.0, 0.05) == pytest.approx(2.78e-8, rel=1e-2)
