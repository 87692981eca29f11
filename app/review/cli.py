"""`medlora review export`: a review queue's reviewed notes as the JSONL `medlora train` and
`medlora eval` read, from a running service (`--url`, the key in MEDLORA_API_KEY: the key's
own reviews only) or from the review store on this machine (MEDLORA_REVIEW_DIR; `--owner`
names the key whose reviews to take, none for a service without keys).

Every record is read back with the task's gold reader before the file is written: a file this
command writes is one `train` and `eval` take, or it is not written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import quote

import httpx

from app.api.client import HTTP_TIMEOUT, auth_headers
from app.review.records import gold_record
from app.review.store import ReviewStore
from app.settings import Settings
from app.tasks.manifests import ManifestError, load_tasks
from app.tasks.types.base import BadRecord, Task


class ExportError(Exception):
    pass


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="review_command", required=True)
    export = sub.add_parser("export", help="Write a queue's reviewed notes as training and evaluation JSONL.")
    export.add_argument("--queue", required=True, help="A review queue: notes-<task> or a batch id.")
    export.add_argument("--out", required=True, type=Path, help="The JSONL file to write.")
    export.add_argument("--url", help="A running medlora service (its key in MEDLORA_API_KEY).")
    export.add_argument("--owner", help="Without --url: the key name whose reviews to export (default: no key).")


def _from_service(url: str, queue: str) -> list[str]:
    response = httpx.get(
        f"{url.rstrip('/')}/v1/reviews/queues/{quote(queue, safe='')}/export",
        headers=auth_headers(),
        timeout=HTTP_TIMEOUT,
    )
    if response.status_code != 200:
        raise ExportError(f"{url} answered {response.status_code}: {response.text[:300]}")
    return [line for line in response.content.decode("utf-8").splitlines() if line.strip()]


def _from_store(settings: Settings, tasks: dict[str, Task], queue: str, owner: str | None) -> list[str]:
    store = ReviewStore(settings.review_dir)
    try:
        reviews = [r for r in store.queue(owner, queue) if r.status == "reviewed"]
    finally:
        store.close()
    lines = []
    for review in reviews:
        if review.task not in tasks:
            raise ExportError(f"review {review.id}: task {review.task!r} is not in {settings.tasks_dir}")
        lines.append(json.dumps(gold_record(review, tasks[review.task].kind), ensure_ascii=False))
    return lines


def _check(tasks: dict[str, Task], lines: list[str]) -> None:
    """Each record as the task's gold reader reads it (what train and eval do with the file)."""
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)
        task = tasks.get(record["review"]["task"])
        if task is None:
            continue  # a task this machine has no manifest of: the service checked it when saved
        try:
            task.kind.parse_gold(task, record)
        except BadRecord as exc:
            raise ExportError(f"record {number} ({record['id']}): {exc}") from None


def review_main(args: argparse.Namespace) -> int:
    settings = Settings()
    try:
        tasks = load_tasks(settings.tasks_dir, settings.schemas_dir)
        if args.url:
            lines = _from_service(args.url, args.queue)
        else:
            lines = _from_store(settings, tasks, args.queue, args.owner)
        _check(tasks, lines)
    except (ExportError, ManifestError, httpx.HTTPError, OSError) as exc:
        print(f"medlora review export: {exc}", file=sys.stderr)
        return 2
    args.out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(json.dumps({"queue": args.queue, "records": len(lines), "out": str(args.out)}))
    return 0
