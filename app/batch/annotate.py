"""`medlora annotate`: annotate an archive of notes, resumably, with the engine kept busy.

Input: JSONL (`id` + `text`, or `id` + `context` + `question` for QA), CSV with named
columns, or a folder of `.txt` files (id = path without `.txt`). Each note becomes one
request body, exactly what `POST /v1/<endpoint>` takes, run in process or against
`--url`. Results are appended line by line to the output (`journal.Journal`); lines
that cannot be annotated go to the errors file with the reason. Re-running the same
command skips what either file already holds, so an interrupted run (even `kill -9`)
resumes with every input line accounted for exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import csv
import json
import os
import re
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.api.client import (
    API_KEY_ENV,
    HTTP_TIMEOUT,
    ServiceError,
    ServiceUnavailable,
    auth_headers,
    fetch_tasks,
    post_with_retries,
    wait_ready,
)
from app.batch.journal import Journal, JournalError, encode_line, recover
from app.problems import DUPLICATE_ID, EMPTY_TEXT, INVALID_LINE, TIMEOUT, Problem, unexpected
from app.settings import Settings
from app.tasks.calls import BATCH_PRIORITY, call_json
from app.tasks.manifests import ManifestError, load_tasks
from app.tasks.service import Service, build_service, settings_for
from app.tasks.types import task_type
from app.tasks.types.base import TaskType
from app.tasks.types.deid import DEFAULT_TASK as DEFAULT_DEID_TASK

_ID_MAX = 256
Fields = tuple[str, ...]  # a task type's input fields, the note first


class AnnotateError(Exception):
    """The run cannot go on (bad arguments, unreadable input, service unreachable)."""


@dataclass(frozen=True)
class InputRecord:
    position: str  # "line 12", "row 3", "file a/b.txt": where it came from, and its resume key if rejected
    number: int  # 1-based record number in the input
    id: str | None
    payload: dict[str, str] | None  # {"text"} or {"context", "question"}
    problem: Problem | None = None


@dataclass(frozen=True)
class Columns:
    id: str = "id"
    text: str = "text"
    context: str = "context"
    question: str = "question"


def _invalid(position: str, number: int, reason: str, item_id: str | None = None) -> InputRecord:
    return InputRecord(position, number, item_id, None, Problem(INVALID_LINE, f"{position}: {reason}"))


def _record(position: str, number: int, raw_id: Any, values: dict[str, Any], fields: Fields) -> InputRecord:
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id or len(raw_id) > _ID_MAX or re.search(r"[\x00-\x1f]", raw_id):
        return _invalid(position, number, f"needs an id: a string of 1-{_ID_MAX} characters without control characters")
    if not _is_unicode(raw_id):
        # Not in the error line either: the errors file is UTF-8, and the position says which record.
        return _invalid(position, number, "the id is not valid Unicode (a lone surrogate, or a byte that is not UTF-8)")
    payload: dict[str, str] = {}
    for name in fields:
        value = values.get(name)
        if not isinstance(value, str):
            return _invalid(position, number, f"field {name!r} must be a string", raw_id)
        if not _is_unicode(value):
            return _invalid(position, number, f"field {name!r} is not valid UTF-8", raw_id)
        payload[name] = value
    if not payload[fields[0]].strip():
        return InputRecord(position, number, raw_id, None, Problem(EMPTY_TEXT, f"{position}: the note is empty"))
    return InputRecord(position, number, raw_id, payload)


def _is_unicode(text: str) -> bool:
    """No lone surrogates: from a JSON `\\ud800` escape, or a bad byte kept by surrogateescape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_jsonl(path: Path, fields: Fields) -> Generator[InputRecord, None, None]:
    number = 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # some editors start UTF-8 files with one
            if not raw.strip():
                continue  # blank lines are not records
            number += 1
            position = f"line {line_no}"
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield _invalid(position, number, "not valid UTF-8")
                continue
            except json.JSONDecodeError as exc:
                yield _invalid(position, number, f"not valid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                yield _invalid(position, number, "not a JSON object")
                continue
            yield _record(position, number, obj.get("id"), obj, fields)


def read_csv(path: Path, fields: Fields, columns: Columns) -> Generator[InputRecord, None, None]:
    wanted = {"id": columns.id, **{name: getattr(columns, name, name) for name in fields}}
    # surrogateescape keeps bad bytes as lone surrogates, so one bad row is rejected, not the file.
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [col for col in wanted.values() if col not in (reader.fieldnames or [])]
        if missing:
            raise AnnotateError(f"{path}: missing column(s) {missing}; header has {reader.fieldnames}")
        for number, row in enumerate(reader, start=1):
            values = {name: row.get(col) for name, col in wanted.items()}
            yield _record(f"row {number}", number, values.pop("id"), values, fields)


def read_folder(path: Path, fields: Fields) -> Generator[InputRecord, None, None]:
    if len(fields) > 1:
        raise AnnotateError(f"this task needs {' and '.join(fields)} per note: use JSONL or CSV input, not a folder")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    for number, file in enumerate(files, start=1):
        rel = file.relative_to(path).as_posix()
        position = f"file {rel}"
        if not _is_unicode(rel):
            # Shown with \xNN escapes, and marked: every valid name's position ends in ".txt",
            # so this one (the resume key of its error line) can be no other file's.
            shown = os.fsencode(rel).decode("utf-8", "backslashreplace")
            yield _invalid(f"file {shown} (name not UTF-8)", number, "the file name is not valid UTF-8")
            continue
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            yield _invalid(position, number, "not valid UTF-8", rel[: -len(".txt")])
            continue
        yield _record(position, number, rel[: -len(".txt")], {fields[0]: text}, fields)


def read_input(path: Path, fields: Fields, columns: Columns) -> Generator[InputRecord, None, None]:
    """Records with the task's input fields (`TaskType.input_fields`; the first is the note)."""
    if path.is_dir():
        return read_folder(path, fields)
    if not path.is_file():
        raise AnnotateError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".csv":
        return read_csv(path, fields, columns)
    return read_jsonl(path, fields)


def check_input(path: Path, fields: Fields, columns: Columns) -> None:
    """Raise AnnotateError now for a missing path, CSV columns or a folder given to QA.

    The readers are generators: their checks run at the first record, so take one.
    """
    records = read_input(path, fields, columns)
    next(records, None)
    records.close()


# -- sharding ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
            raise AnnotateError(f"--shard must be I/N with 0 <= I < N, not {text!r}")
        return cls(int(match[1]), int(match[2]))

    def owns(self, record: InputRecord) -> bool:
        # By id, so that every copy of an id lands in the same shard (duplicates are caught
        # there); records without a usable id go by their number.
        key = zlib.crc32(record.id.encode("utf-8", "surrogatepass")) if record.id is not None else record.number
        return key % self.count == self.index


ALL = Shard(0, 1)


# -- backends ----------------------------------------------------------------------------
class LineFailed(Exception):
    """This line cannot be annotated; the problem body says why. The run continues."""

    def __init__(self, problem: dict[str, Any]):
        super().__init__(problem.get("detail", ""))
        self.problem = problem


Backend = Callable[[str, dict[str, Any], str], Awaitable[dict[str, Any]]]  # (endpoint, body, request id)


def request_body(task: str, kind: TaskType[Any], record: InputRecord, options: Deid | None = None) -> dict[str, Any]:
    assert record.payload is not None and record.id is not None
    body = {"task": task, kind.items_field: [{"id": record.id, **record.payload}]}
    return body if options is None else {**body, "replace": options.replace}


def output_line(kind: TaskType[Any], response: dict[str, Any], options: Deid | None = None) -> dict[str, Any]:
    """One annotated note: the API's per-item object plus the model that produced it; with
    --deid, the note as it may leave: its id and de-identified text, nothing else (the spans
    hold the identifiers themselves)."""
    item = dict(response[kind.items_field][0])
    if options is not None:
        return {"id": item["id"], "text": item["deidentified"]}
    item["model"] = response["model"]
    return item


@dataclass(frozen=True)
class Deid:
    """`annotate --deid`: write the archive de-identified, masked or with surrogates."""

    replace: str = "mask"


# -- the run -----------------------------------------------------------------------------
@dataclass
class Summary:
    task: str
    input: str
    output: str
    errors: str
    records: int = 0  # input records in this shard
    already_done: int = 0  # skipped: in the output or errors file from an earlier run
    annotated: int = 0
    failed: int = 0
    seconds: float = 0.0
    error_types: dict[str, int] = field(default_factory=dict)

    @property
    def notes_per_s(self) -> float:
        return self.annotated / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "input": self.input,
            "output": self.output,
            "errors": self.errors,
            "records": self.records,
            "already_done": self.already_done,
            "annotated": self.annotated,
            "failed": self.failed,
            "seconds": round(self.seconds, 2),
            "notes_per_s": round(self.notes_per_s, 2),
            "error_types": self.error_types,
        }


class Progress:
    """tqdm bar on a terminal; a plain line every `every_s` seconds otherwise."""

    def __init__(self, total: int, *, tty: bool, every_s: float = 10.0):
        self.total, self.done, self.every_s = total, 0, every_s
        self.started = self._last = time.monotonic()
        self._bar: Any = None
        if tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="note", desc="annotate", file=sys.stderr)

    def advance(self, failed: int) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(errors=failed, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done == self.total:
            self._last = now
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(
                f"annotate: {self.done}/{self.total} notes, {failed} errors, {rate:.1f} notes/s, ETA {_duration(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


async def annotate(
    records: Callable[[], Iterator[InputRecord]],
    backend: Backend,
    *,
    task: str,
    kind: TaskType[Any],
    output: Path,
    errors: Path,
    summary: Summary,
    concurrency: int = 64,
    shard: Shard = ALL,
    tty: bool = False,
    deid: Deid | None = None,
) -> Summary:
    """Annotate every record of the shard not already in `output` or `errors`.

    `records` is called twice: once to count (for the ETA), once to run, so a large
    archive streams instead of being held in memory.
    """
    endpoint = kind.endpoint
    started = time.perf_counter()
    with Journal(output) as out, Journal(errors) as err:
        done_ids = {str(r.get("id")) for r in out.open()}
        done_positions = {str(r.get("position")) for r in err.open()}
        summary.records = sum(1 for r in records() if shard.owns(r))
        progress = Progress(summary.records, tty=tty)
        seen: set[str] = set()
        pending: set[asyncio.Task[None]] = set()

        def fail(record: InputRecord, problem: dict[str, Any]) -> None:
            err.append({"id": record.id, "position": record.position, "error": problem})
            summary.failed += 1
            slug = str(problem.get("type", "")).rsplit(":", 1)[-1]
            summary.error_types[slug] = summary.error_types.get(slug, 0) + 1

        async def run_one(record: InputRecord) -> None:
            try:
                body = request_body(task, kind, record, deid)
                response = await backend(endpoint, body, f"annotate-{record.number}")
            except LineFailed as exc:
                fail(record, exc.problem)
            else:
                out.append(output_line(kind, response, deid))
                summary.annotated += 1
            progress.advance(summary.failed)

        try:
            for record in records():
                if not shard.owns(record):
                    continue
                first = record.id is not None and record.id not in seen
                if record.id is not None:
                    seen.add(record.id)
                if record.position in done_positions or (first and record.id in done_ids):
                    summary.already_done += 1
                    progress.advance(summary.failed)
                    continue
                if record.problem is None and not first:
                    duplicate = Problem(DUPLICATE_ID, f"{record.position}: id {record.id!r} appeared earlier")
                    record = InputRecord(record.position, record.number, record.id, None, duplicate)
                if record.problem is not None:
                    fail(record, record.problem.body())
                    progress.advance(summary.failed)
                    continue
                while len(pending) >= concurrency:
                    finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    _raise_first_error(finished)  # a fatal error stops the run here
                pending.add(asyncio.create_task(run_one(record)))
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                _raise_first_error(finished)
        finally:
            for leftover in pending:
                leftover.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            progress.close()
            summary.seconds = time.perf_counter() - started
    return summary


def _raise_first_error(finished: set[asyncio.Task[None]]) -> None:
    # Retrieve every failure, not just the first: asyncio logs the others as "never retrieved".
    errors = [error for task in finished if not task.cancelled() and (error := task.exception())]
    if errors:
        raise errors[0]


def default_errors_path(output: Path) -> Path:
    name = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(name + ".errors.jsonl")


# -- command line ------------------------------------------------------------------------
def add_annotate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help="Task name (a manifest in the tasks folder); with --deid, deid-clinical.")
    parser.add_argument("--input", required=True, type=Path, help="JSONL file, CSV file, or folder of .txt notes.")
    parser.add_argument("--output", required=True, type=Path, help="Annotations, one JSON line per note (appended).")
    parser.add_argument(
        "--deid",
        nargs="?",
        const="mask",
        choices=("mask", "surrogate"),
        help="De-identify the archive: each output line is {id, text} with the PHI masked (the default) or "
        "replaced by surrogates, and nothing else; --task defaults to the shipped deid task.",
    )
    parser.add_argument("--errors", type=Path, help="Rejected lines with reasons (default: OUTPUT.errors.jsonl).")
    parser.add_argument(
        "--url", help="A running medlora service (default: an in-process engine); its key in MEDLORA_API_KEY."
    )
    parser.add_argument("--concurrency", type=int, default=64, help="Notes in flight at once (default 64).")
    parser.add_argument("--shard", default="0/1", help="I/N: annotate only shard I of N (ids hashed); default 0/1.")
    parser.add_argument("--id-column", default="id", help="CSV: id column (default id).")
    parser.add_argument("--text-column", default="text", help="CSV: text column (default text).")
    parser.add_argument("--context-column", default="context", help="CSV, QA: context column.")
    parser.add_argument("--question-column", default="question", help="CSV, QA: question column.")
    parser.add_argument("--model", help="In process: base model id or path (default: embedded tiny model).")
    parser.add_argument("--adapters", help="In process: adapters folder (and task manifests if it has *.yaml).")


def in_process_backend(service: Service) -> Backend:
    async def call(endpoint: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        try:
            return await call_json(
                service, endpoint, body, request_id=request_id, origin="annotate", priority=BATCH_PRIORITY
            )
        except Problem as exc:
            if not service.engine.ready:
                raise AnnotateError(f"the engine stopped: {exc.detail}") from None
            raise LineFailed(exc.body()) from None
        except Exception as exc:  # a bug for one line must not stop thousands of others
            raise LineFailed(unexpected(exc).body()) from None

    return call


# Wrong for every line alike: stop instead of filling the errors file.
_FATAL_STATUS = frozenset({401, 403, 404})


def remote_backend(client: httpx.AsyncClient) -> Backend:
    async def call(endpoint: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        try:
            response = await post_with_retries(client, f"/v1/{endpoint}", body, request_id=request_id)
        except ServiceUnavailable as exc:
            raise AnnotateError(str(exc)) from None
        except httpx.TimeoutException:
            raise LineFailed(Problem(TIMEOUT, "no response from the service in time").body()) from None
        if response.status_code == 200:
            result: dict[str, Any] = response.json()
            return result
        try:
            problem = response.json()
        except ValueError:
            problem = {"status": response.status_code, "detail": response.text[:500]}
        if response.status_code in _FATAL_STATUS:
            hint = f" (set {API_KEY_ENV} to a valid key)" if response.status_code == 401 else ""
            detail = problem.get("detail", "")
            raise AnnotateError(f"{client.base_url}/v1/{endpoint}: {response.status_code} {detail}{hint}")
        raise LineFailed(problem)

    return call


async def _run(args: argparse.Namespace, summary: Summary) -> Summary:
    shard = Shard.parse(args.shard)
    if args.concurrency < 1:
        raise AnnotateError("--concurrency must be at least 1")
    columns = Columns(args.id_column, args.text_column, args.context_column, args.question_column)
    tty = sys.stderr.isatty()

    async def run_with(backend: Backend, kind: TaskType[Any]) -> Summary:
        if args.deid and "replace" not in kind.request_model.model_fields:
            raise AnnotateError(f"--deid needs a task that de-identifies; {args.task!r} does not")
        return await annotate(
            lambda: read_input(args.input, kind.input_fields, columns),
            backend,
            task=args.task,
            kind=kind,
            output=args.output,
            errors=Path(summary.errors),
            summary=summary,
            concurrency=args.concurrency,
            shard=shard,
            tty=tty,
            deid=Deid(args.deid) if args.deid else None,
        )

    if args.url:
        async with httpx.AsyncClient(
            base_url=args.url,
            timeout=HTTP_TIMEOUT,
            limits=httpx.Limits(max_connections=args.concurrency),
            headers=auth_headers(),
        ) as client:
            try:
                await wait_ready(client)
                tasks = await fetch_tasks(client)
            except ServiceError as exc:
                raise AnnotateError(str(exc)) from None
            types = {t["name"]: t["type"] for t in tasks}
            if args.task not in types:
                raise AnnotateError(f"{args.url} has no task {args.task!r} (tasks: {sorted(types)})")
            kind = task_type(types[args.task])
            if kind is None:
                raise AnnotateError(f"task {args.task!r} is of a type this client does not know: {types[args.task]}")
            check_input(args.input, kind.input_fields, columns)
            return await run_with(remote_backend(client), kind)
    settings = settings_for(args.model, args.adapters)
    tasks_found = load_tasks(settings.tasks_dir, settings.schemas_dir)
    if args.task not in tasks_found:
        raise AnnotateError(f"no task {args.task!r} in {settings.tasks_dir} (tasks: {sorted(tasks_found)})")
    kind = tasks_found[args.task].kind
    check_input(args.input, kind.input_fields, columns)  # seconds, not after the engine's start
    service = build_service(settings)
    try:
        await service.start()
        return await run_with(in_process_backend(service), kind)
    finally:
        await service.stop()


def annotate_main(args: argparse.Namespace) -> int:
    """0: every record of the shard is in the output or errors file; 2: the run stopped early."""
    if args.task is None:
        if not args.deid:
            print("medlora annotate: --task is required (or --deid)", file=sys.stderr)
            return 2
        args.task = DEFAULT_DEID_TASK
    errors = args.errors or default_errors_path(args.output)
    summary = Summary(task=args.task, input=str(args.input), output=str(args.output), errors=str(errors))
    try:
        asyncio.run(_run(args, summary))
    except (AnnotateError, JournalError, ManifestError, OSError) as exc:
        print(f"medlora annotate: {exc}", file=sys.stderr)
        print(json.dumps({**summary.as_dict(), "stopped": str(exc)}))
        return 2
    except KeyboardInterrupt:
        print("medlora annotate: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    print(
        f"medlora annotate: {summary.annotated} annotated, {summary.failed} errors"
        f"{f' (see {errors})' if summary.failed else ''}, {summary.already_done} already done; "
        f"{summary.notes_per_s:.1f} notes/s",
        file=sys.stderr,
    )
    print(json.dumps(summary.as_dict()))
    return 0


# -- merging shards ------------------------------------------------------------------------
@dataclass
class MergeReport:
    records: int = 0
    annotated: int = 0
    failed: int = 0
    missing: list[str] = field(default_factory=list)  # input records in no shard's files
    duplicated: list[str] = field(default_factory=list)  # in more than one line
    unexpected: list[str] = field(default_factory=list)  # ids that are not in the input

    @property
    def complete(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected)

    def as_dict(self, sample: int = 20) -> dict[str, Any]:
        return {
            "records": self.records,
            "annotated": self.annotated,
            "failed": self.failed,
            "complete": self.complete,
            "missing": len(self.missing),
            "duplicated": len(self.duplicated),
            "unexpected": len(self.unexpected),
            "examples": {
                "missing": self.missing[:sample],
                "duplicated": self.duplicated[:sample],
                "unexpected": self.unexpected[:sample],
            },
        }


def merge_shards(records: Iterator[InputRecord], shard_outputs: list[Path], output: Path, errors: Path) -> MergeReport:
    """Concatenate shard outputs and errors; check every input record is in exactly one line."""
    report = MergeReport()
    id_count: dict[str, int] = {}
    position_count: dict[str, int] = {}
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "wb") as merged_out, open(errors, "wb") as merged_err:
        # A shell glob such as shard-*.jsonl also matches the shards' errors files; those
        # are read beside their output file, not as outputs.
        for shard_output in [p for p in shard_outputs if not p.name.endswith(".errors.jsonl")]:
            for path, merged in ((shard_output, merged_out), (default_errors_path(shard_output), merged_err)):
                for line in recover(path):
                    merged.write(encode_line(line))
                    if merged is merged_out:
                        key = str(line.get("id"))
                        id_count[key] = id_count.get(key, 0) + 1
                        report.annotated += 1
                    else:
                        key = str(line.get("position"))
                        position_count[key] = position_count.get(key, 0) + 1
                        report.failed += 1
    seen: set[str] = set()
    for record in records:
        report.records += 1
        first = record.id is not None and record.id not in seen
        if record.id is not None:
            seen.add(record.id)
        in_output = id_count.pop(record.id, 0) if first and record.id is not None else 0
        in_errors = position_count.pop(record.position, 0)
        if in_output + in_errors == 0:
            report.missing.append(record.id or record.position)
        elif in_output + in_errors > 1:
            report.duplicated.append(record.id or record.position)
    report.unexpected = sorted(id_count) + sorted(position_count)
    return report


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="Task the shards annotated (for reading the input).")
    parser.add_argument("--input", required=True, type=Path, help="The input every shard read.")
    parser.add_argument("--output", required=True, type=Path, help="Merged annotations.")
    parser.add_argument("--errors", type=Path, help="Merged errors (default: OUTPUT.errors.jsonl).")
    parser.add_argument("--tasks", type=Path, help="Task manifests folder (default: the repository's adapters/).")
    parser.add_argument("--id-column", default="id", help="CSV: id column (default id).")
    parser.add_argument("--text-column", default="text", help="CSV: text column (default text).")
    parser.add_argument("--context-column", default="context", help="CSV, QA: context column.")
    parser.add_argument("--question-column", default="question", help="CSV, QA: question column.")
    parser.add_argument("shards", nargs="+", type=Path, help="Each shard's --output file.")


def merge_main(args: argparse.Namespace) -> int:
    """0: every input record is in exactly one merged line; 1: records missing or repeated; 2: cannot run."""
    settings = Settings(**({"tasks_dir": args.tasks} if args.tasks else {}))
    try:
        tasks = load_tasks(settings.tasks_dir, settings.schemas_dir)
        if args.task not in tasks:
            raise AnnotateError(f"no task {args.task!r} in {settings.tasks_dir}")
        columns = Columns(args.id_column, args.text_column, args.context_column, args.question_column)
        records = read_input(args.input, tasks[args.task].kind.input_fields, columns)
        report = merge_shards(records, args.shards, args.output, args.errors or default_errors_path(args.output))
    except (AnnotateError, JournalError, ManifestError, OSError) as exc:
        print(f"medlora merge: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict()))
    if not report.complete:
        print(
            f"medlora merge: incomplete: {len(report.missing)} missing, {len(report.duplicated)} repeated, "
            f"{len(report.unexpected)} not in the input",
            file=sys.stderr,
        )
        return 1
    return 0
