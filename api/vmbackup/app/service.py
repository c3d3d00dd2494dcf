"""The rules of the VM backup API: who may do what, checks in the order the API makes them, records
and their states, and the jobs that carry out backups, restores and deletes through playbooks.
"""

from __future__ import annotations

import collections
import os
import secrets
import time

from vmbackup.app.jobs import BackupJob, DeleteJob, RestoreJob, SyncJob, VerifyJob
from vmbackup.app.queue import JobQueue
from vmbackup.app.sync import IMPORT_LIMIT
from vmbackup.domain import errors, facts, validation
from vmbackup.domain.clock import backup_name, iso, now, parse
from vmbackup.domain.events import Events
from vmbackup.domain.facts import TYPE_FILE, BackupStatus, TaskStatus
from vmbackup.engine.protocol import Engine
from vmbackup.store.store import Ambiguous, Store

__all__ = ["Service", "iso", "now", "wait_for"]

DEFINITION_FIELDS = ["hostname", "vm_uuid", "name", "disk_id", "type", "node", "zpool", "desc", "bwlimit", "active",
                     "schedule", "retention", "compression", "fsfreeze", "keep_snapshot"]
BACKUP_FIELDS = ["hostname", "vm_uuid", "vm", "define", "name", "disk_id", "type", "node", "zpool", "created",
                 "status", "size", "time", "file_path", "note"]
# Additive fields (API.md section 6): when a restore drill last proved the backup, and how the last one went.
VERIFY_FIELDS = ["verified", "verify_status"]
DEFINITION_ORDER_ALL = ["name", "disk_id", "hostname", "created"]
DEFINITION_ORDER_VM = ["name", "disk_id", "created"]
BACKUP_ORDER = ["name", "disk_id", "size", "time", "created"]
TASK_INFO = ("view", "method", "hostname", "disk_id", "bkpname", "define", "username", "started", "finished", "queued",
             "awx_job")
SCHEDULER = {"id": 0, "username": "scheduler", "is_admin": True, "vms": []}


class Service:
    """Everything the routes ask for; the routes only translate HTTP to these calls and back."""

    def __init__(self, store: Store, runner: Engine, dc_id: int = 1, size_limit: int | None = None,
                 jobs_per_node: int | None = None, batch_runs: int | None = None,
                 sync_import_limit: int = IMPORT_LIMIT):
        self.store = store
        self.sync_import_limit = sync_import_limit  # backups a sync imports from one backup node at most
        self.runner = runner
        self.dc_id = dc_id
        self.size_limit = size_limit
        # Runs a backup node's scheduled batch is split into: one ansible-playbook works its tasks in a
        # single process, so a batch of 1,000 disks needs a run per controller CPU (compute nodes apart).
        self.batch_runs = max(1, batch_runs or os.cpu_count() or 1)
        self.events = Events()
        self.queue = JobQueue(store, runner, jobs_per_node, self.events)

    # -- identities -----------------------------------------------------------------------------
    def task_id(self, user: dict | None, kind: str, owner_id: int | None = None) -> str:
        """`<user><type><owner>d<dc>-<8>-<4>-<4>-<4>` hex; type e (job), a (automatic), d (synchronous)."""
        user_id = user["id"] if user else 0
        owner = owner_id if owner_id is not None else user_id
        h = secrets.token_hex(10)
        return "%d%s%dd%d-%s-%s-%s-%s" % (user_id, kind, owner, self.dc_id, h[:8], h[8:12], h[12:16], h[16:20])

    @property
    def jobs_per_node(self) -> int | None:
        """How many jobs run at once per backup node (None: no limit); the queue keeps the others waiting."""
        return self.queue.jobs_per_node

    @jobs_per_node.setter
    def jobs_per_node(self, value: int | None) -> None:
        self.queue.jobs_per_node = value

    def data_version(self) -> int:
        """Changes whenever a record changes (in this process or another): what cached answers key on."""
        return self.store.generation()

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
        view["keep_snapshot"] = definition.get("keep_snapshot", True)  # additive: older records keep the snapshot
        # Additive: when a drill last proved a backup of this definition restorable, and how long ago.
        view["verified"] = definition.get("verified")
        view["verified_age"] = int((now() - parse(view["verified"])).total_seconds()) if view["verified"] else None
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
            "compression": self._compression(fields, 0),
            "bwlimit": fields.integer("bwlimit", None, low=0, nullable=True) or None,
            "desc": fields.string("desc", "", max_length=128),
            "fsfreeze": fields.boolean("fsfreeze", False),
            "keep_snapshot": fields.boolean("keep_snapshot", True),
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

    @staticmethod
    def _compression(fields: validation.Fields, default):
        """0-3 as in the original API, or (an extension) the names the collection knows, e.g. zstd."""
        if not fields.has("compression"):
            return default
        try:
            return facts.compression(fields.data["compression"])
        except ValueError:
            fields.fail("compression", "Select a valid choice: %s."
                        % ", ".join(facts.API_COMPRESSIONS + facts.COMPRESSION_NAMES))
            return default

    def update_definition(self, user: dict, vm_name: str, name: str, data: dict) -> dict:
        vm, disk = self._writable_vm(user, vm_name, data)
        # Read, change and write under the store's lock: the scheduler writes `last_due` and `last_drill` of the
        # same record (under the lock too); a copy read before and written after it would undo them.
        with self.store.lock:
            return self._update_definition(vm, disk, name, data)

    def _update_definition(self, vm: dict, disk: dict, name: str, data: dict) -> dict:
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
            "compression": self._compression(fields, definition["compression"]),
            "bwlimit": (fields.integer("bwlimit", None, low=0, nullable=True) or None) if fields.has("bwlimit")
            else definition["bwlimit"],
            "desc": fields.string("desc", definition["desc"], max_length=128),
            "node": fields.string("node", definition["node"]),
            "zpool": fields.string("zpool", definition["zpool"]),
            "fsfreeze": fields.boolean("fsfreeze", definition["fsfreeze"]),
            "keep_snapshot": fields.boolean("keep_snapshot", definition.get("keep_snapshot", True)),
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
        view = {k: backup.get(k) for k in BACKUP_FIELDS + VERIFY_FIELDS}
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
        return self.queue.busy((vm_uuid, disk_id))

    def create_backup(self, user: dict, vm_name: str, bkpdef: str, data: dict, automatic: bool = False) -> str:
        """Start a backup job (a batch of one); return its task id (checks in API.md's order)."""
        plan = self._plan_backup(user, vm_name, bkpdef, data)
        task_id = self.task_id(user, "a" if automatic else "e")
        self._submit_backups(task_id, user, plan["node"], [plan], define=bkpdef)
        return task_id

    def _submit_backups(self, task_id: str, user: dict, node: str, plans: list[dict], **task) -> None:
        """Record the PENDING backups and their job's task (one commit) and start the job."""
        single = len(plans) == 1
        for n, plan in enumerate(plans):
            plan["item"]["progress_file"] = self.runner.progress_file(task_id, None if single else n)
        first = plans[0]
        # A batch of one also carries its item's variables at the top level, as backup.yml takes one disk.
        extravars = dict(first["item"]) if single else {"node": node, "backups": [p["item"] for p in plans]}
        record = self._task(task_id, user, BackupJob, extravars,
                            items=[{k: p[k] for k in ("vm_uuid", "hostname", "disk_id", "bkpname", "define")}
                                   for p in plans],
                            vm_uuid=first["vm_uuid"] if single else None,
                            hostname=first["hostname"] if single else None,
                            disk_id=first["disk_id"] if single else None,
                            bkpname=first["bkpname"] if single else [p["bkpname"] for p in plans],
                            view="vm_backup", method="POST", **task)

        def records() -> None:
            for plan in plans:
                self.store.insert_backup(plan["record"])

        self.queue.submit(record, records)

    def _plan_backup(self, user: dict, vm_name: str, bkpdef: str, data: dict) -> dict:
        """Every check of a create, in order; the record and the playbook item of the backup."""
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
        name = backup_name(bkpdef, created)
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
                  "zpool": definition["zpool"], "created": iso(created), "status": BackupStatus.PENDING, "size": None,
                  "time": None, "file_path": None, "note": note, "checksum": None,
                  "disk_size": disk.get("size"), "brand": vm.get("brand")}
        # Retention runs in the same run: the newest `retention` OK backups of the definition stay, and
        # those not OK (being restored, deleted or made) are never pruned.
        protect = [b["name"] for b in self.store.backups(vm_uuid=vm["uuid"])
                   if b["define"] == bkpdef and b["disk_id"] == disk["disk_id"] and b["status"] != BackupStatus.OK]
        item = {"node": definition["node"], "compute_node": vm["node"], "vm_uuid": vm["uuid"],
                "hostname": vm["hostname"], "disk_id": disk["disk_id"], "bkpdef": bkpdef, "bkpname": name,
                "zpool": definition["zpool"], "type": definition["type"],
                "compression": str(definition["compression"]), "bwlimit": definition["bwlimit"] or 0,
                "fsfreeze": definition["fsfreeze"], "keep_snapshot": definition.get("keep_snapshot", True),
                "retention": definition["retention"], "protect": protect}
        return {"vm_uuid": vm["uuid"], "hostname": vm["hostname"], "disk_id": disk["disk_id"], "bkpname": name,
                "define": bkpdef, "node": definition["node"], "record": record, "item": item}

    def create_batch(self, definitions: list[dict]) -> tuple[list[str], list[tuple[dict, str]]]:
        """Scheduled backups due together: per backup node up to `batch_runs` automatic runs (each compute
        node's disks in one of them), Ansible started once per run.

        Returns the batch task ids and the definitions that could not start, with the reason.
        """
        planned: dict[str, list[tuple[dict, dict]]] = collections.defaultdict(list)
        refused = []
        for definition in definitions:
            try:
                plan = self._plan_backup(SCHEDULER, definition["vm_uuid"], definition["name"],
                                         {"disk_id": definition["disk_id"]})
            except (errors.ApiError, errors.ValidationFailed) as err:
                refused.append((definition, getattr(err, "detail", None) or str(err)))
                continue
            planned[plan["node"]].append((definition, plan))
        started = []
        for node, pairs in planned.items():
            for group in spread(pairs, self.batch_runs):
                task_id = self.task_id(None, "a")
                claimed, disks = [], set()
                for definition, plan in group:
                    disk = (plan["vm_uuid"], plan["disk_id"])
                    if disk in disks or self.busy(*disk):  # two definitions of one disk due together: the first runs
                        refused.append((definition, errors.VM_PENDING))
                        continue
                    disks.add(disk)
                    claimed.append((definition, plan))
                if not claimed:
                    continue
                try:
                    self._submit_backups(task_id, SCHEDULER, node, [plan for _d, plan in claimed])
                except errors.Conflict:  # another process claimed one of the disks meanwhile
                    refused.extend((definition, errors.VM_PENDING) for definition, _p in claimed)
                    continue
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
        if backup["status"] != BackupStatus.OK:
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
        extravars = {"node": backup["node"], "zpool": backup["zpool"], "bkpname": backup["name"],
                     "type": backup["type"], "vm_uuid": backup["vm_uuid"], "disk_id": backup["disk_id"],
                     "hostname": backup["hostname"], "file_path": backup.get("file_path"),
                     "compute_node": target["node"], "target_compute_node": target["node"],
                     "target_vm_uuid": target["uuid"], "target_hostname": target["hostname"],
                     "target_disk_id": disk["disk_id"], "force": force}
        self.queue.submit(self._task(task_id, user, RestoreJob, extravars, vm_uuid=target["uuid"],
                                     hostname=target["hostname"], disk_id=disk["disk_id"], bkpname=backup["name"],
                                     backup_key=[backup["vm_uuid"], backup["disk_id"], backup["name"]],
                                     view="vm_backup", method="PUT"),
                          lambda: self.store.update_backup(backup["vm_uuid"], backup["disk_id"], backup["name"],
                                                           {"status": BackupStatus.RESTORE}))
        return task_id

    def delete_backup(self, user: dict, original: str, name: str, data: dict) -> str | dict:
        """Delete one backup: a LOST one from the records at once (returns a message), else by a job."""
        self.require_admin(user)
        backup = self.find_backup(user, original, name, data.get("disk_id"))
        if backup["status"] not in (BackupStatus.OK, BackupStatus.LOST):
            raise errors.ExpectationFailed(errors.BACKUP_STATUS_NOT_OK)
        if backup["status"] == BackupStatus.LOST:
            self.store.delete_backups(backup["vm_uuid"], backup["disk_id"], [backup["name"]])
            return {"message": "Backup successfully deleted from DB"}
        self.check_node(backup["node"])
        return self._delete_job(user, [backup])

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
        live = [b for b in found if b["status"] != BackupStatus.LOST]
        if any(b["status"] != BackupStatus.OK for b in live):
            raise errors.ExpectationFailed(errors.BACKUP_STATUS_NOT_OK)
        lost = [b for b in found if b["status"] == BackupStatus.LOST]
        if lost:
            self.store.delete_backups(lost[0]["vm_uuid"], lost[0]["disk_id"], [b["name"] for b in lost])
        if not live:
            return {"message": "Backup successfully deleted from DB"}
        self.check_node(live[0]["node"])
        return self._delete_job(user, live)

    def _delete_job(self, user: dict, backups: list[dict]) -> str:
        first = backups[0]
        task_id = self.task_id(user, "e")
        names = [b["name"] for b in backups]

        def records() -> None:
            for name in names:
                self.store.update_backup(first["vm_uuid"], first["disk_id"], name, {"status": BackupStatus.PENDING})

        extravars = self._backup_vars(first, bkpname=names)
        self.queue.submit(self._task(task_id, user, DeleteJob, extravars, vm_uuid=first["vm_uuid"],
                                     hostname=first["hostname"], disk_id=first["disk_id"], bkpname=names,
                                     view="vm_backup", method="DELETE"), records)
        return task_id

    def _backup_vars(self, backup: dict, **more) -> dict:
        """The playbook variables that name a backup on its node (and its VM's compute node, if the VM exists)."""
        extravars = {"node": backup["node"], "zpool": backup["zpool"], "bkpname": backup["name"],
                     "type": backup["type"], "vm_uuid": backup["vm_uuid"], "disk_id": backup["disk_id"],
                     "hostname": backup["hostname"]}
        vm = self.store.get_vm(backup["vm_uuid"])
        if vm:
            extravars["compute_node"] = vm["node"]
        return dict(extravars, **more)

    def _task(self, task_id: str, user: dict | None, job, extravars: dict, **fields) -> dict:
        """A job's task record: who, what, its playbook and extra vars (kept for a relaunch after a restart)."""
        return dict(fields, task_id=task_id, kind=job.kind, playbook=job.playbook, status=TaskStatus.PENDING,
                    username=user["username"] if user else "scheduler", user_id=user["id"] if user else 0,
                    started=iso(now()), result=None, node=extravars.get("node"), extravars=extravars)

    # -- restore drills -------------------------------------------------------------------------
    def verify_backup(self, user: dict, original: str, name: str, data: dict, automatic: bool = False) -> str:
        """Start a restore drill of a backup into scratch space on its backup node (never the VM's disk)."""
        self.require_admin(user)
        backup = self.find_backup(user, original, name, data.get("disk_id"))
        if backup["status"] != BackupStatus.OK:
            raise errors.ExpectationFailed(errors.BACKUP_STATUS_NOT_OK)
        self.check_node(backup["node"])
        task_id = self.task_id(user, "a" if automatic else "e")
        # Never while that disk has another job: a drill reads the source snapshot a backup may be replacing.
        extravars = self._backup_vars(backup)
        if backup.get("verify_digest"):
            extravars["expected_digest"] = backup["verify_digest"]
        self.queue.submit(self._task(task_id, user, VerifyJob, extravars, vm_uuid=backup["vm_uuid"],
                                     hostname=backup["hostname"], disk_id=backup["disk_id"], bkpname=backup["name"],
                                     backup_key=[backup["vm_uuid"], backup["disk_id"], backup["name"]],
                                     define=backup["define"], view="vm_backup_verify", method="PUT"))
        return task_id

    def drill_candidates(self) -> list[dict]:
        """Per active definition of a VM that exists: its newest OK backup (what a scheduled drill proves;
        a paused definition is not drilled either)."""
        current = {(d["vm_uuid"], d["disk_id"], d["name"]) for d in self.store.definitions() if d.get("active")}
        return [backup for key, backup in self.store.newest_backups(BackupStatus.OK).items() if key in current]

    # -- sync with the nodes --------------------------------------------------------------------
    def sync(self, user: dict | None, node: str | None = None, adopt: bool = False) -> str:
        """Start a sync of the records with what the backup nodes hold (all of them, or one); `adopt`: import
        the backups of VMs that no compute node reports too (an operator rebuilding a controller)."""
        if user is not None:
            self.require_admin(user)
        nodes = [{"node": record["name"], "pools": sorted((record.get("pools") or {}).keys())}
                 for record in self.store.nodes()
                 if "backup" in record.get("roles", []) and record.get("operational")
                 and node in (None, record["name"])]
        if node is not None and not nodes:
            raise errors.Locked(errors.NODE_NOT_OPERATIONAL)
        task_id = self.task_id(user, "e" if user else "a")
        self.queue.submit(self._task(task_id, user, SyncJob, {"sync_nodes": nodes, "node": None}, vm_uuid=None,
                                     hostname=None, disk_id=None, bkpname=None, view="sync", method="PUT",
                                     adopt=bool(adopt), import_limit=self.sync_import_limit))
        return task_id

    # -- tasks --------------------------------------------------------------------------------
    def recover(self) -> int:
        """At start: follow the jobs an earlier process left running, or apply how they ended."""
        return self.queue.recover()

    def visible_task(self, user: dict, task_id: str) -> dict:
        task = self.store.get_task(task_id)
        if task is None or not (user.get("is_admin") or task.get("user_id") == user["id"]):
            raise errors.NotFound(errors.TASK_NOT_FOUND)
        return task

    def pending_task_ids(self, user: dict) -> list[str]:
        return [t["task_id"] for t in self.store.pending_tasks()
                if user.get("is_admin") or t.get("user_id") == user["id"]]

    def task_log(self, user: dict) -> list[dict]:
        entries = [e for e in self.store.task_log() if user.get("is_admin") or e.get("username") == user["username"]]
        return sorted(entries, key=lambda e: e["time"], reverse=True)

    def task_info(self, user: dict, task_id: str) -> dict:
        """What a task is, and while it runs its current step and bytes sent."""
        task = self.visible_task(user, task_id)
        info = {k: task.get(k) for k in TASK_INFO}
        info["status"] = task["status"]
        if task["status"] == TaskStatus.PENDING:
            info["progress"] = self.runner.progress(task_id)
        return info

    def task_record(self, task_id: str) -> dict | None:
        return self.store.get_task(task_id)

    def cancel(self, user: dict, task_id: str) -> None:
        task = self.visible_task(user, task_id)
        if task["status"] != TaskStatus.PENDING:
            raise errors.NotAcceptable(errors.TASK_NOT_CANCELABLE)
        self.queue.cancel(task)


def spread(pairs: list[tuple[dict, dict]], runs: int) -> list[list[tuple[dict, dict]]]:
    """(definition, plan) pairs of one backup node in at most `runs` groups: each compute node's disks in one
    group (asked once for its VMs, its disks backed up one after another), the groups as even in disks as
    the compute nodes allow (the node with the most disks first, each to the smallest group)."""
    by_node: dict[str, list] = collections.defaultdict(list)
    for pair in pairs:
        by_node[pair[1]["item"]["compute_node"]].append(pair)
    groups: list[list] = [[] for _ in range(min(runs, len(by_node)))]
    for node_pairs in sorted(by_node.values(), key=len, reverse=True):
        min(groups, key=len).extend(node_pairs)
    return groups


def wait_for(service: Service, task_id: str, timeout: float | None = None, poll: float = 0.5) -> dict:
    """Block until a task ends (used by streams and tests); return its record."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        task = service.task_record(task_id)
        if task is None or task["status"] != TaskStatus.PENDING:
            return task
        if deadline is not None and time.monotonic() > deadline:
            return task
        time.sleep(poll)
