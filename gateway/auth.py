"""Bearer tokens with roles on the gateway (GATEWAY_TOKENS_FILE).

The file holds one ``ROLE:TOKEN`` per line (blank lines and ``#`` comments
are skipped). Roles nest: ``read`` < ``write`` < ``admin``. Every
GatewayService method has exactly one role in ``imagesearch.rpcs``; a method
without one is refused to everybody (and a test fails for it). Health and
reflection never ask for a token. Tokens are compared in constant time and
never logged; the file is read again on SIGHUP and when it changes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from pathlib import Path

import grpc

from imagesearch import errors, logs
from imagesearch.filewatch import FileWatch
from imagesearch.rpcs import Role, rpc_of
from imagesearch.settings import SettingsError

log = logging.getLogger(__name__)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_tokens(text: str, source: str) -> list[tuple[bytes, Role]]:
    """(sha256 of token, role) per line of a tokens file. A bad line is named
    by its number, never by its content (it may hold a secret)."""
    entries: list[tuple[bytes, Role]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        role_name, sep, token = line.partition(":")
        try:
            role = Role[role_name.strip().upper()]
        except KeyError:
            role = None
        if not sep or role is None or not token.strip():
            raise SettingsError(
                f"{source} line {number}: expected ROLE:TOKEN with ROLE read, write or admin"
            )
        if len(token.strip()) < 16:
            raise SettingsError(f"{source} line {number}: a token must have 16 characters or more")
        entries.append((_digest(token.strip()), role))
    return entries


class Tokens:
    """The tokens file, loaded at start and again by ``reload``: on SIGHUP,
    and by the first call after the file changed (a Kubernetes Secret update,
    an edit), looked at once a second at most."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._watch = FileWatch([path])
        self._entries = self._load()
        self._lock = threading.Lock()

    def _reload_if_changed(self) -> None:
        key = self._watch.changed()
        if key is not None:
            self._watch.accept(key)  # a broken file is reported once, not at every call
            self.reload()

    def _load(self) -> list[tuple[bytes, Role]]:
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read GATEWAY_TOKENS_FILE {self.path}: {exc}") from None
        entries = parse_tokens(text, "GATEWAY_TOKENS_FILE")
        if not entries:
            raise SettingsError(f"GATEWAY_TOKENS_FILE {self.path} holds no tokens")
        return entries

    def reload(self) -> None:
        """Reads the file again; a file that cannot be used keeps the old tokens."""
        try:
            entries = self._load()
        except SettingsError as exc:
            logs.event(log, "tokens.reload_failed", level=logging.ERROR, error=str(exc))
            return
        with self._lock:
            self._entries = entries
        logs.event(log, "tokens.reloaded", tokens=len(entries))

    def role_of(self, token: str) -> Role | None:
        """The role of ``token``, comparing against every entry (no early exit)."""
        self._reload_if_changed()
        digest = _digest(token)
        with self._lock:
            entries = self._entries
        found: Role | None = None
        for known, role in entries:
            if hmac.compare_digest(known, digest) and found is None:
                found = role
        return found

    def __len__(self) -> int:
        return len(self._entries)

    def caller_role(self, context: grpc.ServicerContext) -> Role:
        """The role of the call's bearer token; UNAUTHENTICATED without a
        known one."""
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                header = value
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                "this gateway needs a token: send 'authorization: Bearer TOKEN' "
                "(the CLI and client read IMGSEARCH_TOKEN)",
            )
        role = self.role_of(token.strip())
        if role is None:
            raise errors.ServiceError(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        return role

    def authorize(self, method: str, context: grpc.ServicerContext) -> None:
        """The gateway's ``Authorize`` hook: UNAUTHENTICATED without a known
        token, PERMISSION_DENIED when its role is too low."""
        needed = required_role(method)
        role = self.caller_role(context)
        name = method.rsplit("/", 1)[-1]
        if needed is None:
            raise errors.ServiceError(
                grpc.StatusCode.PERMISSION_DENIED, f"{name} has no role assigned: refused"
            )
        refuse_below(needed, role, name)


def refuse_below(needed: Role, role: Role, name: str) -> None:
    """PERMISSION_DENIED when ``role`` is below ``needed``."""
    if role < needed:
        raise errors.ServiceError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{name} needs the {needed.name.lower()} role; this token has {role.name.lower()}",
        )


def required_role(method: str) -> Role | None:
    """The role a full method name needs; None for a method with no role
    (refused to everybody)."""
    rpc = rpc_of(method)
    return None if rpc is None else rpc.role
