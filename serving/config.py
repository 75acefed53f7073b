"""Typed settings for each deployment (pydantic: they cross the Ray boundary and the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rollout.evidence import Variant
from serving.autoscaling import POLICY
from serving.schemas import MAX_BODY_BYTES

_CONFIG = ConfigDict(extra="forbid", frozen=True)
Runtime = Literal["onnx", "torch"]  # what runs a bundle: model.onnx, or an FP32 stage's torch/ weights
Transport = Literal["stream", "handle"]  # how a router calls the models


class Batching(BaseModel):
    """`@serve.batch` settings; the deployment's max_ongoing_requests is raised to fit them."""

    model_config = _CONFIG

    max_batch_size: int = Field(default=16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(default=0.002, ge=0.0, le=1.0)


class Autoscaling(BaseModel):
    """Ray Serve autoscaling bounds; when set, they replace a fixed replica count."""

    model_config = _CONFIG

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    target_ongoing_requests: float = Field(default=8.0, gt=0.0)
    upscale_delay_s: float = Field(default=30.0, ge=0.0)  # Serve's defaults
    downscale_delay_s: float = Field(default=600.0, ge=0.0)


class Resources(BaseModel):
    """Replicas and CPUs of one deployment (CPUs may be fractional)."""

    model_config = _CONFIG

    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=1.0, gt=0.0)
    max_ongoing_requests: int = Field(default=32, ge=1)
    autoscaling: Autoscaling | None = None
    access_log: bool = False  # one log line per call: off by default, it costs latency on the hot path
    # Ray custom resources each replica needs, e.g. {"student_node": 0.01} to place it on the nodes
    # started with `ray start --resources '{"student_node": 1}'`.
    resources: dict[str, float] = Field(default_factory=dict)

    def options(self, name: str, at_least_ongoing: int = 1) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options(...)`."""
        scaling: dict[str, Any] = (
            {"autoscaling_config": {**self.autoscaling.model_dump(), "policy": {"policy_function": POLICY}}}
            if self.autoscaling
            else {"num_replicas": self.num_replicas}
        )
        return {
            "name": name,
            "ray_actor_options": {"num_cpus": self.num_cpus}
            | ({"resources": self.resources} if self.resources else {}),
            "max_ongoing_requests": max(self.max_ongoing_requests, at_least_ongoing),
            "logging_config": {"enable_access_log": self.access_log},
            **scaling,
        }


class ModelUserConfig(BaseModel):
    """Which bundle a ModelDeployment serves: its Ray Serve `user_config`, so that `serve deploy`
    with another bundle swaps it in place (each replica loads the new one beside the old, warms
    it up, then switches; no replica restarts)."""

    model_config = _CONFIG

    bundle: str = Field(min_length=1, description="registry id or name")
    runtime: Runtime = "onnx"
    max_length: int | None = Field(
        default=None, ge=2, le=512, description="truncate inputs at this many tokens instead of the bundle's max_length"
    )


class ModelConfig(BaseModel):
    """How a ModelDeployment serves (its bundle comes as `ModelUserConfig`) and prices its compute.

    `chaos_error_rate` makes that share of predict calls raise, and `chaos_delay_s` delays every
    predict call by that many seconds (never health checks): for failover tests (a student slower
    than the router's `student_timeout_s`) and rollback drills. Leave both at 0 in production.
    """

    model_config = _CONFIG

    registry: Path
    variant: Variant
    cpus: float = Field(default=1.0, gt=0.0)
    max_ongoing_requests: int = Field(default=32, ge=1, description="the deployment's: the lane refuses past it")
    price_per_cpu_hour: float = Field(default=0.05, ge=0.0)
    batching: Batching = Batching()
    chaos_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    chaos_delay_s: float = Field(default=0.0, ge=0.0, le=60.0)


class RouterConfig(BaseModel):
    """Router behaviour: timeouts, shadow concurrency, how it follows the routing and reports.

    A router starts at weight 0 with no shadow (teacher only, the safe side) and takes the
    controller's routing at its first answer."""

    model_config = _CONFIG

    student_timeout_s: float = Field(default=2.0, gt=0.0)
    teacher_timeout_s: float = Field(default=10.0, gt=0.0)
    shadow_concurrency: int = Field(default=8, ge=1)
    # Routing: the controller holds a router's request until the routing changes, or for
    # routing_wait_s; poll_interval_s passes between requests (and after a failed one).
    routing_wait_s: float = Field(default=2.0, ge=0.0, le=10.0)
    poll_interval_s: float = Field(default=0.25, gt=0.0, le=5.0)
    flush_interval_s: float = Field(default=0.5, gt=0.0, le=10.0)
    flush_max_observations: int = Field(default=512, ge=1)
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1024)
    # Admission per router replica (serving/limits.py): past it, 429 at once. None turns it off.
    max_requests_per_s: float | None = Field(default=2000.0, gt=0.0)
    burst_s: float = Field(default=0.5, gt=0.0, le=10.0)  # seconds of the rate a burst may take at once
    # Requests that reach a router together share one call to the model (see CoalescingClient).
    coalesce_calls: bool = True
    # How the router calls models: "stream" (serving/stream.py, the handle as fallback) or "handle".
    model_transport: Transport = "stream"
    seed: int | None = None
