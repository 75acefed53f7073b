"""The `kdcanary` command. Sub-commands import their packages lazily, so `kdcanary models list`
does not pay for torch or Ray."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from serving.rollout_cli import add_rollout_commands

if TYPE_CHECKING:
    from serving.app import AppArgs


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a deliberate error is one line on stderr and the exit code of
    `serving.error_table` (2 bad input, 3 refused, 4 unavailable), never a traceback."""
    args = _parser().parse_args(argv)
    from pydantic import ValidationError

    from compression.errors import CompressionError
    from rollout.errors import RolloutError
    from serving.admin_client import AdminCallError
    from serving.error_table import exit_code_for_status, lookup, one_line
    from serving.errors import ServingError

    try:
        code: int = args.run(args)
        return code
    except AdminCallError as exc:
        print(f"kdcanary: error: {one_line(exc)}", file=sys.stderr)
        return exit_code_for_status(exc.status)
    except (CompressionError, RolloutError, ServingError, ValidationError) as exc:
        print(f"kdcanary: error: {one_line(exc)}", file=sys.stderr)
        return lookup(exc).exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcanary", description="Distil, compress and canary-release models.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    compress = sub.add_parser("compress", help="run a recipe: teacher -> students -> registry")
    compress.add_argument("recipe", type=Path)
    compress.add_argument(
        "--student", action="append", default=[], metavar="NAME", help="build only this student (repeatable)"
    )
    where = compress.add_mutually_exclusive_group()
    where.add_argument("--address", help="run the students' chains on this Ray cluster (default: a local Ray)")
    where.add_argument("--in-process", action="store_true", help="no Ray: one student after another in this process")
    _registry_flag(compress)
    compress.set_defaults(run=_compress)

    models = sub.add_parser("models", help="inspect the registry").add_subparsers(required=True, metavar="ACTION")
    listing = models.add_parser("list", help="every registered model")
    _registry_flag(listing)
    listing.set_defaults(run=_models_list)
    show = models.add_parser("show", help="one model's manifest and its lineage back to the teacher")
    show.add_argument("model", help="id, unique id prefix, or name")
    _registry_flag(show)
    show.set_defaults(run=_models_show)
    _import_parser(models)

    report = sub.add_parser("report", help="Pareto table (markdown) and plot (PNG) of the registry")
    report.add_argument("--out", type=Path, default=Path("out/report"))
    _registry_flag(report)
    report.set_defaults(run=_report)

    demo = sub.add_parser("demo", help="the whole product: models, a live canary rollout of two students, a report")
    demo.add_argument("--recipe", type=Path, default=Path("recipes/tiny.yaml"))
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--rate", type=float, default=20.0, help="requests per second of live traffic")
    demo.add_argument("--port", type=int, default=8000, help="Serve's HTTP port on 127.0.0.1")
    demo.add_argument("--realistic", action="store_true", help="production-like stages and gates (much longer)")
    demo.add_argument("--good", default=None, help="student of scenario 1 (default: the tiny recipe's pruned INT8)")
    demo.add_argument("--bad", default=None, help="student of scenario 2 (default: the short-max_length one)")
    demo.add_argument("--one-class", default=None, help="student of scenario 3 (default: bag, fails one class)")
    _registry_flag(demo)
    demo.set_defaults(run=_demo)

    serve_cmd = sub.add_parser("serve", help="serve teacher + student behind the canary router (local Ray)")
    serve_cmd.add_argument("--teacher", required=True, help="teacher bundle: id, id prefix or name")
    serve_cmd.add_argument("--student", required=True, help="student bundle: id, id prefix or name")
    for variant in ("teacher", "student"):
        serve_cmd.add_argument(
            f"--{variant}-runtime", choices=("onnx", "torch"), default="onnx", help="torch: FP32 bundles' torch weights"
        )
        serve_cmd.add_argument(
            f"--{variant}-max-length", type=int, default=None, metavar="TOKENS",
            help="truncate inputs shorter than the bundle's own max_length (the smoke test checks the answers)",
        )  # fmt: skip
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument("--spec", type=Path, default=None, help="rollout spec YAML (default: the built-in stages)")
    serve_cmd.add_argument("--state-dir", type=Path, default=None, help="rollout state (default: ./rollout-state)")
    serve_cmd.add_argument("--model-cpus", type=float, default=0.5, help="CPUs per model replica (may be fractional)")
    _registry_flag(serve_cmd)
    serve_cmd.set_defaults(run=_serve)

    add_rollout_commands(sub)
    return parser


def _import_parser(models: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    imports = models.add_parser(
        "import", help="register a model trained elsewhere (ONNX or Hugging Face) as a teacher or a student"
    )
    imports.add_argument("source", type=Path, metavar="PATH", help="an .onnx file, or a Hugging Face model folder")
    imports.add_argument(
        "--as", dest="role", choices=("teacher", "student"), required=True,
        help="a teacher measured on the recipe's data, or a student first checked against --teacher",
    )  # fmt: skip
    imports.add_argument("--teacher", metavar="REF", help="students: the registered teacher (id, id prefix or name)")
    imports.add_argument(
        "--recipe", type=Path, help="whose data measures it (students: default their teacher's recipe); "
        "its student of the same name, if any, gives the tolerances and max length",
    )  # fmt: skip
    imports.add_argument(
        "--tokenizer", type=Path, metavar="DIR", help="tokenizer folder (default: the HF folder; for ONNX, "
        "tokenizer/ beside the file, else its folder)",
    )  # fmt: skip
    imports.add_argument("--labels", help="ONNX: label names in output order, comma-separated or a file, one a line")
    imports.add_argument("--name", help="the registered name (default: the file's or folder's name)")
    imports.add_argument("--max-length", type=int, metavar="TOKENS", help="served max length (default: the recipe's)")
    _registry_flag(imports)
    imports.set_defaults(run=_models_import)


def _registry_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", type=Path, default=None, help="registry folder (default: $KDCANARY_REGISTRY or ./registry)"
    )


def _registry(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from compression.registry import Registry, default_root

    return Registry(args.registry or default_root())


def _compress(args: argparse.Namespace) -> int:
    from compression import progress
    from compression.pipeline import compress
    from compression.recipe import load_recipe

    registry = _registry(args)
    recipe = load_recipe(args.recipe)
    if args.in_process:
        if not sys.stdout.isatty():  # tqdm draws on terminals only
            progress.listen(progress.lines(lambda line: print(line, flush=True)))
        summary = compress(recipe, registry, args.student)
    else:
        from compression.fanout import compress_on_ray

        summary = compress_on_ray(recipe, registry, args.student, args.address)
    _print_bundles(summary.bundles)
    for name, message in summary.breaches.items():
        print(f"student {name} stopped: {message}", file=sys.stderr)
    print(f"registry: {registry.root}  (teacher forward batches this run: {summary.teacher_forward_batches})")
    return 1 if summary.breaches else 0


def _models_list(args: argparse.Namespace) -> int:
    _print_bundles(_registry(args).bundles())
    return 0


def _models_show(args: argparse.Namespace) -> int:
    chain = _registry(args).lineage(args.model)
    print(chain[0].manifest.model_dump_json(indent=2, exclude={"recipe"}))
    print("lineage: " + "  <-  ".join(f"{b.manifest.name} ({b.id}, {b.manifest.stage})" for b in chain))
    transfer = chain[0].manifest.recipe.get("data", {}).get("transfer", {})
    sources = [*(["the corpus's plot sentences"] if transfer.get("plot_sentences") else []), *transfer.get("paths", [])]
    print(f"data: {chain[0].manifest.recipe_name} recipe, hash {chain[0].manifest.data_hash[:12]}; transfer text: "
          f"{', '.join(map(str, sources)) or 'none'}")  # fmt: skip
    return 0


def _models_import(args: argparse.Namespace) -> int:
    from compression.importing import ImportRequest, import_model, parse_labels

    request = ImportRequest(
        source=args.source, role=args.role, teacher=args.teacher, recipe=args.recipe, tokenizer=args.tokenizer,
        labels=parse_labels(args.labels) if args.labels is not None else None, name=args.name,
        max_length=args.max_length,
    )  # fmt: skip
    registry = _registry(args)
    bundle = import_model(request, registry)
    _print_bundles([bundle])
    check = bundle.manifest.parent_check
    if check is not None:
        print(f"validated against {check.parent_id}: agreement {check.agreement:.3f} (min {check.min_agreement:.3f}), "
              f"accuracy {check.accuracy:.3f} vs {check.parent_accuracy:.3f} on n={check.n}")  # fmt: skip
    print(f"registry: {registry.root}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from compression.report import write_report

    table, image = write_report(_registry(args).bundles(), args.out)
    print(f"wrote {table} and {image}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from compression.registry import default_root
    from serving.demo.run import DemoOptions, run_demo

    students = {k: v for k, v in (("good", args.good), ("bad", args.bad), ("one_class", args.one_class)) if v}
    options = DemoOptions(
        recipe=args.recipe,
        registry=args.registry or default_root(),
        out=args.out,
        **students,  # unnamed: DemoOptions' own defaults
        rate=args.rate,
        realistic=args.realistic,
        port=args.port,
        live=sys.stdout.isatty(),
    )
    return run_demo(options)


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from serving.app import app_builder
    from serving.classifier import load_bundle

    registry = _registry(args)
    # Fail fast, before Ray: a missing or tampered bundle, no model for the runtime asked, a bad spec.
    teacher = load_bundle(registry.root, args.teacher, args.teacher_runtime)
    student = load_bundle(registry.root, args.student, args.student_runtime)
    app_args = serve_app_args(args, teacher.id, student.id, registry.root)
    app_args.rollout_spec()
    import ray
    from ray import serve

    for signum in (signal.SIGINT, signal.SIGTERM):  # either stops it cleanly, like Ctrl-C
        signal.signal(signum, signal.default_int_handler)
    ray.init(address="local", include_dashboard=False)  # its own cluster: Ctrl-C must not stop anyone else's Serve
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app_builder(app_args), name="kdcanary", route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        print(f"kdcanary serving {teacher.manifest.name} ({teacher.id}) and {student.manifest.name} ({student.id})")
        print(f"  predict: POST {url}/v1/predict   admin: {url}/admin/rollout   docs: {url}/docs", flush=True)
        print(f"  start the rollout: KDCANARY_URL={url} kdcanary rollout start   (Ctrl-C stops)", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        print("kdcanary: stopping")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def serve_app_args(args: argparse.Namespace, teacher_id: str, student_id: str, registry: Path) -> AppArgs:
    """The application `kdcanary serve` deploys, from its parsed flags (ValidationError if bad)."""
    from serving.app import AppArgs
    from serving.config import Resources

    return AppArgs(
        teacher_id=teacher_id,
        student_id=student_id,
        registry=registry,
        teacher_runtime=args.teacher_runtime,
        student_runtime=args.student_runtime,
        teacher_max_length=args.teacher_max_length,
        student_max_length=args.student_max_length,
        **({"rollout": args.spec} if args.spec else {}),
        **({"state_dir": args.state_dir} if args.state_dir else {}),
        teacher=Resources(num_cpus=args.model_cpus),
        student=Resources(num_cpus=args.model_cpus),
        router=Resources(num_cpus=0.1, max_ongoing_requests=256),
    )


def _print_bundles(bundles: list) -> None:  # type: ignore[type-arg]
    header = f"{'id':<13} {'name':<24} {'stage':<9} {'prec':<5} {'test acc':>8} {'agree':>6} {'b1 p50 ms':>9} {'MB':>6}"
    print(header)
    for b in bundles:
        m = b.manifest.metrics
        print(
            f"{b.id:<13} {b.manifest.name:<24} {b.manifest.stage:<9} {b.manifest.precision:<5} "
            f"{m.test_accuracy:>8.3f} {m.agreement_with_teacher:>6.3f} {m.latency_ms.b1_p50:>9.2f} "
            f"{m.size_bytes / 1e6:>6.1f}"
        )


if __name__ == "__main__":
    sys.exit(main())
