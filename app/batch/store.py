"""Persistent state of the OpenAI-compatible batch API: SQLite for records, plain files for content.

Layout under the store's root: `store.sqlite3`, `files/<file id>.jsonl` (uploads and
finished outputs), `batches/<batch id>/{output,errors}.jsonl` (journals being written).
The database is small and touched a few times a second at most, so one connection
behind a lock, called from worker threads, is all it needs. The same lock makes a quota
check and the insert it allows one step, so concurrent uploads cannot both take the last place.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every state a batch can be in (OpenAI's names); the first four are resumed after a restart.
ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
FINAL_STATUSES = ("completed", "failed", "cancelled", "expired")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_status ON batches (status);
"""


# Named columns: stores made before `owner` existed have it last, added by ALTER TABLE.
_FILE_COLUMNS = "id, purpose, filename, bytes, lines, created_at, owner"
_SELECT_FILES = f"SELECT {_FILE_COLUMNS} FROM files"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Usage:
    """What one key (owner) keeps stored: its uploaded batch input files."""

    files: int
    bytes: int


@dataclass(frozen=True)
class StoredFile:
    id: str
    purpose: str  # "batch" (uploads), "batch_output" (outputs and error files)
    filename: str
    bytes: int
    lines: int
    created_at: int
    owner: str | None = None  # the API key name that created it (None: no authentication)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class Batch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int
    status: str = "validating"
    metadata: dict[str, str] | None = None
    owner: str | None = None  # the API key name that created it; its output files get the same
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    timestamps: dict[str, int] = field(default_factory=dict)  # in_progress_at, completed_at, ...

    def describe(self) -> dict[str, Any]:
        """The OpenAI Batch object."""
        stamps = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            **{f"{s}_at": self.timestamps.get(s) for s in stamps},
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Batch:
        return cls(**json.loads(text))


class BatchStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "batches").mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "store.sqlite3", check_same_thread=False, isolation_level=None)
        # WAL: readers (status polls) never wait for the worker's writes; synchronous=FULL
        # so that a committed status change survives a crash.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(files)")}
        if "owner" not in columns:  # a store made before files had owners
            self._db.execute("ALTER TABLE files ADD COLUMN owner TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- files ---------------------------------------------------------------------------
    def file_path(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.jsonl"

    def add_file(
        self,
        file_id: str,
        purpose: str,
        filename: str,
        size: int,
        lines: int,
        owner: str | None = None,
        *,
        check: Callable[[Usage], None] | None = None,
    ) -> StoredFile:
        """Record a file; `check` sees the owner's uploads with this one added, and may raise to refuse it."""
        record = StoredFile(file_id, purpose, filename, size, lines, int(time.time()), owner)
        with self._lock:
            if check is not None:
                used = self._upload_usage(owner)
                check(Usage(used.files + 1, used.bytes + size))
            self._db.execute(
                f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.purpose, record.filename, record.bytes, record.lines, record.created_at, owner),
            )
        return record

    def upload_usage(self, owner: str | None) -> Usage:
        with self._lock:
            return self._upload_usage(owner)

    def _upload_usage(self, owner: str | None) -> Usage:
        # `IS`, not `=`: without authentication the owner is NULL, one anonymous owner.
        files, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM files WHERE purpose = 'batch' AND owner IS ?", (owner,)
        ).fetchone()
        return Usage(int(files), int(size))

    def get_file(self, file_id: str) -> StoredFile | None:
        with self._lock:
            row = self._db.execute(_SELECT_FILES + " WHERE id = ?", (file_id,)).fetchone()
        return StoredFile(*row) if row else None

    def list_files(self, purpose: str | None = None) -> list[StoredFile]:
        with self._lock:
            if purpose:
                rows = self._db.execute(
                    _SELECT_FILES + " WHERE purpose = ? ORDER BY created_at DESC, id",
                    (purpose,),
                ).fetchall()
            else:
                rows = self._db.execute(_SELECT_FILES + " ORDER BY created_at DESC, id").fetchall()
        return [StoredFile(*row) for row in rows]

    def delete_file(self, file_id: str) -> bool:
        with self._lock:
            deleted = self._db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount
        self.file_path(file_id).unlink(missing_ok=True)
        return bool(deleted)

    def file_in_use(self, file_id: str) -> bool:
        """An upload that an unfinished batch still reads."""
        return any(b.input_file_id == file_id for b in self.batches(ACTIVE_STATUSES))

    # -- batches -------------------------------------------------------------------------
    def batch_dir(self, batch_id: str) -> Path:
        return self.root / "batches" / batch_id

    def save_batch(self, batch: Batch) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET data = excluded.data, status = excluded.status",
                (batch.id, batch.to_json(), batch.status, batch.created_at),
            )

    def add_batch(self, batch: Batch, check: Callable[[int], None]) -> None:
        """Record a new batch; `check` sees how many unfinished batches its owner has, and may raise to refuse it."""
        marks = ",".join("?" * len(ACTIVE_STATUSES))
        with self._lock:
            rows = self._db.execute(f"SELECT data FROM batches WHERE status IN ({marks})", ACTIVE_STATUSES).fetchall()
            check(sum(1 for (data,) in rows if Batch.from_json(data).owner == batch.owner))
            self._db.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?)", (batch.id, batch.to_json(), batch.status, batch.created_at)
            )

    def get_batch(self, batch_id: str) -> Batch | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return Batch.from_json(row[0]) if row else None

    def batches(self, statuses: tuple[str, ...] | None = None) -> list[Batch]:
        with self._lock:
            if statuses:
                marks = ",".join("?" * len(statuses))
                rows = self._db.execute(
                    f"SELECT data FROM batches WHERE status IN ({marks}) ORDER BY created_at, id", statuses
                ).fetchall()
            else:
                rows = self._db.execute("SELECT data FROM batches ORDER BY created_at DESC, id DESC").fetchall()
        return [Batch.from_json(row[0]) for row in rows]
