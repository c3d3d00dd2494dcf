"""The store: TinyDB documents, partitioned so that a write costs the same at any size, and shared safely
by every process that opens the same data dir (the service, a second service, `vmbackup user ...`).

Each VM has a TinyDB file of its own (`vms/<uuid>.json`: the VM, its definitions, its backups), which
outlives the VM. Users, tokens and nodes live in `main.json`; tasks and the task log in one file per
UTC day.

`Store.lock` is one transaction: a thread lock, and across processes an exclusive `flock` on
`<data dir>/store.lock`. A transaction's changes are committed as one line of the journal (`journal.py`)
with one fdatasync, after the locks are released (so one sync serves every transaction written before
it, and nobody waits for another's disk); the caller returns once its line is on disk. A checkpoint
(`Store.checkpoint`, every few seconds in the service, and at open) writes the files the journal touched,
each atomically (temporary file, fsync, rename), and then drops those journal segments. A crash leaves
whole files and a journal whose whole lines are replayed over them at the next open.

The shared memory file `<data dir>/generation` holds a generation counter bumped by every commit, the
journal segment written to (head) and the oldest one not yet checkpointed (tail). On entering the lock a
store whose generation is behind reads the journal lines other processes wrote, and one whose tail is
behind (a checkpoint ended) re-reads the files it changed. So a read-modify-write never works on stale
data and no record written by another process is lost. Files are private: the data dir 0700, files 0600.
"""

from __future__ import annotations

import collections
import datetime
import fcntl
import json
import logging
import mmap
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator

from tinydb import Query, TinyDB
from tinydb.storages import Storage
from tinydb.table import Document

from vmbackup.domain import errors
from vmbackup.store.journal import Journal, fsync_folder

Doc = dict
log = logging.getLogger("vmbackup.store")
FILE_MODE, DIR_MODE = 0o600, 0o700
# A file changed within this many seconds is re-read on a sync even if its stat looks the same: file
# times are only as fine as the kernel's clock tick, so two writes in one tick can share an mtime.
RECENT = 2.0
# Which file of the data dir a journal line may name: one of ours, never a path out of its folder.
PARTITION_RE = re.compile(r"(main|vms/[^/\x00]{1,200}|tasks/[0-9]{4}-[0-9]{2}-[0-9]{2})\.json\Z")


class Ambiguous(LookupError):
    """A hostname that names several VMs now: such a VM is reached by its uuid only."""

    def __init__(self, hostname: str, uuids: list[str]):
        super().__init__(hostname)
        self.hostname = hostname
        self.uuids = sorted(uuids)


def _signature(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class PartitionStorage(Storage):
    """TinyDB storage that keeps one file's data in memory: a write hands its changes to the store (for the
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


def token_id(token_hash: str) -> int:
    """The record id of a token: 60 bits of its (sha256) hash."""
    return int(token_hash[:15], 16) + 1


def docs(db: TinyDB, table: str) -> list[Doc]:
    """A table's documents as copies, read from the storage's cache without copying the whole file."""
    return [dict(doc) for doc in db.storage.peek().get(table, {}).values()]


def utc_day(when: datetime.datetime | None = None) -> str:
    return (when or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d")


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

    def __init__(self, store: Store):
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
                self._store._sync()
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
            self._store.journal.sync(*ticket)
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


class Store:
    """Every record of the service, with the lookups the service needs kept in memory."""

    def __init__(self, data_dir: str):
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
        self.lock = _Transaction(self)
        self._vms: dict[str, TinyDB] = {}            # vm uuid -> its partition
        self._vm_host: dict[str, str | None] = {}     # vm uuid -> current hostname (None: VM deleted)
        self._hostnames: dict[str, set[str]] = {}     # current hostname -> uuids of the VMs that have it now
        self._uuid_backup_hosts: dict[str, set[str]] = {}  # vm uuid -> hostnames its backups were made under
        self._backup_hosts: dict[str, set[str]] = {}  # hostname a backup was made under -> vm uuids
        self._task_days: dict[str, str] = {}          # task id -> day of its partition
        self._day_tasks: dict[str, set[str]] = {}     # day -> the task ids of its partition
        self._pending: set[str] = set()
        # VM disk (uuid, disk_id) -> the pending task that claims it. Built from the task records (their
        # `claims`), so every process on the data dir sees the same claims, and a restart finds them again.
        self._claims: dict[tuple[str, int], str] = {}
        # Ended backup task -> the (vm uuid, disk_id, definition) whose backup it did not make, for the
        # metrics' failure counters (those of purged tasks are kept in main.json's `counts`).
        self._task_failed: dict[str, list[tuple]] = {}
        self._days: dict[str, TinyDB] = {}
        self._newest: dict[str, tuple] = {}            # vm uuid -> (its data read, status, newest backups)
        self.main = self._open(os.path.join(data_dir, "main.json"))
        with self.lock:
            pass  # the first sync loads every partition and replays the journal over them
        self.checkpoint(wait=False)  # what an earlier process left in the journal goes into the files

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

    def _open(self, path: str) -> TinyDB:
        db = TinyDB(path, storage=PartitionStorage)
        db.storage.name = os.path.relpath(path, self.data_dir)
        db.storage.on_write = self._wrote
        self._files[db.storage.name] = db
        return db

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

    def _sync(self) -> None:
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
        if self.main.storage.stale(now) or not self.main.storage._loaded:
            self._reload(self.main)
        for folder, index in (("vms", self._index_vm), ("tasks", self._index_day)):
            for entry in os.scandir(os.path.join(self.data_dir, folder)):
                if entry.name.endswith(".json"):
                    key = entry.name[:-5]
                    db = self._files.get(folder + "/" + entry.name)
                    if db is None:
                        db = self._db_for(folder + "/" + entry.name)
                        if db is None:
                            continue  # not a file of ours
                    elif not db.storage.stale(now):
                        continue
                    self._reload(db)
                    index(key)

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
        folder, _, file = name.partition("/")
        if folder == "vms":
            return self._partition(file[:-5], create=True)
        return self._day(file[:-5])

    def _invalidate(self, name: str) -> None:
        """A file's data was replaced under TinyDB: drop its caches and index it again."""
        db = self._files[name]
        db.clear_cache()
        db._tables.clear()  # a table caches its next document id, which another process may have used
        folder, _, file = name.partition("/")
        if folder == "vms":
            self._index_vm(file[:-5])
        elif folder == "tasks":
            self._index_day(file[:-5])

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

    @staticmethod
    def _reload(db: TinyDB) -> None:
        db.storage.load()
        db.clear_cache()
        db._tables.clear()  # a table caches its next document id, which another process may have used

    def _index_vm(self, uuid: str) -> None:
        db = self._vms[uuid]
        old = self._vm_host.get(uuid)
        if old is not None:
            self._hostnames.get(old, set()).discard(uuid)
            if not self._hostnames.get(old):
                self._hostnames.pop(old, None)
        vm = db.storage.peek().get("vm", {}).get("1")
        current = vm["hostname"] if vm and not vm.get("deleted") else None
        self._vm_host[uuid] = current
        if current is not None:
            self._hostnames.setdefault(current, set()).add(uuid)
        hosts = {b["hostname"] for b in db.storage.peek().get("backups", {}).values()}
        for hostname in self._uuid_backup_hosts.get(uuid, set()) - hosts:
            self._backup_hosts.get(hostname, set()).discard(uuid)
        for hostname in hosts:
            self._backup_hosts.setdefault(hostname, set()).add(uuid)
        self._uuid_backup_hosts[uuid] = hosts

    def _index_day(self, day: str) -> None:
        tasks = list(self._days[day].storage.peek().get("tasks", {}).values())
        for task_id in self._day_tasks.pop(day, set()) - {task["task_id"] for task in tasks}:  # purged
            self._task_days.pop(task_id, None)
            self._task_failed.pop(task_id, None)
            self._pending.discard(task_id)
            self._release_claims(task_id)
        for task in tasks:
            self._index_task(task, day)

    def _index_task(self, task: Doc, day: str) -> None:
        task_id = task["task_id"]
        self._task_days[task_id] = day
        self._day_tasks.setdefault(day, set()).add(task_id)
        if task.get("status") == "PENDING":
            self._pending.add(task_id)
            for vm_uuid, disk_id in task.get("claims") or []:
                self._claims[(vm_uuid, int(disk_id))] = task_id
        else:
            self._pending.discard(task_id)
            self._release_claims(task_id)
            if task.get("failed_items"):
                self._task_failed[task_id] = [tuple(item) for item in task["failed_items"]]

    def _release_claims(self, task_id: str) -> None:
        for disk in [d for d, owner in self._claims.items() if owner == task_id]:
            del self._claims[disk]

    def _day(self, day: str) -> TinyDB:
        if day not in self._days:
            self._days[day] = self._open(os.path.join(self.data_dir, "tasks", day + ".json"))
        return self._days[day]

    def _partition(self, vm_uuid: str, create: bool = False) -> TinyDB | None:
        if vm_uuid not in self._vms and create:
            self._vms[vm_uuid] = self._open(os.path.join(self.data_dir, "vms", vm_uuid + ".json"))
            self._vm_host.setdefault(vm_uuid, None)
        return self._vms.get(vm_uuid)

    def generation(self) -> int:
        """Changes with every write of any process to this data dir."""
        with self.lock:
            return self._seen_generation

    # -- nodes ----------------------------------------------------------------------------------
    def nodes(self) -> list[Doc]:
        with self.lock:
            return self.main.table("nodes").all()

    def get_node(self, name: str) -> Doc | None:
        with self.lock:
            return self.main.table("nodes").get(Query().name == name)

    def upsert_node(self, node: Doc) -> None:
        with self.lock:
            self.main.table("nodes").upsert(node, Query().name == node["name"])

    # -- VMs ------------------------------------------------------------------------------------
    def get_vm(self, hostname_or_uuid: str) -> Doc | None:
        """A VM that exists now, by uuid or by a hostname only it has (Ambiguous if several have it)."""
        with self.lock:
            if self._vm_host.get(hostname_or_uuid) is not None:
                uuid = hostname_or_uuid
            else:
                uuids = self._hostnames.get(hostname_or_uuid) or set()
                if len(uuids) > 1:
                    raise Ambiguous(hostname_or_uuid, list(uuids))
                if not uuids:
                    return None
                uuid = next(iter(uuids))
            vm = self._vms[uuid].storage.peek().get("vm", {}).get("1")
            return None if vm is None or vm.get("deleted") else dict(vm)

    def vms(self) -> list[Doc]:
        with self.lock:
            return [self.get_vm(uuid) for uuid, host in self._vm_host.items() if host is not None]

    def hostname_clashes(self) -> dict[str, list[str]]:
        """Hostnames that several VMs have now, with their uuids."""
        with self.lock:
            return {host: sorted(uuids) for host, uuids in self._hostnames.items() if len(uuids) > 1}

    def upsert_vm(self, vm: Doc) -> None:
        """Record a VM as discovered; its hostname may have changed."""
        with self.lock:
            db = self._partition(vm["uuid"], create=True)
            old = db.table("vm").get(doc_id=1)
            vm = dict(vm, deleted=False)
            if old is None:
                db.table("vm").insert(vm)
            else:
                db.table("vm").update(vm, doc_ids=[1])
            self._index_vm(vm["uuid"])

    def mark_vm_deleted(self, vm_uuid: str) -> None:
        """The VM is gone from its node; its backups stay."""
        with self.lock:
            db = self._partition(vm_uuid)
            vm = db.table("vm").get(doc_id=1) if db is not None else None
            if vm and not vm.get("deleted"):
                db.table("vm").update({"deleted": True}, doc_ids=[1])
                self._index_vm(vm_uuid)

    def current_hostname(self, vm_uuid: str) -> str | None:
        with self.lock:
            return self._vm_host.get(vm_uuid)

    # -- definitions ----------------------------------------------------------------------------
    def definitions(self, vm_uuid: str | None = None) -> list[Doc]:
        """Definitions of VMs that exist now (all of them, or of one VM)."""
        with self.lock:
            found = []
            for uuid in [vm_uuid] if vm_uuid else list(self._vms):
                db = self._partition(uuid)
                if db is not None and self._vm_host.get(uuid) is not None:
                    found.extend(docs(db, "definitions"))
            return found

    def get_definition(self, vm_uuid: str, disk_id: int, name: str) -> Doc | None:
        with self.lock:
            db = self._partition(vm_uuid)
            if db is None:
                return None
            return next((d for d in docs(db, "definitions") if d["disk_id"] == disk_id and d["name"] == name), None)

    def save_definition(self, definition: Doc) -> None:
        with self.lock:
            db = self._partition(definition["vm_uuid"], create=True)
            q = Query()
            where = (q.disk_id == definition["disk_id"]) & (q.name == definition["name"])
            table = db.table("definitions")
            # One write either way (TinyDB's upsert writes twice when it inserts).
            if self.get_definition(definition["vm_uuid"], definition["disk_id"], definition["name"]) is None:
                table.insert(definition)
            else:
                table.update(definition, where)

    def delete_definition(self, vm_uuid: str, disk_id: int, name: str) -> None:
        with self.lock:
            q = Query()
            self._partition(vm_uuid).table("definitions").remove((q.disk_id == disk_id) & (q.name == name))

    # -- backups --------------------------------------------------------------------------------
    def backup_owners(self, original: str) -> set[str]:
        """The uuids of the VMs whose backups were made under hostname or uuid `original`."""
        with self.lock:
            return set(self._backup_hosts.get(original, ())) | ({original} if original in self._vms else set())

    def backups(self, original: str | None = None, vm_uuid: str | None = None) -> list[Doc]:
        """Backups made under hostname or uuid `original` (or of `vm_uuid`), whatever became of the VM."""
        with self.lock:
            if vm_uuid:
                uuids = {vm_uuid}
            elif original is not None:
                uuids = self.backup_owners(original)
            else:
                uuids = set(self._vms)
            found = []
            for uuid in uuids:
                db = self._partition(uuid)
                if db is None:
                    continue
                for backup in docs(db, "backups"):
                    if original is None or vm_uuid or original in (backup["hostname"], backup["vm_uuid"]):
                        found.append(backup)
            return found

    def newest_backups(self, status: int) -> dict[tuple, Doc]:
        """Per (vm uuid, disk_id, definition): its newest backup with `status`. Each VM's file is looked
        through again only when it changed (its data is a new object after every write or re-read), so
        the scheduler asking every minute costs a lookup per VM, not a read of every backup."""
        with self.lock:
            found: dict[tuple, Doc] = {}
            for uuid, db in self._vms.items():
                data = db.storage.peek()
                cached = self._newest.get(uuid)
                if cached is None or cached[0] is not data or cached[1] != status:
                    newest: dict[tuple, Doc] = {}
                    for backup in data.get("backups", {}).values():
                        key = (backup["vm_uuid"], backup["disk_id"], backup["define"])
                        if backup["status"] == status and (key not in newest or (backup.get("created") or "")
                                                           > (newest[key].get("created") or "")):
                            newest[key] = backup
                    cached = self._newest[uuid] = (data, status, newest)
                found.update(cached[2])
            return {key: dict(backup) for key, backup in found.items()}

    def get_backup(self, vm_uuid: str, disk_id: int, name: str) -> Doc | None:
        with self.lock:
            db = self._partition(vm_uuid)
            if db is None:
                return None
            return next((b for b in docs(db, "backups") if b["disk_id"] == disk_id and b["name"] == name), None)

    def insert_backup(self, backup: Doc) -> None:
        with self.lock:
            self._partition(backup["vm_uuid"], create=True).table("backups").insert(backup)
            self._index_vm(backup["vm_uuid"])

    def update_backup(self, vm_uuid: str, disk_id: int, name: str, fields: Doc) -> None:
        with self.lock:
            q = Query()
            self._partition(vm_uuid).table("backups").update(fields, (q.disk_id == disk_id) & (q.name == name))

    def delete_backups(self, vm_uuid: str, disk_id: int, names: list[str]) -> None:
        with self.lock:
            q = Query()
            db = self._partition(vm_uuid)
            if db is not None:
                db.table("backups").remove((q.disk_id == disk_id) & (q.name.one_of(list(names))))
                self._index_vm(vm_uuid)

    def total_backup_size(self) -> int:
        with self.lock:
            return sum(int(b.get("size") or 0) for db in self._vms.values()
                       for b in db.storage.peek().get("backups", {}).values())

    # -- users and tokens -----------------------------------------------------------------------
    def get_user(self, username: str) -> Doc | None:
        with self.lock:
            return self.main.table("users").get(Query().username == username)

    def users(self) -> list[Doc]:
        with self.lock:
            return self.main.table("users").all()

    def save_user(self, user: Doc) -> None:
        with self.lock:
            self.main.table("users").upsert(user, Query().username == user["username"])

    def find_user(self, test: Callable[[Doc], bool]) -> Doc | None:
        with self.lock:
            return next((u for u in self.main.table("users").all() if test(u)), None)

    # A token's record is stored under an id made of its hash, so every request finds it without a scan (a
    # scan of 20,000 tokens cost 7 ms a request).
    def save_token(self, token: Doc) -> None:
        with self.lock:
            self.main.table("tokens").upsert(Document(token, doc_id=token_id(token["token_hash"])))

    def get_token(self, token_hash: str) -> Doc | None:
        with self.lock:
            doc = self.main.storage.peek().get("tokens", {}).get(str(token_id(token_hash)))
            return dict(doc) if doc is not None and doc.get("token_hash") == token_hash else None

    def delete_token(self, token_hash: str) -> None:
        with self.lock:
            if self.get_token(token_hash) is not None:
                self.main.table("tokens").remove(doc_ids=[token_id(token_hash)])

    def user_tokens(self, username: str) -> list[Doc]:
        with self.lock:
            return [dict(t) for t in self.main.storage.peek().get("tokens", {}).values()
                    if t.get("username") == username]

    def delete_tokens(self, test: Callable[[Doc], bool]) -> int:
        """Remove every token `test` accepts (a user's, or the expired ones); return how many."""
        with self.lock:
            table = self.main.table("tokens")
            ids = [t.doc_id for t in table.all() if test(t)]
            if ids:
                table.remove(doc_ids=ids)
            return len(ids)

    # -- tasks ----------------------------------------------------------------------------------
    def insert_task(self, task: Doc) -> None:
        """Record a task. A pending task claims the VM disks in its `claims` ([vm uuid, disk_id] pairs): if
        a pending task of any process holds one of them, nothing is written and Conflict (409) is raised."""
        with self.lock:
            if task.get("status") == "PENDING":
                for vm_uuid, disk_id in task.get("claims") or []:
                    if self._claims.get((vm_uuid, int(disk_id)), task["task_id"]) != task["task_id"]:
                        raise errors.Conflict(errors.VM_PENDING)
            day = utc_day()
            self._day(day).table("tasks").insert(task)
            self._index_task(task, day)

    def claimed(self, vm_uuid: str, disk_id: int) -> str | None:
        """The pending task (of any process) that claims a VM disk, or None."""
        with self.lock:
            return self._claims.get((vm_uuid, int(disk_id)))

    def get_task(self, task_id: str) -> Doc | None:
        with self.lock:
            day = self._task_days.get(task_id)
            if day is None:
                return None
            found = self._day(day).table("tasks").get(Query().task_id == task_id)
            return dict(found) if found else None

    def update_task(self, task_id: str, fields: Doc) -> None:
        with self.lock:
            day = self._task_days[task_id]
            table = self._day(day).table("tasks")
            table.update(fields, Query().task_id == task_id)
            self._index_task(table.get(Query().task_id == task_id), day)  # pending, claims, failures

    def pending_tasks(self) -> list[Doc]:
        with self.lock:
            return [t for t in (self.get_task(i) for i in sorted(self._pending)) if t]

    def failure_counts(self) -> collections.Counter:
        """(vm uuid, disk_id, definition) -> how many backup jobs did not make its backup, purged ones included;
        kept up to date by the writes, so reading it costs the same however many tasks there are."""
        with self.lock:
            counts = collections.Counter(self._purged_failures())
            for items in self._task_failed.values():
                counts.update(items)
            return counts

    def _purged_failures(self) -> dict[tuple, int]:
        doc = self.main.table("counts").get(doc_id=1) or {}
        found = {}
        for key, count in (doc.get("failures") or {}).items():
            vm_uuid, disk_id, define = key.split("/", 2)
            found[(vm_uuid, int(disk_id), define)] = int(count)
        return found

    def purge_tasks(self, before: datetime.datetime) -> int:
        """Drop the tasks (and task log) of the UTC days before `before`, keeping their failure counts; a day
        that still has a pending task stays whole. Returns how many tasks were dropped."""
        cutoff = utc_day(before)
        dropped = 0
        with self.lock:
            counts = collections.Counter(self._purged_failures())
            for day in sorted(d for d in self._days if d < cutoff):
                db = self._days[day]
                tasks = docs(db, "tasks")
                if any(task.get("status") == "PENDING" for task in tasks):
                    continue
                for task in tasks:
                    counts.update(self._task_failed.pop(task["task_id"], []))
                    self._task_days.pop(task["task_id"], None)
                self._day_tasks.pop(day, None)
                for table in ("tasks", "log"):
                    db.table(table).truncate()
                dropped += len(tasks)
            if dropped:
                failures = {"%s/%d/%s" % key: count for key, count in counts.items()}
                self.main.table("counts").upsert(Document({"failures": failures}, doc_id=1))
        return dropped

    def log(self, entry: Doc) -> None:
        """Append to the task log of finished (or refused) jobs."""
        with self.lock:
            self._day(utc_day()).table("log").insert(entry)

    def task_log(self, days: int = 7) -> Iterator[Doc]:
        with self.lock:
            entries = []
            for day in sorted(set(self._task_days.values()) | {utc_day()}, reverse=True)[:days]:
                entries.extend(dict(e) for e in self._day(day).table("log").all())
        yield from entries
