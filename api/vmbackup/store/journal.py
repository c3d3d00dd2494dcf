"""The store's journal: every committed change, appended to a segment file with one fdatasync.

A segment is `<data dir>/journal/<n>`, one line per transaction: `<crc32 as 8 hex digits> <json>`, the json
being `{"c": {file: {table: {doc id: document, or null when removed}}}}` with whole documents, so that
replaying a segment again is harmless. A line without its newline or whose checksum does not match is a
write cut by a crash, never acknowledged: reading stops there. Segments are dropped once a checkpoint has
written (and fsynced) every file their changes touched.
"""

from __future__ import annotations

import json
import os
import re
import threading
import zlib

FILE_MODE, DIR_MODE = 0o600, 0o700
SEGMENT_RE = re.compile(r"[0-9]{16}\Z")


def fsync_folder(path: str) -> None:
    """Make the renames and unlinks in a folder durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode(changes: dict) -> bytes:
    body = json.dumps({"c": changes}, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode(data: bytes) -> tuple[list[dict], int]:
    """The whole, unbroken lines at the start of `data` (each one's changes) and how many bytes they take."""
    found, used = [], 0
    while True:
        end = data.find(b"\n", used)
        if end < 0:
            return found, used
        line = data[used:end]
        crc, _, body = line.partition(b" ")
        try:
            if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
                return found, used
            changes = json.loads(body)["c"]
        except (ValueError, KeyError, TypeError):
            return found, used
        if not isinstance(changes, dict):
            return found, used
        found.append(changes)
        used = end + 1


class Journal:
    """The segment files of one data dir, and this process's open ones (for appending and syncing)."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, mode=DIR_MODE, exist_ok=True)
        self._fds: dict[int, int] = {}      # segment -> fd open for appending
        self._synced: dict[int, int] = {}   # segment -> bytes known to be on disk
        self._fd_lock = threading.Lock()    # the fd table (held briefly: appends wait on nothing else)
        self._sync_lock = threading.Lock()  # one fdatasync at a time; closing an fd waits for it

    def path(self, segment: int) -> str:
        return os.path.join(self.folder, "%016d" % segment)

    def segments(self) -> list[int]:
        """The segments present, oldest first."""
        return sorted(int(name) for name in os.listdir(self.folder) if SEGMENT_RE.match(name))

    def append(self, segment: int, changes: dict) -> int:
        """Write one transaction's line (not yet synced; the caller holds the store's lock); its end offset."""
        with self._fd_lock:
            fd = self._fds.get(segment)
            if fd is None:
                fd = self._fds[segment] = os.open(self.path(segment),
                                                  os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        line = encode(changes)
        written = os.write(fd, line)
        if written != len(line):  # a short write (the disk is full): cut it off, so the next line starts clean
            size = os.fstat(fd).st_size
            os.ftruncate(fd, size - written)
            raise OSError("the journal could not be written (disk full?): %d of %d bytes" % (written, len(line)))
        return os.fstat(fd).st_size

    def make_durable(self, segment: int, end: int) -> None:
        """Make the segment durable up to `end`; one fdatasync serves every line written before it (group
        commit). A segment no longer open was checkpointed: its changes are in fsynced files."""
        with self._sync_lock:
            with self._fd_lock:
                fd = self._fds.get(segment)
            if fd is None or self._synced.get(segment, 0) >= end:
                return
            size = os.fstat(fd).st_size
            os.fdatasync(fd)
            self._synced[segment] = max(size, self._synced.get(segment, 0))

    def read(self, segment: int, offset: int = 0, repair: bool = False) -> tuple[list[dict], int]:
        """The transactions of a segment from `offset`, and the offset after them. With `repair` (at open,
        under the store's lock), a torn tail left by a crash is cut off so that no line follows it."""
        try:
            with open(self.path(segment), "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return [], offset
        found, used = decode(data)
        if repair and used < len(data):
            os.truncate(self.path(segment), offset + used)
        return found, offset + used

    def forget(self, below: int) -> None:
        """Close this process's fds of segments older than `below` (a checkpoint dropped them)."""
        with self._sync_lock, self._fd_lock:
            for segment in [s for s in self._fds if s < below]:
                os.close(self._fds.pop(segment))
                self._synced.pop(segment, None)

    def remove(self, segments: list[int]) -> None:
        """Delete checkpointed segments, durably (a segment that came back after a crash would be replayed
        over files that are newer than it)."""
        self.forget(max(segments) + 1 if segments else 0)
        for segment in segments:
            try:
                os.unlink(self.path(segment))
            except FileNotFoundError:
                pass
        fsync_folder(self.folder)
