"""`medlora` command line: `medlora serve` runs the gateway with its in-process engine."""

from __future__ import annotations

import argparse
import json
import os
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
    from app.logs import configure_logging
    from app.tasks.manifests import ManifestError

    configure_logging(settings.log_level)
    # vLLM's engine core runs in a spawned process; it must not re-import this CLI's state.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    try:
        from app.api.app import create_app
        from app.api.auth import Authenticator
        from app.tasks.service import build_service

        Authenticator(settings.api_keys_file, settings.admin_keys_file)  # fail before the model loads
        app = create_app(build_service(settings))
    except ManifestError as exc:
        print(f"medlora: invalid task configuration: {exc}", file=sys.stderr)
        return 2
    except KeyFileError as exc:
        print(f"medlora: invalid API key configuration: {exc}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"medlora: invalid configuration: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the gateway logs every request itself, without bodies
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medlora", description="Clinical NLP serving on vLLM with per-task LoRA adapters."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Run the REST service (settings also read from MEDLORA_* env vars).")
    serve.add_argument("--host", help="Bind address (default 127.0.0.1).")
    serve.add_argument("--port", type=int, help="Port (default 8000).")
    serve.add_argument("--model", help="Base model id or path (default: embedded tiny model).")
    serve.add_argument("--adapters", help="Adapters folder: adapter weights (and task manifests if present).")
    serve.add_argument("--tasks", help="Task manifests folder (default: the repository's adapters/).")
    serve.add_argument("--max-model-len", dest="max_model_len", type=int, help="Engine context length.")
    synth = sub.add_parser("synth", help="Write synthetic annotated notes (no real patient data) as JSONL.")
    synth.add_argument("--task", required=True, help="One of the shipped task names.")
    synth.add_argument("--n", type=int, default=200, help="Number of records.")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True, type=Path)

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
    hash_key = sub.add_parser(
        "hash-key", help="Print a key-file line ('<name> <sha256>') for an API key read from stdin, or a new key."
    )
    hash_key.add_argument("--name", required=True, help="Who the key is for (shown in logs, never the key).")
    hash_key.add_argument(
        "--generate", action="store_true", help="Make a new random key: printed on stderr, its line on stdout."
    )
    args = parser.parse_args(argv)
    if args.command == "hash-key":
        return _hash_key(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "synth":
        from app.synthetic import examples_for_task, write_jsonl

        count = write_jsonl(args.out, examples_for_task(args.task, args.n, args.seed))
        print(json.dumps({"task": args.task, "records": count, "path": str(args.out)}))
        return 0
    if args.command == "train":
        return train_main(args)
    if args.command == "eval":
        return eval_main(args)
    if args.command == "compare":
        return compare_main(args)
    if args.command == "annotate":
        return annotate_main(args)
    if args.command == "merge":
        return merge_main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
