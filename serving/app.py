"""The application builder: teacher + student ModelDeployments, the WeightController and the
Router ingress, wired from typed arguments.

    serve run serving.app:app_builder teacher_id=050bd0c00874 student_id=4eda7f96f69e registry=/tmp/reg1
    serve deploy deploy/serve_config.yaml          (import_path: serving.app:app_builder, args: {...})

Ray passes the builder a dict of arguments (strings from the command line, YAML values from a
config file); `AppArgs` validates it, so a bad argument fails the deploy with the field named.
"""

from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application, Deployment

from compression.registry import default_root
from rollout.evidence import Variant
from serving.config import Batching, ModelConfig, Resources, RouterConfig
from serving.controller import WeightController
from serving.model import ModelDeployment
from serving.router import Router

MODEL = cast(Deployment, ModelDeployment)
CONTROLLER = cast(Deployment, WeightController)
ROUTER = cast(Deployment, Router)


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher_id: str = Field(min_length=1)
    student_id: str = Field(min_length=1)
    registry: Path = Field(default_factory=default_root)
    initial_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    shadow_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    price_per_cpu_hour: float = Field(default=0.05, ge=0.0)
    batching: Batching = Batching()
    teacher: Resources = Resources()
    student: Resources = Resources()
    router: Resources = Resources(num_cpus=0.25, max_ongoing_requests=256)
    router_settings: RouterConfig = RouterConfig()
    student_chaos_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)


def app_builder(args: AppArgs | dict[str, Any]) -> Application:
    """A Serve application from `AppArgs` (or the dict Ray passes from a CLI or config file)."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    models = {}
    for variant, ref, resources in (
        (Variant.TEACHER, args.teacher_id, args.teacher),
        (Variant.STUDENT, args.student_id, args.student),
    ):
        config = ModelConfig(
            registry=args.registry.resolve(),
            bundle=ref,
            variant=variant,
            cpus=resources.num_cpus,
            price_per_cpu_hour=args.price_per_cpu_hour,
            batching=args.batching,
            chaos_error_rate=args.student_chaos_error_rate if variant is Variant.STUDENT else 0.0,
        )
        options = resources.options(variant.value, at_least_ongoing=args.batching.max_batch_size)
        models[variant] = MODEL.options(**options).bind(config)
    controller = CONTROLLER.bind(args.initial_weight, args.shadow_fraction)
    settings = args.router_settings.model_copy(
        update={"initial_weight": args.initial_weight, "initial_shadow_fraction": args.shadow_fraction}
    )
    router = ROUTER.options(**args.router.options("router")).bind(
        models[Variant.TEACHER], models[Variant.STUDENT], controller, settings
    )
    return router
