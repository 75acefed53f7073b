"""The application builder: teacher + student ModelDeployments, a controller and the Router
ingress, wired from typed arguments.

The controller is the rollout controller: the weight walks the spec's stages on evidence, state
in `<state_dir>/<teacher id>-<student id>.sqlite`. A fixed share is an operator intent on it
(`kdcanary rollout start`, then `kdcanary rollout set-weight W`), not another controller. The
rollout spec is inline (`rollout: {stages: ..., agreement: ...}`) or a YAML file path; it
reaches the controller as its `user_config`, so `serve deploy` with a new spec reconfigures the
live controller without restarting it.

    serve run serving.app:app_builder teacher_id=050bd0c00874 student_id=4eda7f96f69e registry=/tmp/reg1
    serve deploy deploy/serve_config.yaml          (import_path: serving.app:app_builder, args: {...})

Ray passes the builder a dict of arguments (strings from the command line, YAML values from a
config file); `AppArgs` validates it, so a bad argument fails the deploy with the field named.
"""

import os
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, HttpUrl
from ray.serve import Application, Deployment

from compression.registry import Registry, default_root
from rollout.errors import SpecError
from rollout.evidence import Variant
from rollout.spec import RolloutSpec
from serving.config import Batching, ModelConfig, Resources, RouterConfig, Runtime
from serving.model import ModelDeployment
from serving.rollout_deployment import ControllerConfig, RolloutDeployment
from serving.router import Router

MODEL = cast(Deployment, ModelDeployment)
ROLLOUT_CONTROLLER = cast(Deployment, RolloutDeployment)
ROUTER = cast(Deployment, Router)
STATE_DIR_ENV = "KDCANARY_STATE_DIR"


def default_state_dir() -> Path:
    """$KDCANARY_STATE_DIR, else ./rollout-state (on a cluster: a persistent volume)."""
    return Path(os.environ.get(STATE_DIR_ENV) or "rollout-state")


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher_id: str = Field(min_length=1)
    student_id: str = Field(min_length=1)
    registry: Path = Field(default_factory=default_root)
    teacher_runtime: Runtime = "onnx"  # "torch" serves an FP32 bundle's torch weights
    student_runtime: Runtime = "onnx"
    price_per_cpu_hour: float = Field(default=0.05, ge=0.0)
    batching: Batching = Batching()
    teacher: Resources = Resources()
    student: Resources = Resources()
    router: Resources = Resources(num_cpus=0.25, max_ongoing_requests=256)
    router_settings: RouterConfig = RouterConfig()
    student_chaos_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    student_chaos_delay_s: float = Field(default=0.0, ge=0.0, le=60.0)
    rollout: RolloutSpec | Path = Field(default_factory=RolloutSpec, description="inline spec or a YAML file")
    state_dir: Path = Field(default_factory=default_state_dir)
    webhooks: tuple[HttpUrl, ...] = ()

    def rollout_spec(self) -> RolloutSpec:
        """The spec, read from its YAML file when given as a path (SpecError names the problem)."""
        if isinstance(self.rollout, RolloutSpec):
            return self.rollout
        try:
            text = self.rollout.read_text()
        except OSError as exc:
            raise SpecError(f"rollout spec {self.rollout}: cannot be read ({exc.strerror or exc})") from exc
        return RolloutSpec.from_yaml_text(text)


def app_builder(args: AppArgs | dict[str, Any]) -> Application:
    """A Serve application from `AppArgs` (or the dict Ray passes from a CLI or config file)."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    models = {}
    for variant, ref, resources, runtime in (
        (Variant.TEACHER, args.teacher_id, args.teacher, args.teacher_runtime),
        (Variant.STUDENT, args.student_id, args.student, args.student_runtime),
    ):
        config = ModelConfig(
            registry=args.registry.resolve(),
            runtime=runtime,
            bundle=ref,
            variant=variant,
            cpus=resources.num_cpus,
            price_per_cpu_hour=args.price_per_cpu_hour,
            batching=args.batching,
            chaos_error_rate=args.student_chaos_error_rate if variant is Variant.STUDENT else 0.0,
            chaos_delay_s=args.student_chaos_delay_s if variant is Variant.STUDENT else 0.0,
        )
        options = resources.options(variant.value, at_least_ongoing=args.batching.max_batch_size)
        models[variant] = MODEL.options(**options).bind(config)
    return ROUTER.options(**args.router.options("router")).bind(
        models[Variant.TEACHER], models[Variant.STUDENT], _controller(args), args.router_settings
    )


def _controller(args: AppArgs) -> Application:
    registry = Registry(args.registry)
    teacher, student = registry.get(args.teacher_id).id, registry.get(args.student_id).id
    config = ControllerConfig(
        state_path=args.state_dir.resolve() / f"{teacher}-{student}.sqlite", webhooks=args.webhooks
    )
    spec = args.rollout_spec().model_dump(mode="json")
    return ROLLOUT_CONTROLLER.options(user_config=spec).bind(config)
