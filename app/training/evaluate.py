"""`medlora eval` and `medlora compare`: score a task's adapter (or the base model) on JSONL data.

Predictions go through the real serving path, never a shortcut: over HTTP against a running
service (`--url`), or in process through the same `TaskRunner` and adapter leases the API
uses. A request that fails (a problem response) is not dropped: its items count as empty
predictions, and the report says how many failed and why. A failed batch is retried item by
item first, so that one bad document does not sink its 15 neighbours.

Reports: `report.json` (metrics and run facts), `predictions.jsonl` (one line per record,
in data order: id and prediction, with `error` where the request failed), `report.md` and
`report.html` (charts, viewable offline: app/training/html_report.py).
`medlora compare` puts several reports side by side in one markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.api.client import HTTP_TIMEOUT, ServiceError, auth_headers, fetch_tasks, wait_ready
from app.problems import Problem
from app.settings import PACKAGE_DIR
from app.tasks.adapters import EVAL_REPORT, AdapterChoice
from app.tasks.calls import INTERACTIVE_PRIORITY, call_json
from app.tasks.manifests import ManifestError, load_tasks
from app.tasks.runner import gather_first_error
from app.tasks.scoring import markdown_table
from app.tasks.service import Service, build_service, settings_for
from app.tasks.spec import AdapterRef, Example, LabelSpec, TaskManifest
from app.tasks.types import task_type
from app.tasks.types.base import Task
from app.training.datasets import DataError, Record, load_records, model_outputs
from app.training.html_report import render_html

# Problems that no retry or smaller batch can fix: the run is misconfigured, so it stops.
_FATAL_STATUS = {400, 401, 403, 404, 409}


class EvalError(Exception):
    """The evaluation cannot run (bad arguments, unreachable server, unknown adapter)."""


class _BatchFailed(Exception):
    """One request failed with a problem: its items get empty predictions (after a split retry)."""


def request_body(task: Task, batch: list[Record], adapter: AdapterChoice) -> dict[str, Any]:
    """The API request for a batch of records (the same body in process and over HTTP)."""
    items = [{"id": r.id, **r.payload} for r in batch]
    body: dict[str, Any] = {"task": task.name, task.kind.items_field: items}
    if adapter is not None:
        body["adapter"] = _adapter_field(adapter)
    return body


# --------------------------------------------------------------------------- predicting


async def _predict(
    task: Task,
    records: list[Record],
    call: Callable[[list[Record]], Awaitable[list[dict[str, Any]]]],
    *,
    batch_size: int,
    concurrency: int,
) -> list[dict[str, Any]]:
    """Run `call` over batches, at most `concurrency` at once; one prediction per record, in order."""
    if batch_size < 1 or concurrency < 1:
        raise EvalError("batch size and concurrency must be at least 1")
    gate = asyncio.Semaphore(concurrency)
    results: dict[str, dict[str, Any]] = {}

    async def run(batch: list[Record]) -> None:
        async with gate:
            try:
                predictions = await call(batch)
            except _BatchFailed as exc:
                failure = str(exc)
            else:
                results.update((r.id, p) for r, p in zip(batch, predictions, strict=True))
                return
        if len(batch) == 1:
            results[batch[0].id] = {**task.kind.empty_prediction(), "error": failure}
        else:
            # Find which items fail: a problem fails the whole request, not just its culprit.
            await gather_first_error([run([record]) for record in batch])

    await gather_first_error([run(records[i : i + batch_size]) for i in range(0, len(records), batch_size)])
    return [results[r.id] for r in records]


def _problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        slug = str(body.get("type", "")).rsplit(":", 1)[-1]
        return f"{response.status_code} {slug}: {body.get('detail', '')}"
    except (ValueError, AttributeError):
        # Not a problem body (a proxy's page?): its text could be anything, the note included.
        return f"{response.status_code}: a {response.headers.get('content-type', 'body')} answer, not a problem"


def _adapter_field(adapter: AdapterChoice) -> Any:
    if adapter is None or adapter == "none":
        return adapter
    return {"name": adapter[0], "version": adapter[1]}


def _from_response(task: Task, batch: list[Record], body: dict[str, Any]) -> list[dict[str, Any]]:
    items = body.get(task.kind.items_field) or []
    by_id = {item["id"]: item for item in items}
    if sorted(by_id) != sorted(r.id for r in batch):
        raise EvalError(f"the server answered for other ids than were sent ({len(by_id)} of {len(batch)})")
    return [task.kind.prediction(by_id[record.id]) for record in batch]


async def predict_via_url(
    url: str,
    task: Task,
    records: list[Record],
    *,
    adapter: AdapterChoice = None,
    batch_size: int = 16,
    concurrency: int = 4,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[dict[str, Any]]:
    """Predictions from a running service: POST batches to the task's endpoint.

    `transport` is for tests (an in-memory ASGI app); by default this is plain HTTP.
    """
    endpoint = f"/v1/{task.kind.endpoint}"
    async with httpx.AsyncClient(
        base_url=url, timeout=HTTP_TIMEOUT, transport=transport, headers=auth_headers()
    ) as client:
        await wait_ready(client)

        async def call(batch: list[Record]) -> list[dict[str, Any]]:
            body = request_body(task, batch, adapter)
            try:
                response = await client.post(endpoint, json=body)
            except httpx.TimeoutException as exc:
                raise _BatchFailed(f"client timeout: no response within {HTTP_TIMEOUT.read:g} s") from exc
            except httpx.TransportError as exc:
                raise EvalError(f"request to {url}{endpoint} failed: {exc}") from exc
            if response.status_code == 200:
                return _from_response(task, batch, response.json())
            if response.status_code in _FATAL_STATUS:
                raise EvalError(f"{url}{endpoint}: {_problem_text(response)}")
            raise _BatchFailed(_problem_text(response))

        return await _predict(task, records, call, batch_size=batch_size, concurrency=concurrency)


async def predict_in_process(
    service: Service,
    task: Task,
    records: list[Record],
    *,
    adapter: AdapterChoice = None,
    batch_size: int = 16,
    concurrency: int = 4,
) -> list[dict[str, Any]]:
    """Predictions from a started in-process service, through the request path the API uses."""
    if not service.ready:
        raise EvalError(f"the service is not ready ({service.startup_error or 'not started'})")
    try:
        with service.registry.lease(task.name, adapter):
            pass
    except Problem as exc:
        raise EvalError(str(exc)) from exc

    async def call(batch: list[Record]) -> list[dict[str, Any]]:
        # The API's own request path (validation, input limits, lease, timeout), so that
        # in-process and --url runs fail alike and read the same response.
        try:
            response = await call_json(
                service,
                task.kind.endpoint,
                request_body(task, batch, adapter),
                request_id=f"eval-{uuid.uuid4().hex}",
                origin="eval",
                priority=INTERACTIVE_PRIORITY,
            )
        except Problem as exc:
            raise _BatchFailed(f"{exc.kind.status} {exc}") from exc
        except Exception as exc:  # the API answers these with 500 internal-error
            # By type only: an exception's message can quote the note, and this ends in report.json.
            raise _BatchFailed(f"500 internal-error: {type(exc).__name__}") from exc
        return _from_response(task, batch, response)

    return await _predict(task, records, call, batch_size=batch_size, concurrency=concurrency)


# ------------------------------------------------------------------------------ scoring


def score(task: Task, records: list[Record], predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of predictions (API shapes, parallel to records) against the records' gold."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    return task.kind.score(task, [r.gold for r in records], predictions)


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    """Nested metrics as {"strict.f1": 0.5, ...}: numbers and None only (booleans and text left out)."""
    flat: dict[str, float | None] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}."))
        elif value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            flat[name] = value
    return flat


def report_rows(report: dict[str, Any]) -> dict[str, float | None]:
    """One report as table rows: n, failed, then the flattened metrics."""
    return {"n": report["n"], "failed": report["failed"], **flatten_metrics(report["metrics"])}


# ------------------------------------------------------------------------------ reports


def build_report(
    task: Task,
    records: list[Record],
    predictions: list[dict[str, Any]],
    *,
    run: str,
    data: str,
    adapter: str | None,
    few_shot: int | None,
    seconds: float,
) -> dict[str, Any]:
    errors = [p["error"] for p in predictions if "error" in p]
    return {
        "task": task.name,
        "run": run,
        "data": data,
        "n": len(records),
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
        "adapter": adapter,
        "few_shot": few_shot,
        "metrics": score(task, records, predictions),
        "seconds": round(seconds, 3),
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation of {report['task']}: {report['run']}",
        "",
        f"- data: `{report['data']}` ({report['n']} records)",
        f"- adapter: {report['adapter'] or 'none (base model)'}"
        + (f", {report['few_shot']}-shot" if report["few_shot"] is not None else ""),
        f"- failed requests: {report['failed']}"
        + (f" (first error: {report['first_error']})" if report["first_error"] else ""),
        f"- prediction time: {report['seconds']:.1f} s",
        "",
        markdown_table({report["run"]: report_rows(report)}),
    ]
    calibration = report["metrics"].get("calibration")
    if calibration and calibration["bins"]:
        lines += [
            "",
            f"Reliability of the confidences ({calibration['n']} scored, ECE {calibration['ece']:.3f}):",
            "",
            "| confidence | n | mean confidence | right |",
            "|---|---:|---:|---:|",
            *(
                f"| {b['range'][0]:.1f}-{b['range'][1]:.1f} | {b['n']} | {b['confidence']:.3f} | {b['accuracy']:.3f} |"
                for b in calibration["bins"]
            ),
        ]
    return "\n".join(lines)


def write_report(
    out_dir: Path, report: dict[str, Any], records: list[Record], predictions: list[dict[str, Any]], task: Task
) -> Path:
    """Write report.json, predictions.jsonl, report.md and report.html into out_dir; return out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8", newline="\n") as out:
        for record, prediction in zip(records, predictions, strict=True):
            out.write(json.dumps({"id": record.id, "prediction": prediction}, ensure_ascii=False) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    page = render_html(task, report, report_rows(report), records, predictions)
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    return out_dir


def publish_report(out_dir: Path, adapter_dir: Path) -> Path | None:
    """Leave report.html in the evaluated adapter's folder as its latest report (the service
    serves it, the page links it), when that folder is here and writable. Never into the
    installed package: the shipped demo's adapters are not to be written to."""
    target = adapter_dir / EVAL_REPORT
    try:
        if adapter_dir.resolve().is_relative_to(PACKAGE_DIR.resolve()) or not os.access(adapter_dir, os.W_OK):
            return None
        partial = target.with_suffix(".part")
        shutil.copyfile(out_dir / "report.html", partial)
        os.replace(partial, target)
    except OSError:
        return None
    return target


def read_predictions(path: Path, records: list[Record]) -> list[dict[str, Any]]:
    """predictions.jsonl back as a list parallel to records."""
    by_id: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            by_id[row["id"]] = row["prediction"]
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise ValueError(f"{path}: no prediction for {len(missing)} record(s), e.g. {missing[0]!r}")
    return [by_id[r.id] for r in records]


# ----------------------------------------------------------------------------- few-shot


def few_shot_task(task: Task, shots: list[Record], k: int) -> Task:
    """The task with its manifest examples replaced by the first k shot records (first chunk each)."""
    examples: list[Example] = []
    for record in shots:
        if len(examples) == k:
            break
        pairs = model_outputs(task, record)
        if pairs:  # a blank text is answered without the model: nothing to show it
            first = pairs[0][0].payload
            # Every answer for the first chunk: a form asks once per item group, and each
            # group's prompt shows its own items of the example (`TaskType.example_output`).
            output: dict[str, Any] = {}
            for ask, part_output in pairs:
                if ask.payload == first:
                    output.update(part_output)
            examples.append(Example(input=first, output=output))
    if len(examples) < k:
        raise EvalError(f"--few-shot {k}: the shots file has only {len(examples)} usable record(s)")
    return task.with_manifest(task.manifest.model_copy(update={"examples": examples}))


# ---------------------------------------------------------------------------------- CLI


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="Task name (a manifest in the tasks folder).")
    parser.add_argument("--data", required=True, type=Path, help="JSONL test data in the API shapes.")
    parser.add_argument(
        "--url", help="A running medlora service to evaluate (default: in process); its key in MEDLORA_API_KEY."
    )
    parser.add_argument("--adapter", help="NAME@VERSION: a registered adapter instead of the task's current one.")
    parser.add_argument(
        "--few-shot",
        dest="few_shot",
        type=int,
        metavar="K",
        help="Base model without adapter, prompted with the first K records of --shots (in process only).",
    )
    parser.add_argument("--shots", type=Path, help="JSONL records to draw the few-shot examples from.")
    parser.add_argument("--out", type=Path, help="Report folder (default: eval-<task>-<run name>/).")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=16, help="Items per request.")
    parser.add_argument("--concurrency", type=int, default=4, help="Requests in flight at once.")
    parser.add_argument("--model", help="In process: base model id or path (default: embedded tiny model).")
    parser.add_argument("--adapters", help="In process: adapters folder (and task manifests if it has *.yaml).")
    parser.add_argument("--name", help="Run name for reports and comparisons (default: the adapter used).")


def _parse_adapter(value: str) -> tuple[str, str]:
    name, sep, version = value.rpartition("@")
    if not sep or not name or not version:
        raise EvalError(f"--adapter must be NAME@VERSION, not {value!r}")
    return name, version


def _check_args(args: argparse.Namespace) -> AdapterChoice:
    if args.few_shot is not None:
        if args.url:
            raise EvalError(
                "--few-shot runs in process only (it changes the task's prompt examples): drop --url, "
                "or evaluate the base model over HTTP with a task whose manifest holds the examples"
            )
        if args.adapter:
            raise EvalError("--few-shot uses the base model without adapter: it cannot be combined with --adapter")
        if args.few_shot < 0:
            raise EvalError("--few-shot must be 0 or more")
        if args.few_shot > 0 and args.shots is None:
            raise EvalError("--few-shot K needs --shots FILE")
    elif args.shots is not None:
        raise EvalError("--shots only applies with --few-shot K")
    if args.url and (args.model or args.adapters):
        raise EvalError("--model and --adapters configure the in-process service: they do not apply with --url")
    if args.batch_size < 1 or args.concurrency < 1:
        raise EvalError("--batch-size and --concurrency must be at least 1")
    if args.few_shot is not None:
        return "none"
    return _parse_adapter(args.adapter) if args.adapter else None


def _adapter_key(adapter: AdapterChoice) -> str | None:
    """ "name@version" for an explicit adapter, "none" for the base model, None for the task's current one."""
    if adapter is None or adapter == "none":
        return adapter
    return f"{adapter[0]}@{adapter[1]}"


def _run_name(args: argparse.Namespace, adapter_used: str | None) -> str:
    if args.name:
        return str(args.name)
    if args.few_shot is not None:
        return f"base-{args.few_shot}-shot"
    return adapter_used or "base"


def _out_dir(args: argparse.Namespace, task: str, run: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    return Path(f"eval-{task}-{re.sub(r'[^A-Za-z0-9._@-]+', '_', run)}")


def _remote_task(description: dict[str, Any]) -> Task:
    """A Task as the server describes it (labels, attributes, schema): what its answers obey."""
    manifest = TaskManifest.model_validate(
        {
            "name": description["name"],
            "type": description["type"],
            "languages": description["languages"],
            "labels": [LabelSpec(name=n) for n in description["labels"]],
            "attributes": [LabelSpec(name=n) for n in description["attributes"]],
            "multi_label": description["multi_label"],
            # Type-specific facts the server shows (a relation task's types, a form's items).
            **{key: description[key] for key in ("relation_types", "items") if key in description},
            "instructions": "(served remotely)",
            "schema": "(served remotely)",
            "adapter": AdapterRef(
                name=description["adapter"]["name"], version=description["adapter"]["version"], path="-"
            ),
        }
    )
    kind = task_type(manifest.type)
    if kind is None:
        raise EvalError(f"task {manifest.name!r} is of a type this client does not know: {manifest.type}")
    return Task(manifest, description["schema"], Path("-"), kind)


@dataclass(frozen=True)
class EvalRun:
    task: Task
    records: list[Record]
    predictions: list[dict[str, Any]]
    adapter_used: str | None  # name@version; None: the base model
    adapter_dir: Path | None  # that adapter's folder, where the service reads it from
    seconds: float


async def _eval_url(args: argparse.Namespace, adapter: AdapterChoice) -> EvalRun:
    async with httpx.AsyncClient(base_url=args.url, timeout=HTTP_TIMEOUT, headers=auth_headers()) as client:
        await wait_ready(client)
        served = {t["name"]: t for t in await fetch_tasks(client)}
        listed = await client.get("/v1/adapters")
        folders = {f"{a['name']}@{a['version']}": Path(a["path"]) for a in listed.json().get("adapters", [])}
    if args.task not in served:
        raise EvalError(f"{args.url} has no task {args.task!r} (tasks: {sorted(served)})")
    task = _remote_task(served[args.task])
    records = load_records(task, args.data)
    bound = served[args.task]["adapter"]
    adapter_used = _adapter_key(adapter) or f"{bound['name']}@{bound['version']}"
    started = time.perf_counter()
    predictions = await predict_via_url(
        args.url, task, records, adapter=adapter, batch_size=args.batch_size, concurrency=args.concurrency
    )
    seconds = time.perf_counter() - started
    return EvalRun(task, records, predictions, adapter_used, folders.get(adapter_used), seconds)


async def _eval_in_process(args: argparse.Namespace, adapter: AdapterChoice) -> EvalRun:
    settings = settings_for(args.model, args.adapters)
    tasks = load_tasks(settings.tasks_dir, settings.schemas_dir)
    if args.task not in tasks:
        raise EvalError(f"no task {args.task!r} in {settings.tasks_dir} (tasks: {sorted(tasks)})")
    task = tasks[args.task]
    # Data first: a bad file fails in a second, not after the engine has started.
    records = load_records(task, args.data)
    if args.few_shot is not None:
        shots = load_records(task, args.shots) if args.few_shot > 0 else []
        overlap = {r.id for r in shots[: args.few_shot]} & {r.id for r in records}
        if overlap:
            print(f"medlora eval: warning: {len(overlap)} shot id(s) also in the test data", file=sys.stderr)
        task = few_shot_task(task, shots, args.few_shot)
    service = build_service(settings)
    service.tasks[task.name] = task
    try:
        await service.start()
        bound = service.registry.bound(task.name)
        adapter_used = _adapter_key(adapter) or (bound.key if bound else None)
        folders = {r.key: r.path for r in service.registry.records()}
        started = time.perf_counter()
        predictions = await predict_in_process(
            service, task, records, adapter=adapter, batch_size=args.batch_size, concurrency=args.concurrency
        )
        seconds = time.perf_counter() - started
        return EvalRun(task, records, predictions, adapter_used, folders.get(adapter_used or ""), seconds)
    finally:
        await service.stop()


def eval_main(args: argparse.Namespace) -> int:
    """Run an evaluation and write its report. 0: all requests succeeded; 1: some failed; 2: cannot run."""
    try:
        adapter = _check_args(args)
        run = asyncio.run(_eval_url(args, adapter) if args.url else _eval_in_process(args, adapter))
    except (EvalError, DataError, ManifestError, ServiceError, httpx.HTTPError) as exc:
        print(f"medlora eval: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"medlora eval: {exc}", file=sys.stderr)
        return 2
    name = _run_name(args, run.adapter_used)
    report = build_report(
        run.task,
        run.records,
        run.predictions,
        run=name,
        data=str(args.data),
        adapter=run.adapter_used,
        few_shot=args.few_shot,
        seconds=run.seconds,
    )
    out_dir = write_report(_out_dir(args, run.task.name, name), report, run.records, run.predictions, run.task)
    published = publish_report(out_dir, run.adapter_dir) if args.few_shot is None and run.adapter_dir else None
    if published:
        print(f"latest report of {run.adapter_used}: {published}", file=sys.stderr)
    print(markdown_table({name: report_rows(report)}))
    print(f"{report['n']} records, {report['failed']} failed; report in {out_dir}/", file=sys.stderr)
    if report["failed"]:
        print(f"first error: {report['first_error']}", file=sys.stderr)
        return 1
    return 0


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reports", nargs="+", type=Path, help="report.json files (or their folders) to compare.")
    parser.add_argument("--out", type=Path, help="Also write the table to this markdown file.")


def compare_table(reports: list[dict[str, Any]]) -> str:
    """One markdown table, one column per report (headed by its run name), one row per metric."""
    runs: dict[str, dict[str, float | None]] = {}
    for report in reports:
        name, i = str(report["run"]), 2
        while name in runs:
            name, i = f"{report['run']} ({i})", i + 1
        runs[name] = report_rows(report)
    return markdown_table(runs)


def compare_main(args: argparse.Namespace) -> int:
    reports: list[dict[str, Any]] = []
    for path in args.reports:
        file = path / "report.json" if path.is_dir() else path
        try:
            report = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(report, dict) or not {"run", "n", "failed", "metrics"} <= report.keys():
                raise ValueError("not a medlora eval report")
        except (OSError, ValueError) as exc:
            print(f"medlora compare: {file}: {exc}", file=sys.stderr)
            return 2
        reports.append(report)
    tasks = sorted({str(r.get("task")) for r in reports})
    if len(tasks) > 1:
        print(f"medlora compare: warning: the reports are for different tasks: {tasks}", file=sys.stderr)
    table = compare_table(reports)
    print(table, end="")
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
    return 0
