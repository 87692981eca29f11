"""Append-only JSONL files that survive `kill -9`: the output and error files of batch work.

Each record is one `write(2)` of one complete line on an O_APPEND descriptor, so a killed
process leaves every finished line in the file (the page cache outlives the process) and
at most one torn line at the end, never a line half-written in the middle. Reopening
cuts that torn tail and returns the complete records, from which callers skip what is
already done: nothing lost, nothing written twice.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class JournalError(RuntimeError):
    """The file holds something this program did not write (not a torn last line)."""


class Journal:
    def __init__(self, path: Path, *, fsync_every_s: float = 1.0):
        self.path = Path(path)
        self.fsync_every_s = fsync_every_s
        self._fd: int | None = None
        self._last_sync = time.monotonic()
        self.appended = 0

    def open(self) -> list[dict[str, Any]]:
        """Open for appending (creating the file) and return the complete records already in it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        records = recover(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return records

    def append(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise RuntimeError("journal is not open")
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        written = os.write(self._fd, data)
        if written != len(data):  # only on a full disk; a short line would read as torn
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        self.appended += 1
        # The page cache already survives a killed process; fsync bounds what a power
        # loss could take, without paying a disk flush per line.
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_every_s:
            os.fsync(self._fd)
            self._last_sync = now

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

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
