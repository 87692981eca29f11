"""`medlora` command line: `serve` runs the gateway; the rest annotate, train, evaluate and build."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from app.settings import ConfigurationError, Settings


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    for key in ("host", "port", "model", "max_model_len"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.adapters is not None:
        overrides["adapters_dir"] = Path(args.adapters)
        # A folder of adapters usually carries its own task manifests.
        if args.tasks is None and any(Path(args.adapters).glob("*.yaml")):
            overrides["tasks_dir"] = Path(args.adapters)
    if args.tasks is not None:
        overrides["tasks_dir"] = Path(args.tasks)
    settings = Settings(**overrides)  # type: ignore[arg-type]

    from app.api.auth import KeyFileError
    from app.api.server import check_exposure, serve
    from app.engine.models import missing_model_folder, resolve_model
    from app.logs import configure_logging
    from app.main import build_app
    from app.tasks.manifests import ManifestError

    configure_logging(settings.log_level)
    # What can be checked in milliseconds is checked before the port opens, with a clear
    # message and exit code 2; loading the model and starting the engine come after.
    try:
        app = build_app(settings)  # checks the manifests and key files
        check_exposure(settings, app.state.auth.enabled)
        # Either engine loads the tokenizer from the model folder (the embedded demo's included).
        if reason := missing_model_folder(resolve_model(settings).path):
            raise ConfigurationError(reason)
    except ManifestError as exc:
        print(f"medlora: invalid task configuration: {exc}", file=sys.stderr)
        return 2
    except KeyFileError as exc:
        print(f"medlora: invalid API key configuration: {exc}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"medlora: invalid configuration: {exc}", file=sys.stderr)
        return 2
    return serve(app, app.state.service, settings)


def _hash_key(args: argparse.Namespace) -> int:
    import secrets

    from app.api.auth import hash_key

    if any(c.isspace() for c in args.name) or not args.name:
        print("medlora: --name must be one word", file=sys.stderr)
        return 2
    if args.generate:
        key = secrets.token_urlsafe(32)
        print(key, file=sys.stderr)
    else:
        key = sys.stdin.readline().rstrip("\r\n")
        if len(key) < 16:
            print("medlora: the key on stdin must have at least 16 characters", file=sys.stderr)
            return 2
    print(f"{args.name} {hash_key(key)}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from app.tasks.manifests import ManifestError, load_tasks
    from app.training.synthetic import examples_for_task, write_jsonl

    settings = Settings(**({"tasks_dir": args.tasks} if args.tasks else {}))
    try:
        tasks = load_tasks(settings.tasks_dir, settings.schemas_dir)
    except ManifestError as exc:
        print(f"medlora synth: {exc}", file=sys.stderr)
        return 2
    if args.task not in tasks:
        print(f"medlora synth: unknown task {args.task!r} (known: {', '.join(sorted(tasks))})", file=sys.stderr)
        return 2
    try:
        rows = examples_for_task(tasks[args.task], args.n, args.seed)
    except ValueError as exc:
        print(f"medlora synth: {exc}", file=sys.stderr)
        return 2
    count = write_jsonl(args.out, rows)
    print(json.dumps({"task": args.task, "records": count, "path": str(args.out)}))
    return 0


def _demo_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from app.logs import configure_logging
    from app.settings import DEMO_DIR
    from app.tasks.manifests import load_tasks
    from app.training.demo import DemoRecipe, add_demo_adapter, build_demo

    settings = Settings()
    configure_logging(settings.log_level)
    recipe = DemoRecipe()
    if args.quick:
        # A few steps on a few notes: proves the pipeline builds a serveable demo, not quality.
        recipe = replace(
            recipe,
            pretrain_notes_per_task=4,
            pretrain_epochs=1,
            prompt_copies=2,
            train_records=dict.fromkeys(recipe.train_records, 4),
            test_records=3,
            max_steps=2,
        )
    tasks = load_tasks(settings.tasks_dir, settings.schemas_dir)
    out = args.out or DEMO_DIR
    if args.only:
        if args.only not in tasks:
            print(f"medlora demo build: no task {args.only!r} (tasks: {sorted(tasks)})", file=sys.stderr)
            return 2
        record = add_demo_adapter(out, tasks[args.only], recipe, measure_records=0 if args.no_measure else None)
        print(json.dumps({"out": str(out), "task": args.only, "seconds": record["timings"][f"{args.only}_s"]}))
        return 0
    record = build_demo(out, tasks, recipe, measure_records=0 if args.no_measure else None)
    print(json.dumps({"out": str(out), **{k: record[k] for k in ("recipe_version", "build_seconds")}}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medlora", description="Clinical NLP serving on vLLM with per-task LoRA adapters."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Run the REST service (settings also read from MEDLORA_* env vars).")
    serve.add_argument("--host", help="Bind address (default 127.0.0.1).")
    serve.add_argument("--port", type=int, help="Port (default 8000).")
    serve.add_argument("--model", help="Base model id or path (default: the shipped embedded demo).")
    serve.add_argument("--adapters", help="Adapters folder: adapter weights (and task manifests if present).")
    serve.add_argument("--tasks", help="Task manifests folder (default: the shipped adapters/).")
    serve.add_argument("--max-model-len", dest="max_model_len", type=int, help="Engine context length.")
    synth = sub.add_parser("synth", help="Write synthetic annotated notes (no real patient data) as JSONL.")
    synth.add_argument("--task", required=True, help="A task name from the task manifests.")
    synth.add_argument("--n", type=int, default=200, help="Number of records.")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--tasks", type=Path, help="Task manifests folder.")
    demo = sub.add_parser("demo", help="The embedded demo (a tiny Qwen3 and one adapter per shipped task).")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True)
    demo_build = demo_sub.add_parser(
        "build", help="Build the demo from scratch with `medlora train`'s code (about an hour on 2 cores)."
    )
    demo_build.add_argument("--out", type=Path, help="Output folder (default: the package's shipped demo).")
    demo_build.add_argument("--quick", action="store_true", help="A few steps on a few notes (pipeline check).")
    demo_build.add_argument("--no-measure", action="store_true", help="Skip the held-out evaluation.")
    demo_build.add_argument(
        "--only", metavar="TASK", help="Train just this task's adapter on the demo's existing base and add it."
    )

    from app.training.train import add_train_arguments, train_main

    train = sub.add_parser("train", help="Fine-tune a LoRA adapter for a task from annotated JSONL.")
    add_train_arguments(train)
    from app.training.evaluate import add_compare_arguments, add_eval_arguments, compare_main, eval_main

    evaluate = sub.add_parser("eval", help="Measure a task on annotated JSONL through the serving path.")
    add_eval_arguments(evaluate)
    compare = sub.add_parser("compare", help="Side-by-side table of eval reports.")
    add_compare_arguments(compare)
    from app.batch.annotate import add_annotate_arguments, add_merge_arguments, annotate_main, merge_main

    annotate = sub.add_parser("annotate", help="Annotate a JSONL/CSV/folder archive of notes, resumably.")
    add_annotate_arguments(annotate)
    merge = sub.add_parser("merge", help="Merge `annotate --shard` outputs and check every note is there once.")
    add_merge_arguments(merge)
    from app.review.cli import add_review_arguments, review_main

    review = sub.add_parser("review", help="Reviewed notes: `review export` writes a queue as train/eval JSONL.")
    add_review_arguments(review)
    hash_key = sub.add_parser(
        "hash-key", help="Print a key-file line ('<name> <sha256>') for an API key read from stdin, or a new key."
    )
    hash_key.add_argument("--name", required=True, help="Who the key is for (shown in logs, never the key).")
    hash_key.add_argument(
        "--generate", action="store_true", help="Make a new random key: printed on stderr, its line on stdout."
    )
    args = parser.parse_args(argv)
    if args.command in ("eval", "annotate"):
        from app.logs import configure_logging

        # They may run the service in process: its (and vLLM's) logs go out as the server's do.
        configure_logging(Settings().log_level)
    commands = {
        "hash-key": _hash_key,
        "serve": _serve,
        "synth": _synth,
        "demo": _demo_build,
        "train": train_main,
        "eval": eval_main,
        "compare": compare_main,
        "annotate": annotate_main,
        "merge": merge_main,
        "review": review_main,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
