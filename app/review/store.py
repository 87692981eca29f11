"""Persistent review state: one SQLite database, one row per note under review.

A row keeps what the model answered (never changed after it is made) beside what the reviewer
decided (the task's gold fields), with a version that every save checks and raises: two tabs
on one note cannot silently overwrite each other. Rows belong to the key that made them.
Writes are few (a reviewer saves a note every few seconds), so one connection behind a lock,
called from worker threads, is enough; WAL and synchronous=FULL make a saved decision survive a
crash of the browser, the service or the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id TEXT PRIMARY KEY,
    owner TEXT,
    queue TEXT NOT NULL,
    task TEXT NOT NULL,
    source_id TEXT NOT NULL,
    min_confidence REAL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_queue ON reviews (owner, queue, min_confidence);
"""
_COLUMNS = "id, owner, queue, task, source_id, min_confidence, status, version, created_at, updated_at, seq, data"

# Called with the rows the owner holds before new ones are stored: raises to refuse them.
QuotaCheck = Callable[[int], None]


@dataclass(frozen=True)
class Review:
    id: str
    owner: str | None  # the API key name that made it (None: no authentication)
    queue: str  # "notes" (annotated one by one in the page) or the batch it was imported from
    task: str
    source_id: str  # the caller's own id of the note
    min_confidence: float | None  # the lowest confidence in the model's answer; None: it has none
    status: str  # pending | reviewed
    version: int  # raised by every save; the ETag
    created_at: int
    updated_at: int
    seq: int  # order of arrival, the queue's tie-break
    input: dict[str, str]  # the task's input fields (the note first)
    answer: dict[str, Any]  # the response item, as the API answered it
    model: dict[str, Any]  # the response's `model` object: adapter and version
    decision: dict[str, Any]  # the task's gold fields, as the reviewer left them

    @classmethod
    def _from_row(cls, row: tuple[Any, ...]) -> Review:
        *head, data = row
        return cls(*head, **json.loads(data))


@dataclass(frozen=True)
class NewReview:
    """A note to review, before it is stored."""

    id: str
    queue: str
    task: str
    source_id: str
    min_confidence: float | None
    input: dict[str, str]
    answer: dict[str, Any]
    model: dict[str, Any]
    decision: dict[str, Any]


@dataclass(frozen=True)
class QueueCount:
    queue: str
    task: str
    total: int
    reviewed: int
    created_at: int


class StaleVersion(Exception):
    """The row changed since the version the caller read."""

    def __init__(self, current: int):
        super().__init__(current)
        self.current = current


def _data(review: NewReview | Review) -> str:
    fields = {"input": review.input, "answer": review.answer, "model": review.model, "decision": review.decision}
    return json.dumps(fields, ensure_ascii=False)


class ReviewStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "reviews.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, under the lock (BEGIN IMMEDIATE: its reads see what it writes on)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _insert(self, reviews: list[NewReview], owner: str | None, check: QuotaCheck | None) -> list[Review]:
        if check is not None:
            (held,) = self._db.execute("SELECT COUNT(*) FROM reviews WHERE owner IS ?", (owner,)).fetchone()
            check(held)
        now = int(time.time())
        (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM reviews").fetchone()
        stored = [
            Review(
                **vars(r),
                owner=owner,
                status="pending",
                version=1,
                created_at=now,
                updated_at=now,
                seq=seq + i,
            )
            for i, r in enumerate(reviews, start=1)
        ]
        self._db.executemany(
            f"INSERT INTO reviews ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'pending', 1, ?, ?, ?, ?)",
            [(r.id, owner, r.queue, r.task, r.source_id, r.min_confidence, now, now, r.seq, _data(r)) for r in stored],
        )
        return stored

    def add(self, reviews: list[NewReview], owner: str | None, check: QuotaCheck | None = None) -> list[Review]:
        """Store new reviews in one transaction; `check(rows the owner already has)` may refuse first."""
        with self._transaction():
            return self._insert(reviews, owner, check)

    def open_queue(
        self, queue: str, reviews: list[NewReview], owner: str | None, check: QuotaCheck | None = None
    ) -> tuple[int, int]:
        """(added, total): the reviews as the owner's `queue`, unless the owner has that queue
        already, which is left as it is (opening a batch twice doubles nothing)."""
        with self._transaction():
            sql = "SELECT COUNT(*) FROM reviews WHERE owner IS ? AND queue = ?"
            (held,) = self._db.execute(sql, (owner, queue)).fetchone()
            if held:
                return 0, held
            self._insert(reviews, owner, check)
            return len(reviews), len(reviews)

    def get(self, review_id: str) -> Review | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM reviews WHERE id = ?", (review_id,)).fetchone()
        return None if row is None else Review._from_row(row)

    def queue(self, owner: str | None, queue: str) -> list[Review]:
        """A queue's notes, least certain first: lowest confidence first, notes without any
        confidence (nothing answered) after those with one, then in order of arrival."""
        sql = f"""SELECT {_COLUMNS} FROM reviews WHERE queue = ? AND owner IS ?
                  ORDER BY min_confidence IS NULL, min_confidence, seq"""
        with self._lock:
            rows = self._db.execute(sql, (queue, owner)).fetchall()
        return [Review._from_row(row) for row in rows]

    def queues(self, owner: str | None) -> list[QueueCount]:
        sql = """SELECT queue, MIN(task), COUNT(*), SUM(status = 'reviewed'), MIN(created_at) FROM reviews
                 WHERE owner IS ? GROUP BY queue ORDER BY MIN(seq)"""
        with self._lock:
            rows = self._db.execute(sql, (owner,)).fetchall()
        return [QueueCount(*row) for row in rows]

    def save(self, review_id: str, expected_version: int, decision: dict[str, Any], status: str) -> Review:
        """The reviewer's decision, if the row is still at `expected_version`; StaleVersion if not."""
        with self._transaction():
            row = self._db.execute(f"SELECT {_COLUMNS} FROM reviews WHERE id = ?", (review_id,)).fetchone()
            if row is None:
                raise KeyError(review_id)
            current = Review._from_row(row)
            if current.version != expected_version:
                raise StaleVersion(current.version)
            saved = dataclasses.replace(
                current, decision=decision, status=status, version=current.version + 1, updated_at=int(time.time())
            )
            self._db.execute(
                "UPDATE reviews SET data = ?, status = ?, version = ?, updated_at = ? WHERE id = ?",
                (_data(saved), status, saved.version, saved.updated_at, review_id),
            )
        return saved

    def delete(self, review_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM reviews WHERE id = ?", (review_id,))
