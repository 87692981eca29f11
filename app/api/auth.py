"""API keys: stored as SHA-256 digests, presented as `Authorization: Bearer <key>`.

Key files hold `<name> <sha256 hex>` lines, so a leaked file (a Kubernetes Secret, a
backup) does not leak usable keys. Files are re-read when they change, so rotating a
mounted Secret takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.problems import FORBIDDEN, UNAUTHORIZED, Problem

log = logging.getLogger("medlora.auth")

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_RECHECK_S = 5.0  # how often a key file's mtime is looked at


class KeyFileError(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_file(text: str, source: str) -> dict[str, str]:
    """digest -> key name; a malformed line is an error naming its line number (never its content)."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not _DIGEST.match(parts[1]):
            raise KeyFileError(f"{source}:{number}: expected '<name> <sha256 hex, 64 lowercase characters>'")
        name, digest = parts
        if digest in keys:
            raise KeyFileError(f"{source}:{number}: the same key digest appears twice")
        keys[digest] = name
    return keys


@dataclass
class KeyFile:
    path: Path
    _keys: dict[str, str] = field(default_factory=dict)
    _version: tuple[int, int, int] | None = None  # (mtime_ns, size, inode): a change means re-read
    _checked: float = 0.0

    def __post_init__(self) -> None:
        self._reload(strict=True)

    def _reload(self, *, strict: bool) -> None:
        self._checked = time.monotonic()
        try:
            info = os.stat(self.path)
        except FileNotFoundError as exc:
            if strict:
                raise KeyFileError(f"cannot use key file {self.path}: it does not exist") from exc
            if self._keys:
                # Deleting the file (or the Secret) revokes its keys: fail closed.
                log.error("key file removed; its keys are revoked", extra={"path": str(self.path)})
            self._keys, self._version = {}, None
            return
        except OSError as exc:
            if strict:
                raise KeyFileError(f"cannot use key file {self.path}: {exc}") from exc
            self._revoke("key file unreadable; its keys are revoked until it can be read")
            return
        version = (info.st_mtime_ns, info.st_size, info.st_ino)
        if version == self._version:
            return
        try:
            self._keys = parse_key_file(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, ValueError) as exc:  # ValueError: KeyFileError, or not UTF-8
            if strict:
                raise KeyFileError(f"cannot use key file {self.path}: {exc}") from exc
            # Fail closed: the update may be the revocation of a leaked key, and keeping the old
            # keys would keep that one working. Nobody gets in on this file until it is fixed.
            self._revoke("key file update is malformed; its keys are revoked until it is fixed")
            self._version = version
            return
        self._version = version
        log.info("key file loaded", extra={"path": str(self.path), "keys": len(self._keys)})

    def _revoke(self, event: str) -> None:
        if self._keys:
            log.error(event, extra={"path": str(self.path), "keys": len(self._keys)})
        self._keys = {}

    def name_of(self, digest: str) -> str | None:
        if time.monotonic() - self._checked > _RECHECK_S:
            self._reload(strict=False)
        return self._keys.get(digest)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a key's name (None when authentication is off) and whether it is an admin key."""

    name: str | None
    admin: bool

    def may_see(self, owner: str | None) -> bool:
        """Batch files and jobs belong to the key that created them; admins (and open mode) see all."""
        return self.name is None or self.admin or owner == self.name


# No key file configured (local development): anyone may do anything, administration included.
OPEN = Caller(None, True)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Authenticator:
    """Who may call what. Neither file set: open (local development)."""

    def __init__(self, api_keys: Path | None, admin_keys: Path | None):
        self.api_keys = KeyFile(api_keys) if api_keys else None
        self.admin_keys = KeyFile(admin_keys) if admin_keys else None

    @property
    def enabled(self) -> bool:
        return self.api_keys is not None or self.admin_keys is not None

    def _identify(self, authorization: str | None) -> tuple[str | None, bool]:
        """(key name, is admin) for a presented header; (None, False) if absent or unknown."""
        token = _bearer(authorization)
        if token is None:
            return None, False
        digest = hash_key(token)
        if self.admin_keys is not None and (name := self.admin_keys.name_of(digest)) is not None:
            return name, True
        if self.api_keys is not None and (name := self.api_keys.name_of(digest)) is not None:
            return name, False
        return None, False

    def client(self, authorization: str | None) -> Caller:
        """The caller of a /v1 endpoint (OPEN when no key file is set).

        Any key file turns authentication on for every /v1 endpoint: with admin keys only,
        only admins may call anything (clinical text never flows unauthenticated by mistake)."""
        if not self.enabled:
            return OPEN
        name, admin = self._identify(authorization)
        if name is None:
            raise _unauthorized()
        return Caller(name, admin)


def _unauthorized() -> Problem:
    return Problem(
        UNAUTHORIZED,
        "send a valid key as 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": 'Bearer realm="medlora"'},
    )


# Declared on the /v1 routes so that the OpenAPI document says how to authenticate. The key
# itself is checked once per request, by the gateway's middleware, before any body is read.
BEARER = HTTPBearer(auto_error=False, description="API key (admin key for adapter administration)")


def current_caller(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> Caller:
    """Who sent the request, as the middleware authenticated it. A route the middleware did not
    take for /v1 (a path it did not recognise) authenticates here: it never falls open."""
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:
        authenticator: Authenticator = request.app.state.auth
        caller = request.state.caller = authenticator.client(request.headers.get("authorization"))
    return caller


def admin_caller(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    """Adapter administration: with authentication on, only an admin key may."""
    if not caller.admin:
        raise Problem(FORBIDDEN, "adapter administration needs an admin key")
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
AdminDep = Annotated[Caller, Depends(admin_caller)]
