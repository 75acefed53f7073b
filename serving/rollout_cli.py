"""`kdcanary rollout ...`: the admin API over HTTP, for operators.

    kdcanary rollout status                      a table: phase, stage, weight, gates, ETA
    kdcanary rollout start|pause|resume [--reason TEXT]
    kdcanary rollout promote [--to-full] [--reason TEXT]
    kdcanary rollout confirm --reason TEXT        let it enter the next stage (one with `confirm`)
    kdcanary rollout rollback --reason TEXT
    kdcanary rollout set-weight 0.25 --reason TEXT
    kdcanary rollout events [--after ID] [--limit N]
    kdcanary rollout disagreements --out FILE.jsonl [--after SEQ]   the disagreement log, for a recipe

URL and token come from `--url` / `--token` or $KDCANARY_URL / $KDCANARY_ADMIN_TOKEN (or the
file named by $KDCANARY_ADMIN_TOKEN_FILE); the actor recorded in the event log is `--actor`,
else $USER.
"""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path
from typing import Any

from rollout.spec import percent
from rollout.views import StatusView
from serving.admin import configured_token
from serving.admin_client import AdminClient
from serving.errors import ServingError

URL_ENV = "KDCANARY_URL"
EXPORT_PAGE = 1000
DEFAULT_URL = "http://127.0.0.1:8000"


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
    confirm = _action(actions, "confirm", "let the rollout enter the next stage (one with confirm)", _intent)
    confirm.add_argument("--reason", required=True)
    _action(actions, "rollback", "send the student back to 0 %% now", _intent).add_argument("--reason", required=True)
    weight = _action(actions, "set-weight", "pin the student's share (pauses progression)", _intent)
    weight.add_argument("weight", type=float, help="0..1")
    weight.add_argument("--reason", required=True)
    log = _action(
        actions, "disagreements", "export the disagreement log as JSON lines (a recipe's transfer text)", _export
    )
    log.add_argument("--out", type=Path, required=True, help="a .jsonl file, written whole or not at all")
    log.add_argument("--after", type=int, default=0, help="only entries after this sequence number")
    events = _action(actions, "events", "the event log, oldest first", _events)
    events.add_argument("--after", type=int, default=0)
    events.add_argument("--limit", type=int, default=50)


def _action(actions: Any, name: str, text: str, run: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(name, help=text)
    parser.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL), help=f"default ${URL_ENV}")
    parser.add_argument("--token", default=None, help="default $KDCANARY_ADMIN_TOKEN(_FILE)")
    parser.add_argument("--actor", default=None, help="who asks (default $USER)")
    parser.set_defaults(run=run, action=name)  # serving.cli.main answers errors
    return parser


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(args.url, args.token or configured_token(), actor=args.actor or _user())


def _intent(args: argparse.Namespace) -> int:
    with _client(args) as admin:
        if args.action == "set-weight":
            view = admin.set_weight(args.weight, args.reason)
        elif args.action == "promote":
            view = admin.promote(args.to_full, args.reason)
        elif args.action == "rollback":
            view = admin.rollback(args.reason)
        else:
            view = getattr(admin, args.action)(args.reason)
    print(render_status(view))
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as admin:
        view = admin.status()
    print(view.model_dump_json(indent=2) if args.json else render_status(view))
    return 0


def _events(args: argparse.Namespace) -> int:
    with _client(args) as admin:
        for event in admin.events(args.after, args.limit):
            actor = f" by {event.actor}" if event.actor else ""
            print(f"#{event.id:<5} {event.kind.value:<10} {event.action:<10}{actor}: {event.reason}")
    return 0


def _export(args: argparse.Namespace) -> int:
    """Page through the log and write it beside `--out`, then rename it into place."""
    out: Path = args.out
    if not out.parent.is_dir():
        raise ServingError(f"--out {out}: directory {out.parent} does not exist")
    partial = out.with_name(f".{out.name}.partial")
    count, after = 0, args.after
    try:
        with _client(args) as admin, partial.open("w", encoding="utf-8") as file:
            while page := admin.disagreements(after, EXPORT_PAGE):
                file.writelines(entry.model_dump_json() + "\n" for entry in page)
                count, after = count + len(page), page[-1].seq
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {count} disagreements to {out} (through seq {after}); use it as data.transfer.paths in a recipe")
    return 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def render_status(view: StatusView) -> str:
    """A readable table of GET status."""
    routing, eta = view.routing, view.eta
    lines = [
        f"phase {view.phase.value}   stage {view.stage_index}/{view.stage_count - 1}   "
        f"weight {percent(routing.weight)}   shadow {routing.shadow_fraction:g}   epoch {view.epoch}",
        f"student requests {view.evidence.student_requests}   at {view.student_rate_per_s:.1f}/s",
    ]
    if view.evidence.labelled:
        lines.append(_labels(view))
    if view.gates:
        lines.append(f"{'gate':<20}{'verdict':<14}{'n':>8}{'estimate':>10}{'lower':>10}{'upper':>10}{'threshold':>11}")
        lines += [
            f"{g.name:<20}{g.verdict.value + ('' if g.binding else ' (aside)'):<14}{g.n:>8}{_num(g.estimate)}"
            f"{_num(g.lower)}{_num(g.upper)}{_num(g.threshold, 11)}"
            for g in view.gates
        ]
    when = "unknown" if eta.seconds is None else f"in {eta.seconds:.0f} s"
    lines.append(f"next: {when} ({eta.basis})")
    if view.awaiting_confirmation is not None:
        lines.append(f"waiting for confirmation to enter stage {view.awaiting_confirmation}: kdcanary rollout confirm")
    if view.deadline_at is not None:
        lines.append(f"deadline: in {view.deadline_at - view.now:.0f} s the stage, if still holding, takes its action")
    if view.deadline_passed_at is not None:
        lines.append(f"deadline passed {view.now - view.deadline_passed_at:.0f} s ago: resume, promote or roll back")
    if view.last_reasons:
        action = view.last_action.value if view.last_action else None
        lines.append(f"last decision: {action}: {'; '.join(view.last_reasons)}")
    if view.rollback_reason:
        lines.append(f"rolled back: {view.rollback_reason}")
    return "\n".join(lines)


def _labels(view: StatusView) -> str:
    """Online accuracy per variant and the paired counts, from the labels fed back."""
    e = view.evidence
    accuracy = "   ".join(
        f"{variant} {right / labelled:.3f} of {labelled}" if labelled else f"{variant} -"
        for variant, right, labelled in (
            ("teacher", e.teacher_correct, e.teacher_labelled),
            ("student", e.student_correct, e.student_labelled),
        )
    )
    return f"labels: accuracy {accuracy}   paired: only student right {e.only_student}, only teacher {e.only_teacher}"


def _num(value: float | None, width: int = 10) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4g}"
