"""The store: TinyDB documents, partitioned so that a write costs the same at any size.

Each VM has a TinyDB file of its own (`vms/<uuid>.json`: the VM, its definitions, its backups), which
outlives the VM. Users, tokens and nodes live in `main.json`; tasks and the task log in one file per
UTC day. A write rewrites only its own small file, atomically (temporary file, fsync, rename), so a
crash leaves the old file or the new one. One lock serialises every read and write.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from collections.abc import Callable, Iterator

from tinydb import Query, TinyDB
from tinydb.storages import Storage

Doc = dict


class AtomicJSONStorage(Storage):
    """TinyDB storage that keeps the data in memory and replaces its file atomically on each write."""

    def __init__(self, path: str, **_kwargs):
        super().__init__()
        self.path = path
        self._data: dict | None = None

    def peek(self) -> dict:
        """The cached data itself, for readers that copy what they return (no copy here)."""
        if self._data is None and os.path.exists(self.path):
            with open(self.path) as handle:
                self._data = json.load(handle)
        return self._data or {}

    def read(self) -> dict | None:
        data = self.peek()
        if self._data is None:
            return None
        # TinyDB edits the documents it reads (top-level fields only) before writing them back; a failed
        # write must not leave those edits in the cache. Copying two levels deep is enough for that.
        return {table: {doc_id: dict(doc) for doc_id, doc in docs.items()} for table, docs in data.items()}

    def write(self, data: dict) -> None:
        tmp = "%s.tmp-%d-%d" % (self.path, os.getpid(), threading.get_ident())
        with open(tmp, "w") as handle:
            handle.write(json.dumps(data, separators=(",", ":")))  # dumps: the C encoder
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self._data = data

    def close(self) -> None:
        pass


def docs(db: TinyDB, table: str) -> list[Doc]:
    """A table's documents as copies, read from the storage's cache without copying the whole file."""
    return [dict(doc) for doc in db.storage.peek().get(table, {}).values()]


def _open(path: str) -> TinyDB:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return TinyDB(path, storage=AtomicJSONStorage)


def utc_day(when: datetime.datetime | None = None) -> str:
    return (when or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d")


class Store:
    """Every record of the service, with the lookups the service needs kept in memory."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.lock = threading.RLock()
        self.main = _open(os.path.join(data_dir, "main.json"))
        self._vms: dict[str, TinyDB] = {}           # vm uuid -> its partition
        self._hostnames: dict[str, str] = {}        # current hostname -> vm uuid
        self._backup_hosts: dict[str, set[str]] = {}  # hostname a backup was made under -> vm uuids
        self._task_days: dict[str, str] = {}        # task id -> day of its partition
        self._pending: set[str] = set()
        self._days: dict[str, TinyDB] = {}
        self._load()

    # -- loading --------------------------------------------------------------------------------
    def _load(self) -> None:
        folder = os.path.join(self.data_dir, "vms")
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".json"):
                uuid = name[:-5]
                db = self._vms[uuid] = _open(os.path.join(folder, name))
                for vm in docs(db, "vm"):
                    if not vm.get("deleted"):
                        self._hostnames[vm["hostname"]] = uuid
                for backup in docs(db, "backups"):
                    self._backup_hosts.setdefault(backup["hostname"], set()).add(uuid)
        tasks = os.path.join(self.data_dir, "tasks")
        os.makedirs(tasks, exist_ok=True)
        for name in sorted(os.listdir(tasks)):
            if name.endswith(".json"):
                day = name[:-5]
                for task in self._day(day).table("tasks").all():
                    self._task_days[task["task_id"]] = day
                    if task.get("status") == "PENDING":
                        self._pending.add(task["task_id"])

    def _day(self, day: str) -> TinyDB:
        if day not in self._days:
            self._days[day] = _open(os.path.join(self.data_dir, "tasks", day + ".json"))
        return self._days[day]

    def _partition(self, vm_uuid: str, create: bool = False) -> TinyDB | None:
        if vm_uuid not in self._vms and create:
            self._vms[vm_uuid] = _open(os.path.join(self.data_dir, "vms", vm_uuid + ".json"))
        return self._vms.get(vm_uuid)

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
        """A VM that exists now, by hostname or uuid."""
        with self.lock:
            uuid = self._hostnames.get(hostname_or_uuid, hostname_or_uuid)
            db = self._partition(uuid)
            if db is None:
                return None
            vm = db.storage.peek().get("vm", {}).get("1")
            return None if vm is None or vm.get("deleted") else dict(vm)

    def vms(self) -> list[Doc]:
        with self.lock:
            return [vm for vm in (self.get_vm(u) for u in list(self._hostnames.values())) if vm]

    def upsert_vm(self, vm: Doc) -> None:
        """Record a VM as discovered; its hostname may have changed."""
        with self.lock:
            db = self._partition(vm["uuid"], create=True)
            old = db.table("vm").get(doc_id=1)
            if old and self._hostnames.get(old["hostname"]) == vm["uuid"]:
                del self._hostnames[old["hostname"]]
            vm = dict(vm, deleted=False)
            if old is None:
                db.table("vm").insert(vm)
            else:
                db.table("vm").update(vm, doc_ids=[1])
            self._hostnames[vm["hostname"]] = vm["uuid"]

    def mark_vm_deleted(self, vm_uuid: str) -> None:
        """The VM is gone from its node; its backups stay."""
        with self.lock:
            db = self._partition(vm_uuid)
            vm = db.table("vm").get(doc_id=1) if db is not None else None
            if vm and not vm.get("deleted"):
                db.table("vm").update({"deleted": True}, doc_ids=[1])
                if self._hostnames.get(vm["hostname"]) == vm_uuid:
                    del self._hostnames[vm["hostname"]]

    def current_hostname(self, vm_uuid: str) -> str | None:
        vm = self.get_vm(vm_uuid)
        return vm["hostname"] if vm else None

    # -- definitions ----------------------------------------------------------------------------
    def definitions(self, vm_uuid: str | None = None) -> list[Doc]:
        with self.lock:
            current = set(self._hostnames.values())  # definitions of deleted VMs are not shown
            found = []
            for uuid in [vm_uuid] if vm_uuid else list(self._vms):
                db = self._partition(uuid)
                if db is not None and uuid in current:
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
    def backups(self, original: str | None = None, vm_uuid: str | None = None) -> list[Doc]:
        """Backups made under hostname or uuid `original` (or of `vm_uuid`), whatever became of the VM."""
        with self.lock:
            if vm_uuid:
                uuids = {vm_uuid}
            elif original is not None:
                uuids = set(self._backup_hosts.get(original, ())) | ({original} if original in self._vms else set())
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

    def get_backup(self, vm_uuid: str, disk_id: int, name: str) -> Doc | None:
        with self.lock:
            db = self._partition(vm_uuid)
            if db is None:
                return None
            return next((b for b in docs(db, "backups") if b["disk_id"] == disk_id and b["name"] == name), None)

    def insert_backup(self, backup: Doc) -> None:
        with self.lock:
            self._partition(backup["vm_uuid"], create=True).table("backups").insert(backup)
            self._backup_hosts.setdefault(backup["hostname"], set()).add(backup["vm_uuid"])

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

    def save_token(self, token: Doc) -> None:
        with self.lock:
            self.main.table("tokens").upsert(token, Query().token_hash == token["token_hash"])

    def get_token(self, token_hash: str) -> Doc | None:
        with self.lock:
            return self.main.table("tokens").get(Query().token_hash == token_hash)

    def delete_token(self, token_hash: str) -> None:
        with self.lock:
            self.main.table("tokens").remove(Query().token_hash == token_hash)

    # -- tasks ----------------------------------------------------------------------------------
    def insert_task(self, task: Doc) -> None:
        with self.lock:
            day = utc_day()
            self._day(day).table("tasks").insert(task)
            self._task_days[task["task_id"]] = day
            if task.get("status") == "PENDING":
                self._pending.add(task["task_id"])

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
            self._day(day).table("tasks").update(fields, Query().task_id == task_id)
            if fields.get("status", "PENDING") != "PENDING":
                self._pending.discard(task_id)

    def pending_tasks(self) -> list[Doc]:
        with self.lock:
            return [t for t in (self.get_task(i) for i in sorted(self._pending)) if t]

    def log(self, entry: Doc) -> None:
        """Append to the task log of finished (or refused) jobs."""
        with self.lock:
            self._day(utc_day()).table("log").insert(entry)

    def task_log(self, days: int = 7) -> Iterator[Doc]:
        with self.lock:
            for day in sorted(set(self._task_days.values()) | {utc_day()}, reverse=True)[:days]:
                yield from (dict(e) for e in self._day(day).table("log").all())
