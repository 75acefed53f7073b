"""Autoscaling that counts stream-lane calls: Serve's queue-length policy, fed both paths' load.

Ray Serve scales a deployment on the requests its handles and replicas count, and stream-lane
calls (serving/stream.py) pass neither. Each model replica reports its lane calls in flight as a
custom metric (`record_autoscaling_stats`); this policy adds them to Serve's own count and
applies Serve's formula (replicas = ongoing requests / target per replica). Serve's wrapper
still applies the bounds, delays and scaling factors of the deployment's autoscaling_config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

STREAM_IN_FLIGHT = "stream_in_flight"
POLICY = "serving.autoscaling:queue_length_with_stream"


def queue_length_with_stream(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """Desired replicas (unrounded: Serve's wrapper rounds and bounds them)."""
    if ctx.current_num_replicas == 0 or ctx.config is None:  # nothing measured yet: keep the target
        return ctx.target_num_replicas, {}
    lane = sum((ctx.aggregated_metrics or {}).get(STREAM_IN_FLIGHT, {}).values())
    ongoing = ctx.total_num_requests + lane
    return ongoing / ctx.config.get_target_ongoing_requests(), {}
