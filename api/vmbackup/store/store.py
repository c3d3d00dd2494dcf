"""The store: the service's records as TinyDB documents, partitioned so that a write costs the same at any
size, with the lookups the service needs kept in memory. The files, transactions, journal and checkpoints
under it, shared safely by every process that opens the same data dir, are the storage engine's
(`storage.py`).

Each VM has a TinyDB file of its own (`vms/<uuid>.json`: the VM, its definitions, its backups), which
outlives the VM. Users, tokens and nodes live in `main.json`; tasks and the task log in one file per
UTC day. `Store.lock` is one transaction (`storage.DataDir.lock`): inside it, every read sees what any
process wrote before, and every write is committed with the others as one journal line.
"""

from __future__ import annotations

import collections
import datetime
import os
import threading
from collections.abc import Callable, Iterator

from tinydb import Query, TinyDB
from tinydb.table import Document

from vmbackup.domain import errors
from vmbackup.domain.facts import TaskStatus
from vmbackup.domain.outcome import failed_definitions
from vmbackup.store.storage import DataDir, PartitionStorage, is_data_dir

__all__ = ["Ambiguous", "Store", "is_data_dir"]

Doc = dict


class Ambiguous(LookupError):
    """A hostname that names several VMs now: such a VM is reached by its uuid only."""

    def __init__(self, hostname: str, uuids: list[str]):
        super().__init__(hostname)
        self.hostname = hostname
        self.uuids = sorted(uuids)


def token_id(token_hash: str) -> int:
    """The record id of a token: 60 bits of its (sha256) hash."""
    return int(token_hash[:15], 16) + 1


def docs(db: TinyDB, table: str) -> list[Doc]:
    """A table's documents as copies, read from the storage's cache without copying the whole file."""
    return [dict(doc) for doc in db.storage.peek().get(table, {}).values()]


def utc_day(when: datetime.datetime | None = None) -> str:
    return (when or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d")


class Store:
    """Every record of the service, with the lookups the service needs kept in memory."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self._vms: dict[str, PartitionStorage] = {}  # vm uuid -> its partition (the file's storage)
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
        self._days: dict[str, PartitionStorage] = {}  # day -> its partition
        self._newest: dict[str, tuple] = {}            # vm uuid -> (its data read, status, newest backups)
        self.files = DataDir(data_dir, self._open_file, self._changed)
        self.lock = self.files.lock
        self.journal = self.files.journal
        with self.lock:
            pass  # the first sync loads every partition and replays the journal over them
        self.checkpoint(wait=False)  # what an earlier process left in the journal goes into the files

    # -- the storage engine's, for the service and the command line ------------------------------
    def checkpoint(self, wait: bool = True) -> int:
        """Write every file the journal changed and drop its segments (`DataDir.checkpoint`)."""
        return self.files.checkpoint(wait)

    def start_checkpoints(self, every: float = 2.0, stop: threading.Event | None = None) -> threading.Thread:
        """Checkpoint every `every` seconds while the journal holds anything (the service's thread)."""
        return self.files.start_checkpoints(every, stop)

    def after_commit(self, call: Callable[[], None]) -> None:
        """Run `call` once the current transaction is on disk (at once outside a transaction)."""
        self.files.after_commit(call)

    def generation(self) -> int:
        """Changes with every write of any process to this data dir."""
        return self.files.generation()

    @property
    def main(self) -> TinyDB:
        """The database of `main.json`: users, tokens, nodes, purged failure counts."""
        return self.files.db("main.json")

    # -- which file holds what ------------------------------------------------------------------
    def _open_file(self, name: str) -> TinyDB:
        """A file the storage engine found (in the journal or a folder) that is not open yet."""
        folder, _, file = name.partition("/")
        if folder == "vms":
            return self._partition(file[:-5], create=True)
        return self._day(file[:-5])

    def _changed(self, name: str) -> None:
        """A file's data was replaced under TinyDB (another process wrote it): index it again."""
        folder, _, file = name.partition("/")
        if folder == "vms":
            self._index_vm(file[:-5])
        elif folder == "tasks":
            self._index_day(file[:-5])

    def _index_vm(self, uuid: str) -> None:
        storage = self._vms[uuid]
        old = self._vm_host.get(uuid)
        if old is not None:
            self._hostnames.get(old, set()).discard(uuid)
            if not self._hostnames.get(old):
                self._hostnames.pop(old, None)
        vm = storage.peek().get("vm", {}).get("1")
        current = vm["hostname"] if vm and not vm.get("deleted") else None
        self._vm_host[uuid] = current
        if current is not None:
            self._hostnames.setdefault(current, set()).add(uuid)
        hosts = {b["hostname"] for b in storage.peek().get("backups", {}).values()}
        for hostname in self._uuid_backup_hosts.get(uuid, set()) - hosts:
            self._backup_hosts.get(hostname, set()).discard(uuid)
        for hostname in hosts:
            self._backup_hosts.setdefault(hostname, set()).add(uuid)
        self._uuid_backup_hosts[uuid] = hosts

    def _index_day(self, day: str) -> None:
        tasks = list(self._days[day].peek().get("tasks", {}).values())
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
        if task.get("status") == TaskStatus.PENDING:
            self._pending.add(task_id)
            for vm_uuid, disk_id in task.get("claims") or []:
                self._claims[(vm_uuid, int(disk_id))] = task_id
        else:
            self._pending.discard(task_id)
            self._release_claims(task_id)
            failed = failed_definitions(task)
            if failed:
                self._task_failed[task_id] = failed

    def _release_claims(self, task_id: str) -> None:
        for disk in [d for d, owner in self._claims.items() if owner == task_id]:
            del self._claims[disk]

    def _day(self, day: str) -> TinyDB:
        if day not in self._days:
            self._days[day] = self.files.open(os.path.join(self.data_dir, "tasks", day + ".json"))
        return self.files.db(self._days[day].name)

    def _partition(self, vm_uuid: str, create: bool = False) -> TinyDB | None:
        if vm_uuid not in self._vms and create:
            self._vms[vm_uuid] = self.files.open(os.path.join(self.data_dir, "vms", vm_uuid + ".json"))
            self._vm_host.setdefault(vm_uuid, None)
        storage = self._vms.get(vm_uuid)
        return self.files.db(storage.name) if storage is not None else None

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
            vm = self._vms[uuid].peek().get("vm", {}).get("1")
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
            for uuid, storage in self._vms.items():
                data = storage.peek()
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
            return sum(int(b.get("size") or 0) for storage in self._vms.values()
                       for b in storage.peek().get("backups", {}).values())

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
            if task.get("status") == TaskStatus.PENDING:
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
                db = self._day(day)
                tasks = docs(db, "tasks")
                if any(task.get("status") == TaskStatus.PENDING for task in tasks):
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
