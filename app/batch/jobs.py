"""Running OpenAI-style batch jobs inside the service, resumable across restarts.

Each input line has a fixed request id, `<batch id>-<line number>`, written into its
output or error line. Both files are journals (`journal.Journal`), so after a crash or
restart a job re-reads them and runs only the lines in neither: none lost, none twice.
Batch lines share a bounded number of engine slots across all jobs and are submitted
at a lower engine priority than interactive requests, which therefore go first.

A job streams its input file (a few hundred lines read ahead, not the whole file). Cancelling
aborts the lines in flight (their engine requests are cancelled) and keeps the finished ones.
When a result cannot be stored (a full disk), the job pauses, its status still active, and
tries again every `STORAGE_RETRY_S` seconds (and at the next start): the lines it could not
store run again then, so none is lost and the job never completes with a line missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import AsyncGenerator, Generator
from pathlib import Path
from typing import Any

from app.batch.journal import Journal, recover, replace_durably
from app.batch.store import ACTIVE_STATUSES, Batch, BatchStore
from app.problems import DUPLICATE_ID, ENGINE_UNAVAILABLE, INVALID_LINE, NOT_READY, Problem, unexpected
from app.tasks.calls import BATCH_PRIORITY, call_json, endpoints
from app.tasks.service import Service

# Times one line is retried after the engine lost it before it goes to the error file.
ENGINE_UNAVAILABLE_RETRIES = 3
# A job whose results cannot be stored (disk full, I/O error) pauses this long before trying again.
STORAGE_RETRY_S = 30.0
_STORAGE_ERRORS = (OSError, sqlite3.OperationalError)  # sqlite's "database or disk is full"
_READ_AHEAD = 256  # input lines read per trip to a worker thread
log = logging.getLogger("medlora.batch")


def batch_endpoints() -> dict[str, str]:
    """Public endpoint paths a batch can target -> task endpoint names (every task type's)."""
    return {f"/v1/{endpoint}": endpoint for endpoint in endpoints()}


COMPLETION_WINDOWS = {"24h": 24 * 3600}
_COUNT_EVERY_S = 1.0


def input_lines(path: Path) -> Generator[tuple[int, bytes], None, None]:
    """(line number, raw line) for every non-blank line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


async def _stream_lines(path: Path) -> AsyncGenerator[tuple[int, bytes], None]:
    """`input_lines`, read in a worker thread a few hundred lines at a time."""
    lines = input_lines(path)
    try:
        while chunk := await asyncio.to_thread(lambda: list(itertools.islice(lines, _READ_AHEAD))):
            for item in chunk:
                yield item
    finally:
        # Cancelled mid-read, the read still runs in its thread and owns the generator (closing
        # it now raises "generator already executing"); garbage collection closes it and its file.
        with contextlib.suppress(ValueError):
            lines.close()


def _is_unicode(value: Any) -> bool:
    """No lone surrogate anywhere in it: a `\\ud800` escape is valid JSON but not Unicode, and
    could neither run (tokenizers encode UTF-8) nor be written to a UTF-8 output file."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_line(raw: bytes, endpoint: str) -> tuple[str, Any]:
    """(custom_id, body) of one input line; raises Problem(INVALID_LINE) saying what is wrong."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise Problem(INVALID_LINE, "line is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise Problem(INVALID_LINE, f"line is not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise Problem(INVALID_LINE, "line is not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise Problem(INVALID_LINE, "custom_id must be a non-empty string")
    if not _is_unicode(custom_id):  # and not echoed in the error line, which is UTF-8
        raise Problem(INVALID_LINE, "custom_id is not valid Unicode (a lone surrogate escape such as \\ud800)")
    if obj.get("method") != "POST":
        raise Problem(INVALID_LINE, "method must be POST", {"custom_id": custom_id})
    if obj.get("url") != endpoint:
        raise Problem(INVALID_LINE, f"url must be the batch's endpoint {endpoint}", {"custom_id": custom_id})
    if not isinstance(obj.get("body"), dict):
        raise Problem(INVALID_LINE, "body must be a JSON object", {"custom_id": custom_id})
    if not _is_unicode(obj["body"]):
        detail = "body is not valid Unicode (a lone surrogate escape such as \\ud800)"
        raise Problem(INVALID_LINE, detail, {"custom_id": custom_id})
    return custom_id, obj["body"]


def answered_lines(input_path: Path, output_path: Path, endpoint: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(request body, response body) of every input line the batch answered, in input order:
    what a reviewer opens. Lines that failed, or that the output does not hold, are left out."""
    answers: dict[str, dict[str, Any]] = {}
    with open(output_path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                line = json.loads(raw)
                response = line.get("response") or {}
                if response.get("status_code") == 200:
                    answers[line["custom_id"]] = response["body"]
    pairs = []
    for _, raw in input_lines(input_path):
        try:
            custom_id, body = _parse_line(raw, endpoint)
        except Problem:
            continue
        if custom_id in answers:
            pairs.append((body, answers[custom_id]))
    return pairs


class _ServiceFailed(Exception):
    """The service can run no line any more (a failed start, a dead engine): the job stops as at
    a shutdown, its status active and its lines unanswered, to resume after the restart."""


async def _until(stop: asyncio.Event, work: set[asyncio.Future[Any]]) -> None:
    """Wait until one of `work` is done or `stop` is set."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({*work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()


class BatchRunner:
    def __init__(self, service: Service, store: BatchStore, *, concurrency: int):
        self.service = service
        self.store = store
        self.slots = asyncio.Semaphore(concurrency)
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._cancel_requested: set[str] = set()
        self._stops: dict[str, asyncio.Event] = {}  # per running job: set to cancel it

    async def resume_all(self) -> None:
        """Start (again) every job a previous run left unfinished."""
        for batch in await asyncio.to_thread(self.store.batches, ACTIVE_STATUSES):
            log.info("batch resumed", extra={"batch": batch.id, "status": batch.status})
            self.start(batch.id)

    def start(self, batch_id: str) -> None:
        if batch_id not in self._jobs or self._jobs[batch_id].done():
            self._jobs[batch_id] = asyncio.create_task(self._run(batch_id), name=f"batch {batch_id}")

    def cancel(self, batch_id: str) -> None:
        """Ask an active job to stop: lines in flight are aborted, finished lines are kept."""
        self._cancel_requested.add(batch_id)
        if (stop := self._stops.get(batch_id)) is not None:
            stop.set()  # wakes the job wherever it waits: for a slot, a line, a retry
        self.start(batch_id)  # no-op if it is running; otherwise it finishes as cancelled now

    def _stop_event(self, batch_id: str) -> asyncio.Event:
        """A fresh event that `cancel` sets (set already if a cancel was asked for)."""
        stop = self._stops[batch_id] = asyncio.Event()
        if batch_id in self._cancel_requested:
            stop.set()
        return stop

    async def stop(self) -> None:
        """Shutdown: stop working; unfinished jobs stay active in the store and resume on the next start."""
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self._jobs.clear()

    # -- one job -------------------------------------------------------------------------
    async def _save(self, batch: Batch) -> None:
        if batch.id in self._cancel_requested and batch.status in ("validating", "in_progress"):
            batch.status = "cancelling"
            batch.timestamps["cancelling"] = int(time.time())
        await asyncio.to_thread(self.store.save_batch, batch)

    async def _set_status(self, batch: Batch, status: str) -> None:
        batch.status = status
        batch.timestamps[status] = int(time.time())
        await self._save(batch)

    async def _run(self, batch_id: str) -> None:
        batch = await asyncio.to_thread(self.store.get_batch, batch_id)
        if batch is None or batch.status not in ACTIVE_STATUSES:
            return
        try:
            while True:
                try:
                    await self._advance(batch)
                    return
                except _STORAGE_ERRORS as exc:
                    # Not a failed job: its lines are fine, the disk is not. What was not stored
                    # runs again on the retry (or at the next start, the status being active).
                    error = {"error_type": type(exc).__name__, "errno": getattr(exc, "errno", None)}
                    log.error("batch paused: its results cannot be stored", extra={"batch": batch_id, **error})
                    with contextlib.suppress(*_STORAGE_ERRORS):
                        await self._save(batch)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop_event(batch_id).wait(), STORAGE_RETRY_S)
        except asyncio.CancelledError:
            await asyncio.shield(self._save(batch))  # keep the counts; status stays active
            raise
        except _ServiceFailed:
            # Not the job's fault: its unanswered lines must not become error lines. The process
            # exits to be restarted (app/api/server.py), and the job resumes then.
            log.error("batch stopped: the service failed", extra={"batch": batch_id})
            await self._save(batch)
        except Exception as exc:
            log.error("batch failed", extra={"batch": batch_id, "error_type": type(exc).__name__})
            batch.errors.append({"code": "internal_error", "message": f"{type(exc).__name__}; see the logs"})
            await self._finalize(batch, "failed")
        finally:
            self._cancel_requested.discard(batch_id)
            self._stops.pop(batch_id, None)

    async def _advance(self, batch: Batch) -> None:
        """Take the job from its status to a final one; each step is safe to repeat."""
        if batch.status == "validating":
            # Uploads were checked for size and line count; the lines themselves are
            # checked one by one below, and a bad one goes to the error file.
            await self._set_status(batch, "in_progress")
        if batch.status == "in_progress":
            await self._work(batch)  # its saves turn a requested cancel into "cancelling"
        if batch.status == "in_progress":
            if time.time() > batch.expires_at:
                await self._finalize(batch, "expired")
            else:
                await self._set_status(batch, "finalizing")
        if batch.status == "finalizing":
            await self._finalize(batch, "completed")
        elif batch.status == "cancelling":
            await self._finalize(batch, "cancelled")

    async def _work(self, batch: Batch) -> None:
        """Run every line not yet in the output or error journal.

        Returns when every line is answered or a cancel was asked for (lines in flight are then
        aborted); raises the first error met storing a line, after aborting the others.
        """
        folder = self.store.batch_dir(batch.id)
        endpoint = batch_endpoints()[batch.endpoint]
        input_path = self.store.file_path(batch.input_file_id)
        stop = self._stop_event(batch.id)  # set by a cancel, or by a line that could not be stored
        failures: list[BaseException] = []
        with Journal(folder / "output.jsonl") as out, Journal(folder / "errors.jsonl") as err:
            written, rejected = out.open(), err.open()
            done = {str(r.get("id")) for r in written} | {str(r.get("id")) for r in rejected}
            batch.completed, batch.failed = len(written), len(rejected)
            await self._save(batch)
            seen_custom_ids: set[str] = set()
            pending: set[asyncio.Task[None]] = set()
            last_count = time.monotonic()

            def write_error(line_id: str, custom_id: str | None, problem: Problem) -> None:
                body = problem.body(instance=batch.endpoint)
                err.append(
                    {
                        "id": line_id,
                        "custom_id": custom_id,
                        "response": {"status_code": problem.kind.status, "request_id": line_id, "body": body},
                        "error": {"code": problem.kind.slug, "message": problem.detail},
                    }
                )
                batch.failed += 1

            async def run_line(line_id: str, custom_id: str, body: Any) -> None:
                # A journal that cannot be written raises out of here: `settle` stops the job.
                try:
                    response = await self._call(endpoint, body, line_id, batch.owner)
                except _ServiceFailed:
                    raise
                except Problem as exc:
                    write_error(line_id, custom_id, exc)
                except Exception as exc:  # one line's bug must not fail the job
                    write_error(line_id, custom_id, unexpected(exc))
                else:
                    out.append(
                        {
                            "id": line_id,
                            "custom_id": custom_id,
                            "response": {"status_code": 200, "request_id": line_id, "body": response},
                            "error": None,
                        }
                    )
                    batch.completed += 1

            def settle(task: asyncio.Task[None]) -> None:
                # A done callback, not a finally in run_line: a task cancelled before it
                # started never runs its body, and its slot would leak across all jobs.
                pending.discard(task)
                self.slots.release()
                if not task.cancelled() and (error := task.exception()) is not None:
                    failures.append(error)
                    stop.set()

            try:
                async with contextlib.aclosing(_stream_lines(input_path)) as lines:
                    async for number, raw in lines:
                        line_id = f"{batch.id}-{number}"
                        try:
                            custom_id, body = _parse_line(raw, batch.endpoint)
                        except Problem as exc:
                            if line_id not in done:
                                write_error(line_id, exc.extra.get("custom_id"), exc)
                            continue
                        first = custom_id not in seen_custom_ids
                        seen_custom_ids.add(custom_id)
                        if line_id in done:
                            continue
                        if not first:
                            write_error(line_id, custom_id, Problem(DUPLICATE_ID, f"custom_id {custom_id!r} repeats"))
                            continue
                        if stop.is_set() or not await self._take_slot(stop):
                            break
                        task = asyncio.create_task(run_line(line_id, custom_id, body))
                        pending.add(task)
                        task.add_done_callback(settle)
                        if time.monotonic() - last_count > _COUNT_EVERY_S:
                            last_count = time.monotonic()
                            await self._save(batch)
                while pending and not stop.is_set():
                    await _until(stop, set(pending))
            finally:
                for task in pending:
                    task.cancel()  # a cancel, a failure or a shutdown: abort the lines in flight
                await asyncio.gather(*pending, return_exceptions=True)
            if failures:
                raise failures[0]
        await self._save(batch)

    async def _take_slot(self, stop: asyncio.Event) -> bool:
        """One of the engine slots all jobs share; False (and no slot) if `stop` is set first."""
        if not self.slots.locked():
            await self.slots.acquire()  # free: taken without waiting
            return True
        acquire = asyncio.ensure_future(self.slots.acquire())
        try:
            await _until(stop, {acquire})
        finally:
            if not acquire.done():
                acquire.cancel()
                await asyncio.gather(acquire, return_exceptions=True)
        if acquire.cancelled():
            return False
        if stop.is_set():
            self.slots.release()
            return False
        return True

    async def _call(self, endpoint: str, body: Any, line_id: str, owner: str | None) -> dict[str, Any]:
        unavailable = 0
        while True:
            await self._ready()
            try:
                return await call_json(
                    self.service,
                    endpoint,
                    body,
                    request_id=line_id,
                    origin="batch",
                    priority=BATCH_PRIORITY,
                    client=owner,
                )
            except Problem as exc:
                if self.service.failure is not None:
                    raise _ServiceFailed from None
                # The engine went away under this line: wait for it rather than fail the line,
                # but not forever: a line that keeps losing replicas may be what breaks them.
                if exc.kind is ENGINE_UNAVAILABLE and unavailable < ENGINE_UNAVAILABLE_RETRIES:
                    unavailable += 1
                    await asyncio.sleep((exc.retry_after_s or 1) * unavailable)
                elif exc.kind is not NOT_READY:
                    raise

    async def _ready(self) -> None:
        # After a restart, jobs resume before the engine has finished loading; while draining
        # they wait for the shutdown that stops them.
        while not self.service.ready:
            if self.service.failure is not None:
                raise _ServiceFailed
            await asyncio.sleep(0.5)

    async def _finalize(self, batch: Batch, status: str) -> None:
        """Publish the journals as downloadable files, then record the final status."""
        folder = self.store.batch_dir(batch.id)
        for kind in ("output", "errors"):
            attr = "output_file_id" if kind == "output" else "error_file_id"
            file_id = f"file-{batch.id}-{kind}"
            journal, target = folder / f"{kind}.jsonl", self.store.file_path(file_id)
            # Each step is safe to repeat: a crash in between resumes here as "finalizing".
            if journal.exists():
                await asyncio.to_thread(replace_durably, journal, target)
            lines = len(await asyncio.to_thread(recover, target))
            if lines == 0:
                continue
            if await asyncio.to_thread(self.store.get_file, file_id) is None:
                await asyncio.to_thread(
                    self.store.add_file,
                    file_id,
                    "batch_output",
                    f"{batch.id}_{kind}.jsonl",
                    target.stat().st_size,
                    lines,
                    batch.owner,
                )
            setattr(batch, attr, file_id)
        await self._set_status(batch, status)
        log.info(
            "batch finished",
            extra={"batch": batch.id, "status": status, "completed": batch.completed, "failed": batch.failed},
        )
