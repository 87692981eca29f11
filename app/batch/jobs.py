"""Running OpenAI-style batch jobs inside the service, resumable across restarts.

Each input line has a fixed request id, `<batch id>-<line number>`, written into its
output or error line. Both files are journals (`journal.Journal`), so after a crash or
restart a job re-reads them and runs only the lines in neither: none lost, none twice.
Batch lines share a bounded number of engine slots across all jobs and are submitted
at a lower engine priority than interactive requests, which therefore go first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.batch.journal import Journal, recover
from app.batch.store import ACTIVE_STATUSES, Batch, BatchStore
from app.problems import DUPLICATE_ID, ENGINE_UNAVAILABLE, INTERNAL, INVALID_LINE, NOT_READY, Problem, unexpected
from app.tasks.calls import BATCH_PRIORITY, call_json, endpoints
from app.tasks.service import Service

# Times one line is retried after the engine lost it before it goes to the error file.
ENGINE_UNAVAILABLE_RETRIES = 3
log = logging.getLogger("medlora.batch")


def batch_endpoints() -> dict[str, str]:
    """Public endpoint paths a batch can target -> task endpoint names (every task type's)."""
    return {f"/v1/{endpoint}": endpoint for endpoint in endpoints()}


COMPLETION_WINDOWS = {"24h": 24 * 3600}
_COUNT_EVERY_S = 1.0


def input_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for every non-blank line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


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
    if obj.get("method") != "POST":
        raise Problem(INVALID_LINE, "method must be POST", {"custom_id": custom_id})
    if obj.get("url") != endpoint:
        raise Problem(INVALID_LINE, f"url must be the batch's endpoint {endpoint}", {"custom_id": custom_id})
    if not isinstance(obj.get("body"), dict):
        raise Problem(INVALID_LINE, "body must be a JSON object", {"custom_id": custom_id})
    return custom_id, obj["body"]


class BatchRunner:
    def __init__(self, service: Service, store: BatchStore, *, concurrency: int):
        self.service = service
        self.store = store
        self.slots = asyncio.Semaphore(concurrency)
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._cancel_requested: set[str] = set()

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
        self.start(batch_id)  # no-op if it is running; otherwise it finishes as cancelled now

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
        except asyncio.CancelledError:
            await asyncio.shield(self._save(batch))  # keep the counts; status stays active
            raise
        except Exception as exc:
            log.error("batch failed", extra={"batch": batch_id, "error_type": type(exc).__name__})
            batch.errors.append({"code": "internal_error", "message": f"{type(exc).__name__}; see the logs"})
            await self._finalize(batch, "failed")
        finally:
            self._cancel_requested.discard(batch_id)

    async def _work(self, batch: Batch) -> None:
        """Run every line not yet in the output or error journal."""
        folder = self.store.batch_dir(batch.id)
        endpoint = batch_endpoints()[batch.endpoint]
        input_path = self.store.file_path(batch.input_file_id)
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
                try:
                    response = await self._call(endpoint, body, line_id, batch.owner)
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

            try:
                for number, raw in await asyncio.to_thread(lambda: list(input_lines(input_path))):
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
                    if batch.id in self._cancel_requested:
                        break
                    await self.slots.acquire()
                    task = asyncio.create_task(run_line(line_id, custom_id, body))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    # A done callback, not a finally in run_line: a task cancelled before it
                    # started never runs its body, and its slot would leak across all jobs.
                    task.add_done_callback(lambda _: self.slots.release())
                    if time.monotonic() - last_count > _COUNT_EVERY_S:
                        last_count = time.monotonic()
                        await self._save(batch)
                while pending:
                    await asyncio.wait(set(pending))
                    if batch.id in self._cancel_requested:
                        for task in pending:
                            task.cancel()
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await self._save(batch)

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
                # The engine went away under this line: wait for it rather than fail the line,
                # but not forever: a line that keeps losing replicas may be what breaks them.
                if exc.kind is ENGINE_UNAVAILABLE and unavailable < ENGINE_UNAVAILABLE_RETRIES:
                    unavailable += 1
                    await asyncio.sleep((exc.retry_after_s or 1) * unavailable)
                elif exc.kind is not NOT_READY:
                    raise

    async def _ready(self) -> None:
        # After a restart, jobs resume before the engine has finished loading.
        while not self.service.ready:
            if self.service.startup_error:
                raise Problem(INTERNAL, "engine failed to start")
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
                await asyncio.to_thread(journal.replace, target)
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
