"""The storage engine under the store: a data dir of TinyDB files shared safely by every process that opens
it (the service, a second service, `vmbackup user ...`). It knows files, transactions, the journal and
checkpoints; which records live in which file is the repository's (`store.py`).

Each file of the data dir (`main.json`, `vms/<uuid>.json`, `tasks/<day>.json`) is held in memory by a
`PartitionStorage`, TinyDB's `Storage` extension point: TinyDB reads and writes it through the storage, and a
write hands its changes to the data dir's transaction instead of writing the file.

`DataDir.lock` is one transaction: a thread lock, and across processes an exclusive `flock` on
`<data dir>/store.lock`. A transaction's changes are committed as one line of the journal (`journal.py`)
with one fdatasync, after the locks are released (so one sync serves every transaction written before
it, and nobody waits for another's disk); the caller returns once its line is on disk. A checkpoint
(`DataDir.checkpoint`, every few seconds in the service, and at open) writes the files the journal touched,
each atomically (temporary file, fsync, rename), and then drops those journal segments. A crash leaves
whole files and a journal whose whole lines are replayed over them at the next open.

The shared memory file `<data dir>/generation` holds a generation counter bumped by every commit, the
journal segment written to (head) and the oldest one not yet checkpointed (tail). On entering the lock a
data dir whose generation is behind reads the journal lines other processes wrote, and one whose tail is
behind (a checkpoint ended) re-reads the files it changed. So a read-modify-write never works on stale
data and no record written by another process is lost. Files are private: the data dir 0700, files 0600.

Only TinyDB's public API is used (tested with TinyDB 4.9.0; pyproject.toml asks for >=4.9,<5).
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import re
import struct
import threading
import time
from collections.abc import Callable

from tinydb import TinyDB
from tinydb.storages import Storage

from vmbackup.store.journal import Journal, fsync_folder

log = logging.getLogger("vmbackup.store")
FILE_MODE, DIR_MODE = 0o600, 0o700
# A file changed within this many seconds is re-read on a sync even if its stat looks the same: file
# times are only as fine as the kernel's clock tick, so two writes in one tick can share an mtime.
RECENT = 2.0
# Which file of the data dir a journal line may name: one of ours, never a path out of its folder.
PARTITION_RE = re.compile(r"(main|vms/[^/\x00]{1,200}|tasks/[0-9]{4}-[0-9]{2}-[0-9]{2})\.json\Z")


def _signature(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class PartitionStorage(Storage):
    """TinyDB storage that keeps one file's data in memory: a write hands its changes to the data dir (for the
    journal) instead of writing the file; `flush` writes the file atomically at a checkpoint."""

    def __init__(self, path: str, **_kwargs):
        super().__init__()
        self.path = path
        self.name = ""  # the file's path in the data dir: how the journal names it
        self._data: dict | None = None
        self._loaded = False
        self.signature: tuple | None = None
        self.on_write: Callable[[PartitionStorage, dict | None, dict], None] | None = None

    def load(self) -> None:
        """(Re-)read the file as it is on disk now."""
        self.signature = _signature(self.path)
        if self.signature is None:
            self._data = None
        else:
            with open(self.path) as handle:
                self._data = json.load(handle)
        self._loaded = True

    def stale(self, now: float) -> bool:
        """Whether another process may have written the file since it was read."""
        signature = _signature(self.path)
        return signature != self.signature or (signature is not None and now - signature[1] / 1e9 < RECENT)

    def peek(self) -> dict:
        """The cached data itself, for readers that copy what they return (no copy here). It is never
        changed in place: every write replaces it, so a reference to it is a snapshot."""
        if not self._loaded:
            self.load()
        return self._data or {}

    def read(self) -> dict | None:
        data = self.peek()
        if self._data is None:
            return None
        # TinyDB edits the documents it reads (top-level fields only) before writing them back: copies,
        # two levels deep, keep those edits out of the cache (and out of snapshots being flushed).
        return {table: {doc_id: dict(doc) for doc_id, doc in docs.items()} for table, docs in data.items()}

    def write(self, data: dict) -> None:
        old = self._data
        self.replace(data)
        if self.on_write is not None:
            self.on_write(self, old, data)

    def replace(self, data: dict | None) -> None:
        self._data = data
        self._loaded = True

    def flush(self, data: dict) -> None:
        """Write `data` as the file: a temporary file, fsync, rename (a crash leaves the old or the new)."""
        tmp = "%s.tmp-%d-%d" % (self.path, os.getpid(), threading.get_ident())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, separators=(",", ":")))  # dumps: the C encoder
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self.signature = _signature(self.path)

    def close(self) -> None:
        pass


def database(storage: PartitionStorage) -> TinyDB:
    """A new TinyDB over a storage that holds a file's data already. TinyDB makes its storage by calling what
    it is given as `storage` (a `Storage` class, or a `Middleware` instance) with the constructor's arguments:
    this hands it the existing one."""
    return TinyDB(storage=lambda: storage)


def changes(old: dict | None, new: dict) -> dict:
    """The documents `new` adds, changes or removes against `old`, as a journal line holds them."""
    old = old or {}
    found: dict = {}
    for table in set(old) | set(new):
        before, after = old.get(table, {}), new.get(table, {})
        table_changes = {doc_id: doc for doc_id, doc in after.items() if before.get(doc_id) != doc}
        table_changes.update({doc_id: None for doc_id in before if doc_id not in after})
        if table_changes:
            found[table] = table_changes
    return found


def applied(data: dict | None, table_changes: dict) -> dict:
    """`data` with a journal line's changes of one file (a new object: data is never changed in place)."""
    result = dict(data or {})
    for table, docs in table_changes.items():
        if not isinstance(docs, dict):
            continue
        current = dict(result.get(table, {}))
        for doc_id, doc in docs.items():
            if doc is None:
                current.pop(doc_id, None)
            elif isinstance(doc, dict):
                current[doc_id] = doc
        result[table] = current
    return result


def is_data_dir(path: str) -> bool:
    """Whether a store was ever opened at `path` (opening one makes the data dir)."""
    return os.path.isfile(os.path.join(path, "generation"))


def make_private(data_dir: str) -> None:
    """The data dir 0700 and every file in it 0600 (they hold password, token and key hashes)."""
    os.makedirs(data_dir, mode=DIR_MODE, exist_ok=True)
    os.chmod(data_dir, DIR_MODE)
    for folder in ("", "vms", "tasks", "journal"):
        path = os.path.join(data_dir, folder)
        if not os.path.isdir(path):
            continue
        if folder:
            os.chmod(path, DIR_MODE)
        for entry in os.scandir(path):
            if entry.is_file(follow_symlinks=False):
                os.chmod(entry.path, FILE_MODE)


class _Transaction:
    """The store's lock: reentrant for threads, an exclusive flock across processes, and on entry a sync
    with what other processes wrote. Leaving the outermost level commits what was written (one journal
    line), releases the locks, waits for the line to be on disk and then runs the `after_commit` calls."""

    def __init__(self, store: DataDir):
        self._store = store
        self._thread = threading.RLock()
        self._depth = 0
        self._owner: int | None = None
        self._after: list[Callable[[], None]] = []

    def __enter__(self) -> _Transaction:
        self._thread.acquire()
        self._depth += 1
        if self._depth == 1:
            try:
                fcntl.flock(self._store._lock_fd, fcntl.LOCK_EX)
                self._owner = threading.get_ident()
                self._store._catch_up()
            except BaseException:
                self._release()
                raise
        return self

    def __exit__(self, *exc) -> None:
        if self._depth > 1:
            self._depth -= 1
            self._thread.release()
            return
        ticket, after = None, []
        try:
            ticket = self._store._commit()
            after = self._after
        finally:
            self._after = []
            self._release()
        if ticket is not None:
            self._store.journal.make_durable(*ticket)
        for call in after:
            call()

    def _release(self) -> None:
        self._depth -= 1
        self._owner = None
        fcntl.flock(self._store._lock_fd, fcntl.LOCK_UN)
        self._thread.release()

    def held(self) -> bool:
        return self._owner == threading.get_ident()

    def after_commit(self, call: Callable[[], None]) -> None:
        if self.held():
            self._after.append(call)
        else:
            call()


class DataDir:
    """The files of a data dir as TinyDB databases, kept up to date with what other processes write. The
    repository says which files there are: `open_file(name)` opens a file the journal or a folder names
    (through `open`), and `changed(name)` is told when a file's data was replaced (to index it again)."""

    def __init__(self, data_dir: str, open_file: Callable[[str], TinyDB | None], changed: Callable[[str], None]):
        self.data_dir = data_dir
        make_private(data_dir)
        for folder in ("vms", "tasks"):
            os.makedirs(os.path.join(data_dir, folder), mode=DIR_MODE, exist_ok=True)
        self.journal = Journal(os.path.join(data_dir, "journal"))
        self._lock_fd = os.open(os.path.join(data_dir, "store.lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
        self._checkpoint_fd = os.open(os.path.join(data_dir, "checkpoint.lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
        self._shared = self._open_shared()
        self._seen_generation = -1
        self._dirty = False
        self._position = (0, 0)       # the journal read (and applied) up to here: (segment, offset)
        self._tail_seen = -1          # the oldest segment not checkpointed, when this store last looked
        self._txn: dict[str, dict] = {}          # file -> table -> doc id -> document (None: removed)
        self._before: dict[PartitionStorage, dict | None] = {}  # data before the transaction, for a rollback
        self._touched: set[str] = set()          # files the journal changed since its tail
        self._files: dict[str, TinyDB] = {}      # file -> its database
        self._open_file = open_file
        self._changed = changed
        self.lock = _Transaction(self)
        self.open(os.path.join(data_dir, "main.json"))

    def db(self, name: str) -> TinyDB:
        """The database of an open file (`main.json`, `vms/<uuid>.json`, ...). It is made anew whenever the
        file's data is replaced under it: hold it for one transaction at most."""
        return self._files[name]

    # -- files shared with other processes ------------------------------------------------------
    def _open_shared(self) -> mmap.mmap:
        path = os.path.join(self.data_dir, "generation")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            if size < 24:  # generation, journal head, journal tail (an older data dir has the first only)
                os.pwrite(fd, bytes(24 - size), size)
            return mmap.mmap(fd, 24)
        finally:
            os.close(fd)

    def _read_generation(self) -> int:
        return struct.unpack_from("<Q", self._shared, 0)[0]

    def _head_tail(self) -> tuple[int, int]:
        return struct.unpack_from("<QQ", self._shared, 8)

    def _set_head_tail(self, head: int, tail: int) -> None:
        struct.pack_into("<QQ", self._shared, 8, head, tail)

    def open(self, path: str) -> PartitionStorage:
        """Open a file of the data dir (read at the next sync, or when first used); its storage."""
        storage = PartitionStorage(path)
        storage.name = os.path.relpath(path, self.data_dir)
        storage.on_write = self._wrote
        self._files[storage.name] = database(storage)
        return storage

    def _wrote(self, storage: PartitionStorage, old: dict | None, new: dict) -> None:
        """A TinyDB write inside a transaction: its changes join the transaction's journal line."""
        self._before.setdefault(storage, old)
        for table, docs in changes(old, new).items():
            self._txn.setdefault(storage.name, {}).setdefault(table, {}).update(docs)

    def _commit(self) -> tuple[int, int] | None:
        """End of the outermost transaction (under both locks): its journal line, or a rollback if that
        cannot be written. Returns the line's (segment, end) to sync, or None when nothing was written."""
        if not self._txn:
            self._before.clear()
            return None
        txn, before = self._txn, self._before
        self._txn, self._before = {}, {}
        head, _tail = self._head_tail()
        try:
            end = self.journal.append(head, txn)
        except OSError:
            for storage, data in before.items():  # the transaction never happened
                storage.replace(data)
                self._invalidate(storage.name)
            raise
        self._position = (head, end)
        self._touched.update(txn)
        self._dirty = True
        self._publish()
        return head, end

    def _publish(self) -> None:
        """After a transaction that wrote: tell the other processes (under the flock, so no bump is lost)."""
        if self._dirty:
            self._dirty = False
            self._seen_generation = self._read_generation() + 1
            struct.pack_into("<Q", self._shared, 0, self._seen_generation)

    def _catch_up(self) -> None:
        """Catch up with what other processes wrote since this store last looked (called under the flock)."""
        generation = self._read_generation()
        head, tail = self._head_tail()
        if generation == self._seen_generation and tail == self._tail_seen:
            return
        opening = self._seen_generation < 0
        if opening or tail != self._tail_seen:
            # A checkpoint ended (or this is the first look): the files hold everything before the tail.
            self._reload_files()
            self._touched = set()
            present = self.journal.segments()
            if opening and present and present[-1] > head:
                head = present[-1]  # the shared file was lost (a reboot): the segments tell
                self._set_head_tail(head, min(tail, present[0]))
            self._position = ((present[0] if present else head) if opening else tail, 0)
            self._tail_seen = tail
            self.journal.forget(tail)
        self._replay(head, repair=opening)
        self._seen_generation = generation

    def _reload_files(self) -> None:
        now = time.time()
        main = self._files["main.json"].storage
        if main.stale(now) or not main._loaded:
            self._reload(main)
        for folder in ("vms", "tasks"):
            for entry in os.scandir(os.path.join(self.data_dir, folder)):
                if entry.name.endswith(".json"):
                    db = self._files.get(folder + "/" + entry.name)
                    if db is None:
                        db = self._db_for(folder + "/" + entry.name)
                        if db is None:
                            continue  # not a file of ours
                    elif not db.storage.stale(now):
                        continue
                    self._reload(db.storage)
                    self._changed(folder + "/" + entry.name)

    def _replay(self, head: int, repair: bool = False) -> None:
        """Apply the journal lines from this store's position up to the end of segment `head`."""
        segment, offset = self._position
        changed: set[str] = set()
        while True:
            lines, offset = self.journal.read(segment, offset, repair=repair)
            for line in lines:
                for name, tables in line.items():
                    db = self._db_for(name) if isinstance(tables, dict) else None
                    if db is not None:
                        db.storage.replace(applied(db.storage.peek(), tables))
                        changed.add(name)
            if segment >= head:
                break
            segment, offset = segment + 1, 0
        self._position = (segment, offset)
        self._touched |= changed
        for name in changed:
            self._invalidate(name)

    def _db_for(self, name: str) -> TinyDB | None:
        """The database of a file the journal names (opened if new); None for a name that is no file of ours."""
        if not PARTITION_RE.match(name):
            return None
        if name in self._files:
            return self._files[name]
        return self._open_file(name)

    def _invalidate(self, name: str) -> None:
        """A file's data was replaced under TinyDB: a new database over it, and index it again."""
        self._renew(self._files[name].storage)
        self._changed(name)

    def _reload(self, storage: PartitionStorage) -> None:
        storage.load()
        self._renew(storage)

    def _renew(self, storage: PartitionStorage) -> None:
        # A TinyDB table caches its query results and the next document id it will give (4.9: `_next_id`,
        # set by the first insert and only reset by `truncate` or an insert with an explicit id), and
        # TinyDB's `clear_cache` drops only the query cache. Once another process has written the file
        # (read from the journal or re-read from disk), it may have used that id, and an insert would then
        # fail ("Document with ID 2 already exists") or replace another's record. So the file gets a new
        # database, whose tables count again from the data, instead of clearing TinyDB's private table map.
        self._files[storage.name] = database(storage)

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, wait: bool = True) -> int:
        """Write every file the journal changed and drop its segments; return how many files were written.
        One checkpoint at a time across processes (without `wait`, none if another is under way). The
        files are written outside the store's lock: requests go on meanwhile, into a new segment."""
        try:
            fcntl.flock(self._checkpoint_fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return 0
        try:
            with self.lock:
                head, tail = self._head_tail()
                present = [s for s in self.journal.segments() if s <= head]
                if not present and not self._touched:
                    return 0
                # Data objects are never changed in place, so these references are a consistent snapshot.
                snapshot = [(self._files[name].storage, self._files[name].storage.peek())
                            for name in sorted(self._touched)]
                self._touched = set()
                self._set_head_tail(head + 1, tail)  # later commits go to a new segment
            try:
                for storage, data in snapshot:
                    storage.flush(data)
                for folder in ("vms", "tasks", ""):
                    fsync_folder(os.path.join(self.data_dir, folder))  # the renames
            except BaseException:
                # Not all written: the next checkpoint writes them again, before it drops these segments.
                with self.lock:
                    self._touched.update(storage.name for storage, _data in snapshot)
                raise
            with self.lock:
                # The others see the new tail on their next sync, re-read the files and replay from it; the
                # generation stays (no record changed), so nothing built from the records is rebuilt.
                self._set_head_tail(head + 1, head + 1)
                self._tail_seen = head + 1
            self.journal.remove(present)
            return len(snapshot)
        finally:
            fcntl.flock(self._checkpoint_fd, fcntl.LOCK_UN)

    def start_checkpoints(self, every: float = 2.0, stop: threading.Event | None = None) -> threading.Thread:
        """Checkpoint every `every` seconds while the journal holds anything (the service's thread)."""
        stop = stop or threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    self.checkpoint()
                except Exception:  # a failed checkpoint leaves the journal whole: the next one tries again
                    log.exception("checkpoint of %s failed", self.data_dir)

        thread = threading.Thread(target=loop, daemon=True, name="checkpoints")
        thread.start()
        return thread

    def after_commit(self, call: Callable[[], None]) -> None:
        """Run `call` once the current transaction is on disk (at once outside a transaction)."""
        self.lock.after_commit(call)

    def generation(self) -> int:
        """Changes with every write of any process to this data dir."""
        with self.lock:
            return self._seen_generation
