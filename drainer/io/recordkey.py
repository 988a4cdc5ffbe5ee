"""The key drainer signs its records on the NICs with, and the drain counter kept beside it.

Both live outside the state directory (``[drain] record_key``; by default ``<state_dir>-record/``,
e.g. ``/var/lib/drainer-record/`` beside ``/var/lib/drainer``): losing the state keeps them, so a
genuine record on a NIC is still restored. Losing them (a reimaged OS disk) makes the records
signed with the old key unverifiable: reported, never acted on (``drainer.act.records``).

- ``record.key``: 32 random bytes (hex), made at the first drain with ``O_EXCL`` and mode 0600. Read
  the way OpenSSH reads a private key: every directory from ``/`` down is owned by root (or the
  user drainer runs as) and not writable by others (``drainer.io.trust``); the key itself is a
  regular file, never a symlink, owned likewise and neither readable nor writable by group or others
  (whoever reads it can forge records).
- ``record.drain``: ``{"drain": N, "open": true|false, "since": "<UTC time>"}``: the number of the
  latest drain, whether it is still open, and when it began. A drain opens N+1 before its first
  NIC write; a complete restore closes it. Only a record of the open drain is verified: the record
  of a drain that ended, written back later (a replay), is refused.

Every write is whole or absent (a temporary ``O_EXCL`` file, synced, then linked or renamed; the
directory synced after). Errors are ``RecordKeyError``, one line naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import secrets
import stat
import sys
from pathlib import Path
from typing import NamedTuple, Protocol

from drainer.base.errors import DrainerError
from drainer.io import trust
from drainer.io.safefile import UnsafeFileError, ensure_dir, write_atomic

KEY_BYTES = 32
COUNTER_FILE = "record.drain"
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class RecordKeyError(DrainerError):
    """The record key or the drain counter cannot be used (the message names the file and why)."""


class DrainCounter(NamedTuple):
    number: int = 0  # the latest drain (0: none yet)
    open: bool = False  # whether that drain is still open (not yet completely restored)
    since: str = ""  # when it began (UTC, ISO 8601, seconds)


def key_path(state_dir: str, configured: str = "") -> str:
    """The record key's path: ``configured``, else ``<state_dir>-record/record.key`` (outside the state
    dir, beside it; one per state dir)."""
    if configured:
        return configured
    return f"{posixpath.abspath(state_dir).rstrip('/')}-record/record.key"


class KeyStore(Protocol):
    """Where the record key and the drain counter are kept. Every method raises RecordKeyError."""

    path: str

    def key(self, *, create: bool) -> bytes | None:
        """The key; None when there is none and ``create`` is false."""
        ...

    def counter(self) -> DrainCounter: ...

    def open_drain(self, since: str) -> DrainCounter:
        """The open drain: the current one if open, else a new one (N+1) beginning ``since``."""
        ...

    def close_drain(self) -> None:
        """The open drain ended (a complete restore): its records are refused from now on."""
        ...


class FileKeyStore:
    """The key and the counter in their directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dir = posixpath.dirname(posixpath.abspath(path)) or "/"
        self.counter_path = posixpath.join(self.dir, COUNTER_FILE)
        self._key: bytes | None = None

    def key(self, *, create: bool) -> bytes | None:
        if self._key is None:
            data = _read_private(self.path, secret=True)
            if data is None:
                if not create:
                    return None
                data = self._create()
            self._key = _parse_key(self.path, data)
        return self._key

    def _create(self) -> bytes:
        """A new key, linked into place only once complete (a concurrent run's key wins)."""
        self._dir()
        data = secrets.token_hex(KEY_BYTES).encode() + b"\n"
        if sys.platform == "win32":  # pragma: no cover - no dir_fd there; ACLs are not modelled
            return self._create_here(data)
        name = posixpath.basename(self.path)
        temp = f".{name}.{secrets.token_hex(8)}.tmp"
        directory = os.open(self.dir, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            try:
                fd = os.open(
                    temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600, dir_fd=directory
                )
                try:
                    os.fchmod(fd, 0o600)
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                # Linked only once complete; when another run made one meanwhile, theirs is the key.
                with contextlib.suppress(FileExistsError):
                    os.link(temp, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
                os.fsync(directory)
            except OSError as exc:
                raise RecordKeyError(f"{self.path}: cannot create the record key: {exc.strerror}") from exc
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=directory)
        finally:
            os.close(directory)
        found = _read_private(self.path, secret=True)
        if found is None:  # pragma: no cover - removed between the link and the read
            raise RecordKeyError(f"{self.path}: the record key vanished while it was being created")
        return found

    def _create_here(self, data: bytes) -> bytes:  # pragma: no cover - Windows only
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        except FileExistsError:
            return Path(self.path).read_bytes()
        except OSError as exc:
            raise RecordKeyError(f"{self.path}: cannot create the record key: {exc.strerror}") from exc
        try:
            os.write(fd, data)
        except OSError as exc:
            os.close(fd)
            Path(self.path).unlink(missing_ok=True)
            raise RecordKeyError(f"{self.path}: cannot create the record key: {exc.strerror}") from exc
        os.close(fd)
        return data

    def _dir(self) -> None:
        try:
            ensure_dir(self.dir, 0o700)
        except UnsafeFileError as exc:
            raise RecordKeyError(f"{self.dir}: record key dir: {exc}") from exc
        except OSError as exc:
            raise RecordKeyError(f"{self.dir}: cannot create the record key dir: {exc.strerror}") from exc

    def counter(self) -> DrainCounter:
        data = _read_private(self.counter_path, secret=False)
        if data is None:
            return DrainCounter()
        try:
            raw = json.loads(data)
            found = DrainCounter(int(raw["drain"]), bool(raw["open"]), str(raw.get("since") or ""))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise RecordKeyError(f"{self.counter_path}: unreadable drain counter") from exc
        if found.number < 0:
            raise RecordKeyError(f"{self.counter_path}: unreadable drain counter")
        return found

    def open_drain(self, since: str) -> DrainCounter:
        current = self.counter()
        if current.open:
            return current
        opened = DrainCounter(current.number + 1, True, since)
        self._write(opened)
        return opened

    def close_drain(self) -> None:
        current = self.counter()
        if current.open:
            self._write(current._replace(open=False))

    def _write(self, counter: DrainCounter) -> None:
        self._dir()
        text = json.dumps({"drain": counter.number, "open": counter.open, "since": counter.since})
        try:
            write_atomic(self.counter_path, (text + "\n").encode(), 0o600)
            if sys.platform != "win32":  # a directory cannot be opened there
                directory = os.open(self.dir, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
                try:
                    os.fsync(directory)  # the rename itself survives a power loss
                finally:
                    os.close(directory)
        except OSError as exc:
            raise RecordKeyError(
                f"{self.counter_path}: cannot write the drain counter: {exc.strerror}"
            ) from exc


class MemoryKeyStore:
    """A key and a counter that live as long as the process (a single action under test), or that
    start from a real store's and are never written back (a dry run: ``start``)."""

    def __init__(self, start: KeyStore | None = None) -> None:
        self.path = start.path if start is not None else "(memory)"
        self._start = start
        self._key: bytes | None = None
        self._counter: DrainCounter | None = None

    def key(self, *, create: bool) -> bytes | None:
        if self._key is None and self._start is not None:
            self._key = self._start.key(create=False)
        if self._key is None and create:
            self._key = secrets.token_bytes(KEY_BYTES)
        return self._key

    def counter(self) -> DrainCounter:
        if self._counter is None:
            self._counter = self._start.counter() if self._start is not None else DrainCounter()
        return self._counter

    def open_drain(self, since: str) -> DrainCounter:
        current = self.counter()
        if not current.open:
            self._counter = DrainCounter(current.number + 1, True, since)
        return self.counter()

    def close_drain(self) -> None:
        self._counter = self.counter()._replace(open=False)


def _read_private(path: str, *, secret: bool) -> bytes | None:
    """The file's contents (None when there is none), checked like OpenSSH checks its files: never
    a symlink; every directory above and the file itself owned by root or drainer's user and not
    writable by others; a ``secret`` not readable by them either. Raises RecordKeyError."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RecordKeyError(f"{path}: cannot stat: {exc.strerror}") from exc
    if stat.S_ISLNK(info.st_mode):
        raise RecordKeyError(
            f"{path} is a symlink; drainer does not read or write its record key through one"
        )
    try:
        fd, checked = trust.open_file(path)
    except trust.TrustError as exc:
        raise RecordKeyError(f"refused: {exc}") from exc
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if secret and mode & 0o077 and sys.platform != "win32":  # Windows: ACLs are not modelled
            raise RecordKeyError(
                f"{checked.real}: readable or writable by group or others (mode {mode:04o}): whoever reads "
                "it can forge drainer's records; make it 0600 (or remove it: the records signed with it "
                "become unverifiable)"
            )
        try:
            return os.read(fd, 4096)
        except OSError as exc:
            raise RecordKeyError(f"{checked.real}: cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _parse_key(path: str, data: bytes) -> bytes:
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecordKeyError(f"{path}: not a record key (64 hex digits)") from exc
    if len(key) != KEY_BYTES:
        raise RecordKeyError(f"{path}: not a record key (64 hex digits)")
    return key
