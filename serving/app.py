"""The application builder: teacher + student ModelDeployments, a controller and the Router
ingress, wired from typed arguments.

What an operator changes during a rollout's life is each deployment's `user_config`, which
Ray Serve applies in place (`reconfigure`, no replica restarts):

    teacher, student   {bundle, runtime}: a new bundle is loaded beside the old one, then swapped
    controller         the rollout spec: adopted in place (same stage, weight, evidence)
    router             RouterConfig: timeouts, shadow concurrency, admission, transport

The builder's arguments (`AppArgs`) set the rest: registry, state directory, resources,
batching, webhooks. Ray hashes them into the application's code version, so changing any of
them restarts every replica. `teacher_id`, `student_id`, `rollout` and `router_settings` here
only give the user_configs their first values (for `serve run` and `kdcanary serve`); a config
file sets them under `deployments:` instead (deploy/serve_config.yaml), where a change is an
in-place update. The controller learns the pair from the models themselves (see
serving/rollout_deployment.py) and keeps one store per pair under `state_dir`.

    serve run serving.app:app_builder teacher_id=050bd0c00874 student_id=4eda7f96f69e registry=/tmp/reg1
    serve deploy deploy/serve_config.yaml

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
from serving.config import Batching, ModelConfig, ModelUserConfig, Resources, RouterConfig, Runtime
from serving.model import ModelDeployment
from serving.rollout_deployment import ControllerConfig, RolloutDeployment
from serving.router import Router
from serving.smoke_inputs import read_labelled_inputs

MODEL = cast(Deployment, ModelDeployment)
ROLLOUT_CONTROLLER = cast(Deployment, RolloutDeployment)
ROUTER = cast(Deployment, Router)
STATE_DIR_ENV = "KDCANARY_STATE_DIR"


def default_state_dir() -> Path:
    """$KDCANARY_STATE_DIR, else ./rollout-state (on a cluster: a persistent volume)."""
    return Path(os.environ.get(STATE_DIR_ENV) or "rollout-state")


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher_id: str | None = Field(default=None, min_length=1, description="else user_config on 'teacher'")
    student_id: str | None = Field(default=None, min_length=1, description="else user_config on 'student'")
    registry: Path = Field(default_factory=default_root)
    teacher_runtime: Runtime = "onnx"  # "torch" serves an FP32 bundle's torch weights
    student_runtime: Runtime = "onnx"
    teacher_max_length: int | None = Field(
        default=None, ge=2, le=512, description="serve shorter inputs than the bundle's"
    )
    student_max_length: int | None = Field(
        default=None, ge=2, le=512, description="serve shorter inputs than the bundle's"
    )
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
        """The spec, read from its YAML file when given as a path, with the smoke test's labelled
        inputs checked when it names some (SpecError names the problem)."""
        spec = self.rollout if isinstance(self.rollout, RolloutSpec) else _read_spec(self.rollout)
        if spec.smoke is not None and spec.smoke.inputs is not None and self.teacher_id is not None:
            teacher = Registry(self.registry.resolve()).get(self.teacher_id)
            read_labelled_inputs(spec.smoke.inputs, tuple(teacher.manifest.label_names))
        return spec


def _read_spec(path: Path) -> RolloutSpec:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"rollout spec {path}: cannot be read ({exc.strerror or exc})") from exc
    return RolloutSpec.from_yaml_text(text)


def app_builder(args: AppArgs | dict[str, Any]) -> Application:
    """A Serve application from `AppArgs` (or the dict Ray passes from a CLI or config file)."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    registry = Registry(args.registry.resolve())
    models = {}
    for variant, ref, resources, runtime, max_length in (
        (Variant.TEACHER, args.teacher_id, args.teacher, args.teacher_runtime, args.teacher_max_length),
        (Variant.STUDENT, args.student_id, args.student, args.student_runtime, args.student_max_length),
    ):
        options = resources.options(variant.value, at_least_ongoing=args.batching.max_batch_size)
        config = ModelConfig(
            registry=registry.root,
            variant=variant,
            cpus=resources.num_cpus,
            max_ongoing_requests=options["max_ongoing_requests"],
            price_per_cpu_hour=args.price_per_cpu_hour,
            batching=args.batching,
            chaos_error_rate=args.student_chaos_error_rate if variant is Variant.STUDENT else 0.0,
            chaos_delay_s=args.student_chaos_delay_s if variant is Variant.STUDENT else 0.0,
        )
        if ref is not None:  # an unknown bundle fails here, before anything starts
            wanted = ModelUserConfig(bundle=registry.get(ref).id, runtime=runtime, max_length=max_length)
            options["user_config"] = wanted.model_dump()
        models[variant] = MODEL.options(**options).bind(config)
    teacher, student = models[Variant.TEACHER], models[Variant.STUDENT]
    controller = ROLLOUT_CONTROLLER.options(user_config=args.rollout_spec().model_dump(mode="json")).bind(
        ControllerConfig(state_dir=args.state_dir.resolve(), webhooks=args.webhooks), teacher, student
    )
    router_options = args.router.options("router") | {"user_config": args.router_settings.model_dump(mode="json")}
    return ROUTER.options(**router_options).bind(teacher, student, controller)
