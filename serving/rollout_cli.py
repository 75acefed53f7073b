"""`kdcanary rollout ...`: the admin API over HTTP, for operators.

    kdcanary rollout status                      a table: phase, stage, weight, gates, ETA
    kdcanary rollout start|pause|resume [--reason TEXT]
    kdcanary rollout promote [--to-full] [--reason TEXT]
    kdcanary rollout rollback --reason TEXT
    kdcanary rollout set-weight 0.25 --reason TEXT
    kdcanary rollout events [--after ID] [--limit N]

URL and token come from `--url` / `--token` or $KDCANARY_URL / $KDCANARY_ADMIN_TOKEN (or the
file named by $KDCANARY_ADMIN_TOKEN_FILE); the actor recorded in the event log is `--actor`,
else $USER.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

import httpx

from serving.admin import configured_token

URL_ENV = "KDCANARY_URL"
DEFAULT_URL = "http://127.0.0.1:8000"
PREFIX = "/admin/rollout"


class AdminCallError(Exception):
    """The admin API answered with an error, or could not be reached."""


def add_rollout_commands(sub: Any) -> None:
    """Register `rollout ACTION` on the `kdcanary` sub-parsers."""
    rollout = sub.add_parser("rollout", help="drive the live rollout through the admin API")
    actions = rollout.add_subparsers(required=True, metavar="ACTION")
    status = _action(actions, "status", "phase, stage, weight, each gate's numbers, ETA", _status)
    status.add_argument("--json", action="store_true", help="the raw status document")
    for name, text in (("start", "begin at stage 0 (shadow)"), ("pause", "hold the weight"), ("resume", "go on")):
        _action(actions, name, text, _intent).add_argument("--reason", default="")
    promote = _action(actions, "promote", "skip to the next stage (or --to-full)", _intent)
    promote.add_argument("--to-full", action="store_true", help="straight to 100 %% and complete")
    promote.add_argument("--reason", default="")
    _action(actions, "rollback", "send the student back to 0 %% now", _intent).add_argument("--reason", required=True)
    weight = _action(actions, "set-weight", "pin the student's share (pauses progression)", _intent)
    weight.add_argument("weight", type=float, help="0..1")
    weight.add_argument("--reason", required=True)
    events = _action(actions, "events", "the event log, oldest first", _events)
    events.add_argument("--after", type=int, default=0)
    events.add_argument("--limit", type=int, default=50)


def _action(actions: Any, name: str, text: str, run: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(name, help=text)
    parser.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL), help=f"default ${URL_ENV}")
    parser.add_argument("--token", default=None, help="default $KDCANARY_ADMIN_TOKEN(_FILE)")
    parser.add_argument("--actor", default=None, help="who asks (default $USER)")
    parser.set_defaults(run=lambda args: _guarded(run, args), action=name)
    return parser


def _guarded(run: Any, args: argparse.Namespace) -> int:
    try:
        code: int = run(args)
        return code
    except AdminCallError as exc:
        print(f"kdcanary: error: {exc}", file=sys.stderr)
        return 2


def call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    """One admin call; AdminCallError with the API's own message on any failure."""
    token = args.token or configured_token()
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, headers=headers, timeout=10.0, **kwargs)
    except httpx.HTTPError as exc:
        raise AdminCallError(f"cannot reach {args.url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:200]
        raise AdminCallError(f"{method} {path} answered {response.status_code}: {detail}")
    return response.json()


def _intent(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"reason": args.reason, "actor": args.actor or _user()}
    if args.action == "set-weight":
        view = call(args, "PUT", f"{PREFIX}/weight", json={**body, "weight": args.weight})
    else:
        if args.action == "promote" and args.to_full:
            body["to"] = 100
        view = call(args, "POST", f"{PREFIX}/{args.action}", json=body)
    print(render_status(view))
    return 0


def _status(args: argparse.Namespace) -> int:
    view = call(args, "GET", PREFIX)
    print(json.dumps(view, indent=2) if args.json else render_status(view))
    return 0


def _events(args: argparse.Namespace) -> int:
    for event in call(args, "GET", f"{PREFIX}/events", params={"after": args.after, "limit": args.limit}):
        actor = f" by {event['actor']}" if event.get("actor") else ""
        print(f"#{event['id']:<5} {event['kind']:<10} {event['action']:<10}{actor}: {event['reason']}")
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def render_status(view: dict[str, Any]) -> str:
    """A readable table of GET status (the rollout controller's; the manual one's is short)."""
    if "stage_count" not in view:  # the manual weight controller
        return f"manual controller: student weight {view['weight']:.3f} (set by {view['actor']}: {view['reason']})"
    lines = [
        f"phase {view['phase']}   stage {view['stage_index']}/{view['stage_count'] - 1}   "
        f"weight {view['routing']['weight_percent']:g} %   shadow {view['routing']['shadow_fraction']:g}   "
        f"epoch {view['epoch']}",
        f"student requests {view['evidence']['student_requests']}   at {view['student_rate_per_s']:.1f}/s",
    ]
    if view["gates"]:
        lines.append(f"{'gate':<14}{'verdict':<14}{'n':>8}{'estimate':>10}{'lower':>10}{'upper':>10}{'threshold':>11}")
        lines += [
            f"{g['name']:<14}{g['verdict']:<14}{g['n']:>8}{_num(g['estimate'])}{_num(g['lower'])}"
            f"{_num(g['upper'])}{_num(g['threshold'], 11)}"
            for g in view["gates"]
        ]
    eta = view["eta"]
    when = "unknown" if eta["seconds"] is None else f"in {eta['seconds']:.0f} s"
    lines.append(f"next: {when} ({eta['basis']})")
    if view["last_reasons"]:
        lines.append(f"last decision: {view['last_action']}: {'; '.join(view['last_reasons'])}")
    if view["rollback_reason"]:
        lines.append(f"rolled back: {view['rollback_reason']}")
    return "\n".join(lines)


def _num(value: float | None, width: int = 10) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4g}"
