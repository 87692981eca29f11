"""Append-only JSONL files that survive `kill -9` and a full disk: the output and error files of batch work.

Each record is one `write(2)` of one complete line on an O_APPEND descriptor, so a killed
process leaves every finished line in the file (the page cache outlives the process) and
at most one torn line at the end, never a line half-written in the middle. A write that
fails (a full disk: a short write or an OSError) is undone by cutting the file back to
its length before it, so the journal can go on once there is room again; if even that
fails, the journal refuses further lines until it is reopened. Reopening cuts a torn tail
and returns the complete records, from which callers skip what is already done: nothing
lost, nothing written twice.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class JournalError(RuntimeError):
    """The file holds something this program did not write (not a torn last line)."""


def encode_line(record: dict[str, Any]) -> bytes:
    """One JSON line, UTF-8. A record holding a string that UTF-8 cannot encode (a lone
    surrogate, from a `\\ud800` escape or a surrogateescape'd byte) is written with ASCII
    escapes instead: still one valid JSON line, which reads back as the same record."""
    try:
        return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


def fsync_dir(folder: Path) -> None:
    """Make the entries of a folder (a rename into it) durable: fsync on a file covers its data only."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(source: Path, target: Path) -> None:
    """`os.replace`, then the target's folder synced so that the rename survives a power loss."""
    os.replace(source, target)
    fsync_dir(target.parent)


class Journal:
    def __init__(self, path: Path, *, fsync_every_s: float = 1.0):
        self.path = Path(path)
        self.fsync_every_s = fsync_every_s
        self._fd: int | None = None
        self._torn = False  # a failed write could not be undone: its bytes end the file
        self._last_sync = time.monotonic()
        self.appended = 0

    def open(self) -> list[dict[str, Any]]:
        """Open for appending (creating the file) and return the complete records already in it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        records = recover(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._torn = False
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write one line, all or nothing: on failure (OSError) the file is as it was."""
        if self._fd is None:
            raise RuntimeError("journal is not open")
        if self._torn:
            raise OSError(f"{self.path}: an earlier failed write could not be undone; reopen the journal")
        data = encode_line(record)
        length = os.lseek(self._fd, 0, os.SEEK_END)  # the only writer: where this line starts
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a full disk; a short line would read as torn
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        except OSError:
            self._undo(length)
            raise
        self.appended += 1
        # The page cache already survives a killed process; fsync bounds what a power
        # loss could take, without paying a disk flush per line.
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_every_s:
            os.fsync(self._fd)
            self._last_sync = now

    def _undo(self, length: int) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, length)
        except OSError:
            # A line appended now would bury the torn bytes mid-file, where reopening cannot
            # tell them from foreign content; at the end, reopening cuts them.
            self._torn = True

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recover(path: Path) -> list[dict[str, Any]]:
    """Complete records of a journal; cuts a torn last line (left by a killed writer)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(complete)
    records: list[dict[str, Any]] = []
    for number, line in enumerate(data[:complete].splitlines(), start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise JournalError(f"{path}:{number}: not a JSON line written by medlora ({exc})") from None
        if not isinstance(record, dict):
            raise JournalError(f"{path}:{number}: not a JSON object")
        records.append(record)
    return records
