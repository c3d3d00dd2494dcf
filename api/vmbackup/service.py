"""The rules of the VM backup API: who may do what, checks in the order the API makes them, records
and their states, and the jobs that carry out backups, restores and deletes through playbooks.
"""

from __future__ import annotations

import collections
import datetime
import re
import secrets
import threading

from vmbackup import errors, validation
from vmbackup.runner import Runner, RunResult
from vmbackup.store import Ambiguous, Store

# Backup status codes (API.md section 3).
OK, PENDING, RESTORE, LOST = 1, 2, 3, 4
TYPE_DATASET, TYPE_FILE = 1, 2
BACKUP_TIME_FORMAT = "%Y%m%d_%H%M%S"

DEFINITION_FIELDS = ["hostname", "vm_uuid", "name", "disk_id", "type", "node", "zpool", "desc", "bwlimit", "active",
                     "schedule", "retention", "compression", "fsfreeze"]
BACKUP_FIELDS = ["hostname", "vm_uuid", "vm", "define", "name", "disk_id", "type", "node", "zpool", "created",
                 "status", "size", "time", "file_path", "note"]
DEFINITION_ORDER_ALL = ["name", "disk_id", "hostname", "created"]
DEFINITION_ORDER_VM = ["name", "disk_id", "created"]
BACKUP_ORDER = ["name", "disk_id", "size", "time", "created"]
MESSAGES = {"create": "Backup successfully created", "restore": "Backup successfully restored",
            "delete": "Backup successfully deleted", "delete_many": "Backups successfully deleted",
            "retention": "Backups successfully pruned", "batch": "Backups successfully created"}
FAILURES = {"create": "Backup failed", "restore": "Restore failed", "delete": "Delete failed",
            "delete_many": "Delete failed", "retention": "Retention failed", "batch": "Backups failed"}


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (when.microsecond // 1000)


class Service:
    """Everything the routes ask for; the routes only translate HTTP to these calls and back."""

    def __init__(self, store: Store, runner: Runner, dc_id: int = 1, size_limit: int | None = None,
                 jobs_per_node: int | None = None):
        self.store = store
        self.runner = runner
        self.dc_id = dc_id
        self.size_limit = size_limit
        self.jobs_per_node = jobs_per_node  # None: no limit; else jobs beyond it wait in a queue
        self._busy: dict[tuple[str, int], str] = {}  # (vm uuid, disk_id) -> task id of the job on it
        self._running: dict[str, set[str]] = collections.defaultdict(set)  # backup node -> task ids
        self._queue: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._lock = threading.RLock()

    # -- identities -----------------------------------------------------------------------------
    def task_id(self, user: dict | None, kind: str, owner_id: int | None = None) -> str:
        """`<user><type><owner>d<dc>-<8>-<4>-<4>-<4>` hex; type e (job), a (automatic), d (synchronous)."""
        user_id = user["id"] if user else 0
        owner = owner_id if owner_id is not None else user_id
        h = secrets.token_hex(10)
        return "%d%s%dd%d-%s-%s-%s-%s" % (user_id, kind, owner, self.dc_id, h[:8], h[8:12], h[12:16], h[16:20])

    # -- permissions ----------------------------------------------------------------------------
    @staticmethod
    def require_admin(user: dict) -> None:
        if not user.get("is_admin"):
            raise errors.PermissionDenied()

    @staticmethod
    def may_see(user: dict, vm_uuid: str, hostname: str | None = None) -> bool:
        """Admins see every VM; an owner the VMs whose uuids it was given (a hostname is not an identity:
        another VM may be given that name later)."""
        return bool(user.get("is_admin")) or vm_uuid in set(user.get("vms") or [])

    def vm_for(self, user: dict, hostname_or_uuid: str) -> dict:
        """The VM, or 404 (also for VMs the user may not see, and for a hostname several VMs have)."""
        try:
            vm = self.store.get_vm(hostname_or_uuid)
        except Ambiguous as clash:
            raise self._ambiguous(user, clash.hostname, clash.uuids) from None
        if vm is None or not self.may_see(user, vm["uuid"], vm["hostname"]):
            raise errors.NotFound(errors.VM_NOT_FOUND)
        return vm

    def _ambiguous(self, user: dict, hostname: str, uuids: list[str]) -> errors.NotFound:
        visible = [u for u in uuids if self.may_see(user, u)]
        if not visible:
            return errors.NotFound(errors.VM_NOT_FOUND)
        if len(visible) == 1 and not user.get("is_admin"):
            # An owner who sees one of them is answered as if the others did not exist.
            return errors.NotFound(errors.VM_AMBIGUOUS % (hostname, len(uuids), visible[0]))
        return errors.NotFound(errors.VM_AMBIGUOUS % (hostname, len(visible), ", ".join(visible)))

    def owners_by_uuid(self) -> dict[str, str]:
        """Owners given VMs by hostname (by an earlier version) keep them by uuid from now on; hostnames
        that name no VM or several are dropped. Returns what changed per user, for the log."""
        changes = {}
        with self.store.lock:
            for user in self.store.users():
                kept, notes = [], []
                for entry in user.get("vms") or []:
                    if validation.is_uuid(entry):
                        kept.append(entry.lower())
                        continue
                    try:
                        vm = self.store.get_vm(entry)
                    except Ambiguous:
                        vm = None
                    if vm is not None:
                        kept.append(vm["uuid"])
                    notes.append("%s -> %s" % (entry, vm["uuid"] if vm else "dropped (no single VM has it)"))
                if notes:
                    self.store.save_user(dict(user, vms=kept))
                    changes[user["username"]] = ", ".join(notes)
        return changes

    # -- nodes and VMs --------------------------------------------------------------------------
    def node_operational(self, name: str) -> bool:
        node = self.store.get_node(name)
        return bool(node and node.get("operational"))

    def check_node(self, name: str) -> None:
        if not self.node_operational(name):
            raise errors.Locked(errors.NODE_NOT_OPERATIONAL)

    @staticmethod
    def check_vm_operational(vm: dict) -> None:
        if vm.get("state") not in ("running", "stopped", "stopping"):
            raise errors.Locked(errors.VM_NOT_OPERATIONAL)

    @staticmethod
    def disk(vm: dict, disk_id, message: str = errors.INVALID_DISK_ID) -> dict:
        try:
            number = validation.to_int(disk_id)
        except ValueError:
            raise errors.PreconditionFailed(message) from None
        for disk in vm.get("disks", []):
            if disk["disk_id"] == number:
                return disk
        raise errors.PreconditionFailed(message)

    @staticmethod
    def disk_id_param(value, default: int | None = 1) -> int | None:
        if value in (None, ""):
            return default
        try:
            return validation.to_int(value)
        except ValueError:
            raise errors.PreconditionFailed(errors.INVALID_DISK_ID) from None

    # -- definitions ----------------------------------------------------------------------------
    def definition_view(self, definition: dict, extended: bool) -> dict:
        view = {k: definition.get(k) for k in DEFINITION_FIELDS}
        if extended:
            view["backups"] = sum(1 for b in self.store.backups(vm_uuid=definition["vm_uuid"])
                                  if b["define"] == definition["name"] and b["disk_id"] == definition["disk_id"])
        return view

    def list_definitions(self, user: dict, params: dict, vm_name: str | None = None) -> list:
        extended = self._flag(params, "extended")
        full = self._flag(params, "full") or extended
        if vm_name is None:
            keys = validation.order_by(params.get("order_by"), DEFINITION_ORDER_ALL, "hostname,-created")
            found = [d for d in self.store.definitions() if self.may_see(user, d["vm_uuid"], d["hostname"])]
        else:
            vm = self.vm_for(user, vm_name)
            keys = validation.order_by(params.get("order_by"), DEFINITION_ORDER_VM, "-created")
            found = self.store.definitions(vm["uuid"])
            if params.get("disk_id") not in (None, ""):
                disk = self.disk(vm, params["disk_id"])
                found = [d for d in found if d["disk_id"] == disk["disk_id"]]
        found = validation.sort(found, keys)
        if not full:
            return [d["name"] for d in found]
        return [self.definition_view(d, extended) for d in found]

    @staticmethod
    def _flag(params: dict, name: str) -> bool:
        value = params.get(name)
        if value in (None, ""):
            return False
        try:
            return validation.to_bool(value)
        except ValueError:
            raise errors.ValidationFailed({name: ["Must be a valid boolean."]}) from None

    def get_definition(self, user: dict, vm_name: str, name: str, params: dict) -> dict:
        vm = self.vm_for(user, vm_name)
        disk = self.disk(vm, params.get("disk_id", 1) if params.get("disk_id") not in (None, "") else 1)
        definition = self.store.get_definition(vm["uuid"], disk["disk_id"], name)
        if definition is None:
            raise errors.NotFound(errors.DEFINITION_NOT_FOUND)
        return self.definition_view(definition, self._flag(params, "extended"))

    def _writable_vm(self, user: dict, vm_name: str, data: dict) -> tuple[dict, dict]:
        """Checks shared by POST/PUT/DELETE of a definition: admin, VM, node, VM state, disk."""
        self.require_admin(user)
        vm = self.vm_for(user, vm_name)
        self.check_node(vm["node"])
        self.check_vm_operational(vm)
        disk_id = data.get("disk_id", 1) if data.get("disk_id") not in (None, "") else 1
        return vm, self.disk(vm, disk_id)

    def create_definition(self, user: dict, vm_name: str, name: str, data: dict) -> dict:
        vm, disk = self._writable_vm(user, vm_name, data)
        validation.check_definition_name(name)
        if self.store.get_definition(vm["uuid"], disk["disk_id"], name):
            raise errors.NotAcceptable(errors.DEFINITION_EXISTS)
        fields = validation.Fields(data)
        preset = validation.predefined_defaults(name)
        definition = {
            "hostname": vm["hostname"], "vm_uuid": vm["uuid"], "name": name, "disk_id": disk["disk_id"],
            "type": fields.integer("type", 1, low=1, high=2),
            "node": fields.string("node", required=True),
            "zpool": fields.string("zpool", "zones"),
            "schedule": fields.string("schedule", preset[0] if preset else None, required=preset is None),
            "retention": fields.integer("retention", preset[1] if preset else None, required=preset is None,
                                        low=0, high=65536),
            "active": fields.boolean("active", True),
            "compression": fields.integer("compression", 0, low=0, high=3),
            "bwlimit": fields.integer("bwlimit", None, low=0, nullable=True) or None,
            "desc": fields.string("desc", "", max_length=128),
            "fsfreeze": fields.boolean("fsfreeze", False),
            "created": iso(now()),
        }
        definition["last_due"] = definition["created"]  # the scheduler's first run is the next due time
        self._check_definition(fields, definition)
        fields.raise_if_any()
        self.store.save_definition(definition)
        return self.definition_view(definition, False)

    def _check_definition(self, fields: validation.Fields, definition: dict) -> None:
        """The rules of a definition's fields; raises 423 when the backup node's pools are not known yet
        (a pool can only be accepted once the node has said it has it)."""
        if definition["schedule"] is not None and not validation.valid_schedule(definition["schedule"]):
            fields.fail("schedule", "Invalid cron format: use 5 fields in UTC, e.g. 30 4 * * 6.")
        validation.check_desc(fields, definition["desc"])
        if definition["zpool"] is not None and not validation.is_pool_name(definition["zpool"]):
            fields.fail("zpool", "Enter a valid pool name: a letter, then letters, digits or '_.:-'.")
        if definition["node"] and "node" not in fields.errors:
            node = self.store.get_node(definition["node"])
            if node is None or "backup" not in node.get("roles", []):
                fields.fail("node", "Object with name=%s does not exist or is not a backup node." % definition["node"])
            elif "zpool" not in fields.errors and definition["zpool"]:
                if not isinstance(node.get("pools"), dict):
                    raise errors.Locked(errors.NODE_NOT_OPERATIONAL)
                if definition["zpool"] not in node["pools"]:
                    fields.fail("zpool", "Storage %s does not exist on node %s." % (definition["zpool"], node["name"]))

    def update_definition(self, user: dict, vm_name: str, name: str, data: dict) -> dict:
        vm, disk = self._writable_vm(user, vm_name, data)
        definition = self.store.get_definition(vm["uuid"], disk["disk_id"], name)
        if definition is None:
            raise errors.NotFound(errors.DEFINITION_NOT_FOUND)
        fields = validation.Fields(data)
        if fields.has("type") and fields.integer("type") != definition["type"]:
            fields.fail("type", "The backup type cannot be changed.")
        changes = {
            "schedule": fields.string("schedule", definition["schedule"]),
            "retention": fields.integer("retention", definition["retention"], low=0, high=65536),
            "active": fields.boolean("active", definition["active"]),
            "compression": fields.integer("compression", definition["compression"], low=0, high=3),
            "bwlimit": (fields.integer("bwlimit", None, low=0, nullable=True) or None) if fields.has("bwlimit")
            else definition["bwlimit"],
            "desc": fields.string("desc", definition["desc"], max_length=128),
            "node": fields.string("node", definition["node"]),
            "zpool": fields.string("zpool", definition["zpool"]),
            "fsfreeze": fields.boolean("fsfreeze", definition["fsfreeze"]),
        }
        updated = dict(definition, **changes)
        if updated["schedule"] != definition["schedule"]:
            updated["last_due"] = iso(now())  # the new schedule counts from now, with no catch-up
        self._check_definition(fields, updated)
        fields.raise_if_any()
        self.store.save_definition(updated)
        return self.definition_view(updated, False)

    def delete_definition(self, user: dict, vm_name: str, name: str, data: dict) -> None:
        vm, disk = self._writable_vm(user, vm_name, data)
        if self.store.get_definition(vm["uuid"], disk["disk_id"], name) is None:
            raise errors.NotFound(errors.DEFINITION_NOT_FOUND)
        self.store.delete_definition(vm["uuid"], disk["disk_id"], name)

    # -- backups: reading -----------------------------------------------------------------------
    def backup_view(self, backup: dict, hostnames: dict | None = None) -> dict:
        """The API's backup object; `hostnames` caches the current hostname of each VM in a list."""
        view = {k: backup.get(k) for k in BACKUP_FIELDS}
        if hostnames is None:
            hostnames = {}
        if backup["vm_uuid"] not in hostnames:
            hostnames[backup["vm_uuid"]] = self.store.current_hostname(backup["vm_uuid"])
        view["vm"] = hostnames[backup["vm_uuid"]]
        if backup.get("type") == TYPE_FILE:
            view["checksum"] = backup.get("checksum")
        return view

    def visible_backups(self, user: dict, original: str) -> list[dict]:
        """Backups made under hostname or uuid `original` that the user may see; 404 when that hostname
        was used by several VMs (their backups are then reached by uuid)."""
        owners = [u for u in self.store.backup_owners(original) if self.may_see(user, u)]
        if len(owners) > 1 and original not in owners:
            raise self._ambiguous(user, original, owners)
        return [b for b in self.store.backups(original) if self.may_see(user, b["vm_uuid"], b["hostname"])]

    def list_backups(self, user: dict, original: str, params: dict) -> list:
        full = self._flag(params, "full")
        keys = validation.order_by(params.get("order_by"), BACKUP_ORDER, "-created")
        found = self.visible_backups(user, original)
        if params.get("disk_id") not in (None, ""):
            disk_id = self.disk_id_param(params["disk_id"])
            found = [b for b in found if b["disk_id"] == disk_id]
        if params.get("define") not in (None, ""):
            found = [b for b in found if b["define"] == params["define"]]
        found = validation.sort(found, keys)
        if not full:
            return [b["name"] for b in found]
        hostnames: dict = {}
        return [self.backup_view(b, hostnames) for b in found]

    def find_backup(self, user: dict, original: str, name: str, disk_id) -> dict:
        disk_id = self.disk_id_param(disk_id)
        for backup in self.visible_backups(user, original):
            if backup["name"] == name and backup["disk_id"] == disk_id:
                return backup
        raise errors.NotFound(errors.BACKUP_NOT_FOUND)

    def get_backup(self, user: dict, original: str, name: str, params: dict) -> dict:
        return self.backup_view(self.find_backup(user, original, name, params.get("disk_id")))

    # -- backups: jobs --------------------------------------------------------------------------
    def busy(self, vm_uuid: str, disk_id: int) -> str | None:
        with self._lock:
            return self._busy.get((vm_uuid, disk_id))

    def _claim(self, vm_uuid: str, disk_id: int, task_id: str) -> None:
        with self._lock:
            if (vm_uuid, disk_id) in self._busy:
                raise errors.Conflict(errors.VM_PENDING)
            self._busy[(vm_uuid, disk_id)] = task_id

    def _release(self, task_id: str) -> None:
        with self._lock:
            for key, owner in list(self._busy.items()):
                if owner == task_id:
                    del self._busy[key]

    def create_backup(self, user: dict, vm_name: str, bkpdef: str, data: dict, automatic: bool = False) -> str:
        """Start a backup job; return its task id (checks in API.md's order)."""
        plan = self._plan_backup(user, vm_name, bkpdef, data)
        task_id = self.task_id(user, "a" if automatic else "e")
        self._claim(plan["vm_uuid"], plan["disk_id"], task_id)
        self.store.insert_backup(plan["record"])
        self._start(task_id, user, "create", "backup.yml", plan["extravars"], vm_uuid=plan["vm_uuid"],
                    hostname=plan["hostname"], disk_id=plan["disk_id"], bkpname=plan["bkpname"], define=bkpdef,
                    view="vm_backup", method="POST")
        return task_id

    def _plan_backup(self, user: dict, vm_name: str, bkpdef: str, data: dict) -> dict:
        """Every check of a create, in order; the record and playbook variables of the backup."""
        self.require_admin(user)
        vm = self.vm_for(user, vm_name)
        self.check_node(vm["node"])
        disk = self.disk(vm, data.get("disk_id", 1) if data.get("disk_id") not in (None, "") else 1)
        definition = self.store.get_definition(vm["uuid"], disk["disk_id"], bkpdef)
        if definition is None:
            raise errors.NotFound(errors.DEFINITION_NOT_FOUND)
        fields = validation.Fields(data)
        note = fields.string("note", "", max_length=128)
        fields.raise_if_any()
        created = now()
        name = "%s-%s" % (bkpdef, created.strftime(BACKUP_TIME_FORMAT))
        if self.store.get_backup(vm["uuid"], disk["disk_id"], name):
            raise errors.NotAcceptable(errors.BACKUP_EXISTS)
        if self.size_limit is not None and self.store.total_backup_size() >= self.size_limit:
            raise errors.ExpectationFailed(errors.SIZE_LIMIT)
        self.check_vm_operational(vm)
        if not vm.get("installed", True):
            raise errors.PreconditionRequired(errors.VM_NOT_INSTALLED)
        self.check_node(definition["node"])
        if self.busy(vm["uuid"], disk["disk_id"]):
            raise errors.Conflict(errors.VM_PENDING)
        record = {"hostname": vm["hostname"], "vm_uuid": vm["uuid"], "define": bkpdef, "name": name,
                  "disk_id": disk["disk_id"], "type": definition["type"], "node": definition["node"],
                  "zpool": definition["zpool"], "created": iso(created), "status": PENDING, "size": None,
                  "time": None, "file_path": None, "note": note, "checksum": None,
                  "disk_size": disk.get("size"), "brand": vm.get("brand")}
        extravars = {"node": definition["node"], "compute_node": vm["node"], "vm_uuid": vm["uuid"],
                     "hostname": vm["hostname"], "disk_id": disk["disk_id"], "bkpdef": bkpdef, "bkpname": name,
                     "zpool": definition["zpool"], "type": definition["type"],
                     "compression": definition["compression"], "bwlimit": definition["bwlimit"] or 0,
                     "fsfreeze": definition["fsfreeze"], "retention": 0}
        return {"vm_uuid": vm["uuid"], "hostname": vm["hostname"], "disk_id": disk["disk_id"], "bkpname": name,
                "define": bkpdef, "node": definition["node"], "record": record, "extravars": extravars}

    def create_batch(self, definitions: list[dict]) -> tuple[list[str], list[tuple[dict, str]]]:
        """Scheduled backups due together: one automatic run per backup node, Ansible started once.

        Returns the batch task ids and the definitions that could not start, with the reason.
        """
        user = {"id": 0, "username": "scheduler", "is_admin": True, "vms": []}
        plans: dict[str, list[dict]] = collections.defaultdict(list)
        refused = []
        claimed: dict[str, str] = {}
        for definition in definitions:
            try:
                plan = self._plan_backup(user, definition["vm_uuid"], definition["name"],
                                         {"disk_id": definition["disk_id"]})
                task_id = claimed.setdefault(plan["node"], self.task_id(None, "a"))
                self._claim(plan["vm_uuid"], plan["disk_id"], task_id)
            except (errors.ApiError, errors.ValidationFailed) as err:
                refused.append((definition, getattr(err, "detail", None) or str(err)))
                continue
            plans[plan["node"]].append(plan)
        started = []
        for node, group in plans.items():
            task_id = claimed[node]
            for plan in group:
                self.store.insert_backup(plan["record"])
            items = [{k: p[k] for k in ("vm_uuid", "hostname", "disk_id", "bkpname", "define")} for p in group]
            self._start(task_id, user, "batch", "backup_batch.yml",
                        {"node": node, "backups": [p["extravars"] for p in group]},
                        vm_uuid=None, hostname=None, disk_id=None, bkpname=[p["bkpname"] for p in group],
                        items=items, view="vm_backup", method="POST")
            started.append(task_id)
        return started, refused

    def set_note(self, user: dict, original: str, name: str, data: dict) -> dict:
        self.require_admin(user)
        backup = self.find_backup(user, original, name, data.get("disk_id"))
        fields = validation.Fields(data)
        note = fields.string("note", "", max_length=128)
        fields.raise_if_any()
        self.store.update_backup(backup["vm_uuid"], backup["disk_id"], backup["name"], {"note": note})
        return self.backup_view(dict(backup, note=note))

    def restore_backup(self, user: dict, original: str, name: str, data: dict) -> str:
        self.require_admin(user)
        fields = validation.Fields(data)
        target_name = fields.string("target_hostname_or_uuid", required=True)
        target_disk_id = fields.integer("target_disk_id", required=True)
        force = fields.boolean("force", True)
        fields.integer("disk_id", 1)
        fields.raise_if_any()
        backup = self.find_backup(user, original, name, data.get("disk_id"))
        if backup["status"] != OK:
            raise errors.ExpectationFailed(errors.BACKUP_STATUS_NOT_OK)
        self.check_node(backup["node"])
        target = self.vm_for(user, target_name)
        self.check_node(target["node"])
        if target.get("locked"):
            raise errors.Locked(errors.VM_LOCKED)
        if (target.get("brand") or "kvm") != (backup.get("brand") or "kvm"):
            raise errors.PreconditionRequired(errors.BRAND_MISMATCH)
        disk = self.disk(target, target_disk_id, errors.INVALID_TARGET_DISK_ID)
        if backup.get("disk_size") is not None and disk.get("size") is not None and \
                int(disk["size"]) != int(backup["disk_size"]):
            raise errors.PreconditionRequired(errors.DISK_SIZE_MISMATCH)
        node = self.store.get_node(target["node"]) or {}
        pool = disk["dataset"].split("/", 1)[0]
        free = ((node.get("pools") or {}).get(pool) or {}).get("free")
        if free is not None and backup.get("size") is not None and int(free) < int(backup["size"]):
            raise errors.PreconditionRequired(errors.NO_FREE_SPACE)
        if not force and int(disk.get("snapshots") or 0) > 0:
            raise errors.ExpectationFailed(errors.VM_HAS_SNAPSHOTS)
        if target.get("state") != "stopped":
            raise errors.Locked(errors.VM_NOT_STOPPED)
        task_id = self.task_id(user, "e")
        self._claim(target["uuid"], disk["disk_id"], task_id)
        self.store.update_backup(backup["vm_uuid"], backup["disk_id"], backup["name"], {"status": RESTORE})
        extravars = {"node": backup["node"], "zpool": backup["zpool"], "bkpname": backup["name"],
                     "type": backup["type"], "vm_uuid": backup["vm_uuid"], "disk_id": backup["disk_id"],
                     "hostname": backup["hostname"], "file_path": backup.get("file_path"),
                     "compute_node": target["node"], "target_compute_node": target["node"],
                     "target_vm_uuid": target["uuid"], "target_hostname": target["hostname"],
                     "target_disk_id": disk["disk_id"], "force": force}
        self._start(task_id, user, "restore", "restore.yml", extravars, vm_uuid=target["uuid"],
                    hostname=target["hostname"], disk_id=disk["disk_id"], bkpname=backup["name"],
                    backup_key=(backup["vm_uuid"], backup["disk_id"], backup["name"]), view="vm_backup",
                    method="PUT")
        return task_id

    def delete_backup(self, user: dict, original: str, name: str, data: dict) -> str | dict:
        """Delete one backup: a LOST one from the records at once (returns a message), else by a job."""
        self.require_admin(user)
        backup = self.find_backup(user, original, name, data.get("disk_id"))
        if backup["status"] not in (OK, LOST):
            raise errors.ExpectationFailed(errors.BACKUP_STATUS_NOT_OK)
        if backup["status"] == LOST:
            self.store.delete_backups(backup["vm_uuid"], backup["disk_id"], [backup["name"]])
            return {"message": "Backup successfully deleted from DB"}
        self.check_node(backup["node"])
        return self._delete_job(user, [backup], "delete")

    def delete_backups(self, user: dict, original: str, data: dict) -> str | dict:
        self.require_admin(user)
        names = data.get("bkpnames")
        if isinstance(names, str):
            names = [n for n in names.replace(",", " ").split() if n]
        if not names or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise errors.PreconditionFailed(errors.INVALID_BKPNAMES)
        disk_id = self.disk_id_param(data.get("disk_id"), None)
        found = [b for b in self.visible_backups(user, original) if b["name"] in names
                 and (disk_id is None or b["disk_id"] == disk_id)]
        if not found:
            raise errors.NotFound(errors.BACKUP_NOT_FOUND)
        if len({(b["node"], b["vm_uuid"], b["disk_id"], b["zpool"], b["type"]) for b in found}) > 1:
            raise errors.PreconditionFailed(errors.INVALID_BKPNAMES)
        live = [b for b in found if b["status"] != LOST]
        if any(b["status"] != OK for b in live):
            raise errors.ExpectationFailed(errors.BACKUP_STATUS_NOT_OK)
        lost = [b for b in found if b["status"] == LOST]
        if lost:
            self.store.delete_backups(lost[0]["vm_uuid"], lost[0]["disk_id"], [b["name"] for b in lost])
        if not live:
            return {"message": "Backup successfully deleted from DB"}
        self.check_node(live[0]["node"])
        return self._delete_job(user, live, "delete_many" if len(live) > 1 else "delete")

    def _delete_job(self, user: dict, backups: list[dict], kind: str, automatic: bool = False) -> str:
        first = backups[0]
        task_id = self.task_id(user, "a" if automatic else "e")
        self._claim(first["vm_uuid"], first["disk_id"], task_id)
        names = [b["name"] for b in backups]
        for name in names:
            self.store.update_backup(first["vm_uuid"], first["disk_id"], name, {"status": PENDING})
        extravars = {"node": first["node"], "zpool": first["zpool"], "vm_uuid": first["vm_uuid"],
                     "disk_id": first["disk_id"], "type": first["type"], "bkpname": names,
                     "hostname": first["hostname"]}
        vm = self.store.get_vm(first["vm_uuid"])
        if vm:
            extravars["compute_node"] = vm["node"]
        self._start(task_id, user, kind, "delete.yml", extravars, vm_uuid=first["vm_uuid"],
                    hostname=first["hostname"], disk_id=first["disk_id"], bkpname=names, view="vm_backup",
                    method="DELETE")
        return task_id

    # -- job lifecycle --------------------------------------------------------------------------
    def _start(self, task_id: str, user: dict, kind: str, playbook: str, extravars: dict, **task) -> None:
        record = dict(task, task_id=task_id, kind=kind, playbook=playbook, status="PENDING",
                      username=user["username"] if user else "scheduler", user_id=user["id"] if user else 0,
                      started=iso(now()), result=None, node=extravars.get("node"), extravars=extravars)
        if "backup_key" in record:
            record["backup_key"] = list(record["backup_key"])
        node = extravars.get("node")
        with self._lock:
            queued = self.jobs_per_node is not None and len(self._running[node]) >= self.jobs_per_node
            record["queued"] = queued
            self.store.insert_task(record)
            if queued:
                self._queue[node].append(task_id)
                return
            self._running[node].add(task_id)
        self._launch(task_id, playbook, extravars)

    def _launch(self, task_id: str, playbook: str, extravars: dict) -> None:
        extravars = dict(extravars, vmbackup_progress_file=self.runner.progress_file(task_id))
        try:
            pid = self.runner.start(task_id, playbook, extravars, lambda result: self.finish(task_id, result))
        except OSError as err:
            self.finish(task_id, RunResult("failed", None, {}, "the job could not start: %s" % err))
            return
        self.store.update_task(task_id, {"pid": pid, "queued": False, "launched": iso(now())})

    def _next_in_queue(self, node: str | None) -> None:
        """A job on `node` ended: start the next queued one there, if any."""
        with self._lock:
            self._running[node] = {t for t in self._running[node] if self.runner.running(t)}
            if not self._queue[node] or (self.jobs_per_node is not None
                                         and len(self._running[node]) >= self.jobs_per_node):
                return
            task_id = self._queue[node].popleft()
            self._running[node].add(task_id)
        task = self.store.get_task(task_id)
        if task and task["status"] == "PENDING":
            self._launch(task_id, task["playbook"], task["extravars"])

    def finish(self, task_id: str, run: RunResult) -> None:
        """Apply a finished run to the records, end its task and log it."""
        task = self.store.get_task(task_id)
        if task is None or task["status"] != "PENDING":
            self._release(task_id)
            return
        kind = task["kind"]
        detail = self._apply(task, run)
        status = "SUCCESS" if run.ok else "FAILURE"
        result = {"returncode": 0 if run.ok else (run.rc if run.rc not in (None, 0) else 1),
                  "message": MESSAGES[kind] if run.ok else FAILURES[kind], "detail": detail}
        self.store.update_task(task_id, {"status": status, "result": result, "finished": iso(now())})
        self.store.log({"time": iso(now()), "task": task_id, "status": status, "username": task["username"],
                        "msg": result["message"], "detail": detail, "object_name": task.get("hostname"),
                        "task_type": task_id.split("-")[0]})
        self._release(task_id)
        with self._lock:
            self._running[task.get("node")].discard(task_id)
        self._next_in_queue(task.get("node"))
        if run.ok and kind == "create":
            self.start_retention(task)

    def start_retention(self, created: dict) -> str | None:
        """After a successful create: prune that definition's backups to its retention (an automatic job)."""
        definition = self.store.get_definition(created["vm_uuid"], created["disk_id"], created.get("define") or "")
        if definition is None or not definition.get("retention"):
            return None  # deleted definitions leave their backups; 0 keeps all
        backups = [b for b in self.store.backups(vm_uuid=created["vm_uuid"])
                   if b["define"] == definition["name"] and b["disk_id"] == definition["disk_id"]]
        if sum(1 for b in backups if b["status"] == OK) <= definition["retention"]:
            return None
        task_id = self.task_id(None, "a")
        try:
            self._claim(created["vm_uuid"], created["disk_id"], task_id)
        except errors.Conflict:
            self.store.log({"time": iso(now()), "task": None, "status": "FAILURE", "username": "scheduler",
                            "msg": "Retention postponed", "detail": errors.VM_PENDING,
                            "object_name": created["hostname"], "task_type": "a"})
            return None
        vm = self.store.get_vm(created["vm_uuid"])
        extravars = {"node": definition["node"], "zpool": definition["zpool"], "vm_uuid": created["vm_uuid"],
                     "disk_id": created["disk_id"], "type": definition["type"], "bkpdef": definition["name"],
                     "retention": definition["retention"], "hostname": created["hostname"],
                     "protect": [b["name"] for b in backups if b["status"] != OK]}
        if vm:
            extravars["compute_node"] = vm["node"]
        self._start(task_id, None, "retention", "prune.yml", extravars, vm_uuid=created["vm_uuid"],
                    hostname=created["hostname"], disk_id=created["disk_id"], bkpname=None,
                    define=definition["name"], view="vm_backup", method="DELETE")
        return task_id

    def _apply(self, task: dict, run: RunResult) -> str:
        kind, vm_uuid, disk_id = task["kind"], task["vm_uuid"], task["disk_id"]
        if kind == "batch":
            return self._apply_batch(task, run)
        if kind == "create":
            name = task["bkpname"]
            if run.ok:
                res = run.result
                self.store.update_backup(vm_uuid, disk_id, name, made_fields(res))
                return "name=%s, disk_id=%s" % (name, disk_id)
            self.store.delete_backups(vm_uuid, disk_id, [name])
            return run.error or run.status
        if kind == "restore":
            b_uuid, b_disk, b_name = task["backup_key"]
            self.store.update_backup(b_uuid, b_disk, b_name, {"status": OK})
            if run.ok:
                return "name=%s, target_hostname=%s, target_disk_id=%s" % (b_name, task["hostname"], disk_id)
            return run.error or run.status
        if kind == "retention":
            destroyed = [n for n in run.result.get("destroyed") or [] if isinstance(n, str)]
            self.store.delete_backups(vm_uuid, disk_id, destroyed)
            return "pruned=%s" % ",".join(destroyed) if run.ok else run.error or run.status
        names = task["bkpname"] if isinstance(task["bkpname"], list) else [task["bkpname"]]
        if run.ok:
            self.store.delete_backups(vm_uuid, disk_id, names)
            return "name=%s, disk_id=%s" % (",".join(names), disk_id)
        for name in names:
            self.store.update_backup(vm_uuid, disk_id, name, {"status": OK})
        return run.error or run.status

    def _apply_batch(self, task: dict, run: RunResult) -> str:
        """Each backup of a batch succeeded or failed on its own: keep the made ones, drop the others."""
        results = run.result.get("backups") or {}
        made, failed = [], []
        for item in task["items"]:
            # The key batch_report (collection/plugins/filter/report.py) gives each backup.
            res = results.get("%s:%s:%s" % (item["vm_uuid"], item["disk_id"], item["bkpname"])) or {}
            if res.get("ok"):
                self.store.update_backup(item["vm_uuid"], item["disk_id"], item["bkpname"], made_fields(res))
                made.append(item)
            else:
                self.store.delete_backups(item["vm_uuid"], item["disk_id"], [item["bkpname"]])
                failed.append("%s: %s" % (item["bkpname"], res.get("msg") or run.error or run.status))
        self._release(task["task_id"])
        for item in made:
            self.start_retention(item)
        if failed:
            run.status = "failed" if not made else run.status
        return "made=%d, failed=%d%s" % (len(made), len(failed), ("; " + "; ".join(failed)) if failed else "")

    def recover(self) -> int:
        """At start: follow the jobs an earlier process left running, or apply how they ended."""
        pending = self.store.pending_tasks()
        for task in pending:
            with self._lock:
                for item in task.get("items") or [task]:
                    self._busy[(item["vm_uuid"], item["disk_id"])] = task["task_id"]
                if task.get("queued"):
                    self._queue[task.get("node")].append(task["task_id"])
                    continue
                self._running[task.get("node")].add(task["task_id"])
            self.runner.reattach(task["task_id"], lambda result, t=task["task_id"]: self.finish(t, result))
        return len(pending)

    # -- tasks ----------------------------------------------------------------------------------
    def visible_task(self, user: dict, task_id: str) -> dict:
        task = self.store.get_task(task_id)
        if task is None or not (user.get("is_admin") or task.get("user_id") == user["id"]):
            raise errors.NotFound(errors.TASK_NOT_FOUND)
        return task

    def cancel(self, user: dict, task_id: str) -> None:
        task = self.visible_task(user, task_id)
        if not (user.get("is_admin") or task.get("user_id") == user["id"]):
            raise errors.PermissionDenied()
        if task["status"] != "PENDING":
            raise errors.NotAcceptable(errors.TASK_NOT_CANCELABLE)
        with self._lock:
            queue = self._queue[task.get("node")]
            if task_id in queue:
                queue.remove(task_id)
                self.finish(task_id, RunResult("canceled", None, {}, "canceled before it started"))
                return
        if not self.runner.cancel(task_id):
            raise errors.NotAcceptable(errors.TASK_NOT_CANCELABLE)


# What a backup node reports about a backup goes into later runs (a restore's file_path): checked here.
REPORTED_PATH_RE = re.compile(r"/[A-Za-z0-9_.:@+/-]{1,4095}")
CHECKSUM_RE = re.compile(r"[0-9a-f]{64}")


def made_fields(res: dict) -> dict:
    """A made backup's record fields from what its run reported, each checked."""
    return {"status": OK, "size": _int(res.get("size")), "time": _round(res.get("time")),
            "file_path": reported_path(res.get("file_path")), "checksum": reported_checksum(res.get("checksum"))}


def reported_path(value) -> str | None:
    if isinstance(value, str) and REPORTED_PATH_RE.fullmatch(value) and ".." not in value.split("/"):
        return value
    return None


def reported_checksum(value) -> str | None:
    return value if isinstance(value, str) and CHECKSUM_RE.fullmatch(value) else None


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _round(value) -> int | None:
    try:
        return int(round(float(value)))
    except (TypeError, ValueError):
        return None
