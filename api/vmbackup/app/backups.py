"""Backups: reading them, and the jobs that make, restore, delete and drill them or sync their records with the
nodes; each job's checks in the order API.md gives them, then its task recorded and handed to the queue."""

from __future__ import annotations

import collections
import os

from vmbackup.app.access import Access
from vmbackup.app.config import Config
from vmbackup.app.jobs import BackupJob, DeleteJob, RestoreJob, SyncJob, VerifyJob
from vmbackup.app.queue import JobQueue
from vmbackup.app.tasks import SCHEDULER, Tasks
from vmbackup.domain import errors, validation
from vmbackup.domain.clock import backup_name, iso, now
from vmbackup.domain.facts import TYPE_FILE, BackupStatus
from vmbackup.engine.protocol import Engine
from vmbackup.store.store import Store

BACKUP_FIELDS = ["hostname", "vm_uuid", "vm", "define", "name", "disk_id", "type", "node", "zpool", "created",
                 "status", "size", "time", "file_path", "note"]
# Additive fields (API.md section 6): when a restore drill last proved the backup, and how the last one went.
VERIFY_FIELDS = ["verified", "verify_status"]
BACKUP_ORDER = ["name", "disk_id", "size", "time", "created"]


class Backups:
    """The backup use cases: view, list, get, note; create (one, or a scheduled batch), restore, delete,
    verify (restore drills); sync with the backup nodes."""

    def __init__(self, store: Store, runner: Engine, queue: JobQueue, access: Access, tasks: Tasks,
                 config: Config):
        self.store = store
        self.runner = runner
        self.queue = queue
        self.access = access
        self.tasks = tasks
        self.size_limit = config.size_limit
        # Runs a backup node's scheduled batch is split into: one ansible-playbook works its tasks in a
        # single process, so a batch of 1,000 disks needs a run per controller CPU (compute nodes apart).
        self.batch_runs = max(1, config.batch_runs or os.cpu_count() or 1)
        self.sync_import_limit = config.sync_import_limit  # backups a sync imports from one backup node at most

    # -- reading ---------------------------------------------------------------------------------
    def view(self, backup: dict, hostnames: dict | None = None) -> dict:
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

    def visible(self, user: dict, original: str) -> list[dict]:
        """Backups made under hostname or uuid `original` that the user may see; 404 when that hostname
        was used by several VMs (their backups are then reached by uuid)."""
        owners = [u for u in self.store.backup_owners(original) if self.access.may_see(user, u)]
        if len(owners) > 1 and original not in owners:
            raise self.access.ambiguous(user, original, owners)
        return [b for b in self.store.backups(original) if self.access.may_see(user, b["vm_uuid"], b["hostname"])]

    def list(self, user: dict, original: str, params: dict) -> list:
        full = self.access.flag(params, "full")
        keys = validation.order_by(params.get("order_by"), BACKUP_ORDER, "-created")
        found = self.visible(user, original)
        if params.get("disk_id") not in (None, ""):
            disk_id = self.access.disk_id_param(params["disk_id"])
            found = [b for b in found if b["disk_id"] == disk_id]
        if params.get("define") not in (None, ""):
            found = [b for b in found if b["define"] == params["define"]]
        found = validation.sort(found, keys)
        if not full:
            return [b["name"] for b in found]
        hostnames: dict = {}
        return [self.view(b, hostnames) for b in found]

    def find(self, user: dict, original: str, name: str, disk_id) -> dict:
        disk_id = self.access.disk_id_param(disk_id)
        for backup in self.visible(user, original):
            if backup["name"] == name and backup["disk_id"] == disk_id:
                return backup
        raise errors.NotFound(errors.BACKUP_NOT_FOUND)

    def get(self, user: dict, original: str, name: str, params: dict) -> dict:
        return self.view(self.find(user, original, name, params.get("disk_id")))

    # -- jobs ------------------------------------------------------------------------------------
    def busy(self, vm_uuid: str, disk_id: int) -> str | None:
        return self.queue.busy((vm_uuid, disk_id))

    def create(self, user: dict, vm_name: str, bkpdef: str, data: dict, automatic: bool = False) -> str:
        """Start a backup job (a batch of one); return its task id (checks in API.md's order)."""
        plan = self._plan(user, vm_name, bkpdef, data)
        task_id = self.tasks.new_id(user, "a" if automatic else "e")
        self._submit(task_id, user, plan["node"], [plan], define=bkpdef)
        return task_id

    def _submit(self, task_id: str, user: dict, node: str, plans: list[dict], **task) -> None:
        """Record the PENDING backups and their job's task (one commit) and start the job."""
        single = len(plans) == 1
        for n, plan in enumerate(plans):
            plan["item"]["progress_file"] = self.runner.progress_file(task_id, None if single else n)
        first = plans[0]
        # A batch of one also carries its item's variables at the top level, as backup.yml takes one disk.
        extravars = dict(first["item"]) if single else {"node": node, "backups": [p["item"] for p in plans]}
        record = self.tasks.for_job(task_id, user, BackupJob, extravars,
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

    def _plan(self, user: dict, vm_name: str, bkpdef: str, data: dict) -> dict:
        """Every check of a create, in order; the record and the playbook item of the backup."""
        self.access.require_admin(user)
        vm = self.access.vm_for(user, vm_name)
        self.access.check_node(vm["node"])
        disk = self.access.disk(vm, data.get("disk_id", 1) if data.get("disk_id") not in (None, "") else 1)
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
        self.access.check_vm_operational(vm)
        if not vm.get("installed", True):
            raise errors.PreconditionRequired(errors.VM_NOT_INSTALLED)
        self.access.check_node(definition["node"])
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
                plan = self._plan(SCHEDULER, definition["vm_uuid"], definition["name"],
                                  {"disk_id": definition["disk_id"]})
            except (errors.ApiError, errors.ValidationFailed) as err:
                refused.append((definition, getattr(err, "detail", None) or str(err)))
                continue
            planned[plan["node"]].append((definition, plan))
        started = []
        for node, pairs in planned.items():
            for group in spread(pairs, self.batch_runs):
                task_id = self.tasks.new_id(None, "a")
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
                    self._submit(task_id, SCHEDULER, node, [plan for _d, plan in claimed])
                except errors.Conflict:  # another process claimed one of the disks meanwhile
                    refused.extend((definition, errors.VM_PENDING) for definition, _p in claimed)
                    continue
                started.append(task_id)
        return started, refused

    def set_note(self, user: dict, original: str, name: str, data: dict) -> dict:
        self.access.require_admin(user)
        backup = self.find(user, original, name, data.get("disk_id"))
        fields = validation.Fields(data)
        note = fields.string("note", "", max_length=128)
        fields.raise_if_any()
        self.store.update_backup(backup["vm_uuid"], backup["disk_id"], backup["name"], {"note": note})
        return self.view(dict(backup, note=note))

    def restore(self, user: dict, original: str, name: str, data: dict) -> str:
        self.access.require_admin(user)
        fields = validation.Fields(data)
        target_name = fields.string("target_hostname_or_uuid", required=True)
        target_disk_id = fields.integer("target_disk_id", required=True)
        force = fields.boolean("force", True)
        fields.integer("disk_id", 1)
        fields.raise_if_any()
        backup = self.find(user, original, name, data.get("disk_id"))
        if backup["status"] != BackupStatus.OK:
            raise errors.ExpectationFailed(errors.BACKUP_STATUS_NOT_OK)
        self.access.check_node(backup["node"])
        target = self.access.vm_for(user, target_name)
        self.access.check_node(target["node"])
        if target.get("locked"):
            raise errors.Locked(errors.VM_LOCKED)
        if (target.get("brand") or "kvm") != (backup.get("brand") or "kvm"):
            raise errors.PreconditionRequired(errors.BRAND_MISMATCH)
        disk = self.access.disk(target, target_disk_id, errors.INVALID_TARGET_DISK_ID)
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
        task_id = self.tasks.new_id(user, "e")
        extravars = {"node": backup["node"], "zpool": backup["zpool"], "bkpname": backup["name"],
                     "type": backup["type"], "vm_uuid": backup["vm_uuid"], "disk_id": backup["disk_id"],
                     "hostname": backup["hostname"], "file_path": backup.get("file_path"),
                     "compute_node": target["node"], "target_compute_node": target["node"],
                     "target_vm_uuid": target["uuid"], "target_hostname": target["hostname"],
                     "target_disk_id": disk["disk_id"], "force": force}
        task = self.tasks.for_job(task_id, user, RestoreJob, extravars, vm_uuid=target["uuid"],
                                  hostname=target["hostname"], disk_id=disk["disk_id"], bkpname=backup["name"],
                                  backup_key=[backup["vm_uuid"], backup["disk_id"], backup["name"]],
                                  view="vm_backup", method="PUT")
        self.queue.submit(task, lambda: self.store.update_backup(backup["vm_uuid"], backup["disk_id"], backup["name"],
                                                                 {"status": BackupStatus.RESTORE}))
        return task_id

    def delete(self, user: dict, original: str, name: str, data: dict) -> str | dict:
        """Delete one backup: a LOST one from the records at once (returns a message), else by a job."""
        self.access.require_admin(user)
        backup = self.find(user, original, name, data.get("disk_id"))
        if backup["status"] not in (BackupStatus.OK, BackupStatus.LOST):
            raise errors.ExpectationFailed(errors.BACKUP_STATUS_NOT_OK)
        if backup["status"] == BackupStatus.LOST:
            self.store.delete_backups(backup["vm_uuid"], backup["disk_id"], [backup["name"]])
            return {"message": "Backup successfully deleted from DB"}
        self.access.check_node(backup["node"])
        return self._delete_job(user, [backup])

    def delete_many(self, user: dict, original: str, data: dict) -> str | dict:
        self.access.require_admin(user)
        names = data.get("bkpnames")
        if isinstance(names, str):
            names = [n for n in names.replace(",", " ").split() if n]
        if not names or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise errors.PreconditionFailed(errors.INVALID_BKPNAMES)
        disk_id = self.access.disk_id_param(data.get("disk_id"), None)
        found = [b for b in self.visible(user, original) if b["name"] in names
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
        self.access.check_node(live[0]["node"])
        return self._delete_job(user, live)

    def _delete_job(self, user: dict, backups: list[dict]) -> str:
        first = backups[0]
        task_id = self.tasks.new_id(user, "e")
        names = [b["name"] for b in backups]

        def records() -> None:
            for name in names:
                self.store.update_backup(first["vm_uuid"], first["disk_id"], name, {"status": BackupStatus.PENDING})

        extravars = self._vars(first, bkpname=names)
        self.queue.submit(self.tasks.for_job(task_id, user, DeleteJob, extravars, vm_uuid=first["vm_uuid"],
                                             hostname=first["hostname"], disk_id=first["disk_id"], bkpname=names,
                                             view="vm_backup", method="DELETE"), records)
        return task_id

    def _vars(self, backup: dict, **more) -> dict:
        """The playbook variables that name a backup on its node (and its VM's compute node, if the VM exists)."""
        extravars = {"node": backup["node"], "zpool": backup["zpool"], "bkpname": backup["name"],
                     "type": backup["type"], "vm_uuid": backup["vm_uuid"], "disk_id": backup["disk_id"],
                     "hostname": backup["hostname"]}
        vm = self.store.get_vm(backup["vm_uuid"])
        if vm:
            extravars["compute_node"] = vm["node"]
        return dict(extravars, **more)

    # -- restore drills -------------------------------------------------------------------------
    def verify(self, user: dict, original: str, name: str, data: dict, automatic: bool = False) -> str:
        """Start a restore drill of a backup into scratch space on its backup node (never the VM's disk)."""
        self.access.require_admin(user)
        backup = self.find(user, original, name, data.get("disk_id"))
        if backup["status"] != BackupStatus.OK:
            raise errors.ExpectationFailed(errors.BACKUP_STATUS_NOT_OK)
        self.access.check_node(backup["node"])
        task_id = self.tasks.new_id(user, "a" if automatic else "e")
        # Never while that disk has another job: a drill reads the source snapshot a backup may be replacing.
        extravars = self._vars(backup)
        if backup.get("verify_digest"):
            extravars["expected_digest"] = backup["verify_digest"]
        self.queue.submit(self.tasks.for_job(task_id, user, VerifyJob, extravars, vm_uuid=backup["vm_uuid"],
                                             hostname=backup["hostname"], disk_id=backup["disk_id"],
                                             bkpname=backup["name"],
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
            self.access.require_admin(user)
        nodes = [{"node": record["name"], "pools": sorted((record.get("pools") or {}).keys())}
                 for record in self.store.nodes()
                 if "backup" in record.get("roles", []) and record.get("operational")
                 and node in (None, record["name"])]
        if node is not None and not nodes:
            raise errors.Locked(errors.NODE_NOT_OPERATIONAL)
        task_id = self.tasks.new_id(user, "e" if user else "a")
        self.queue.submit(self.tasks.for_job(task_id, user, SyncJob, {"sync_nodes": nodes, "node": None},
                                             vm_uuid=None, hostname=None, disk_id=None, bkpname=None, view="sync",
                                             method="PUT", adopt=bool(adopt), import_limit=self.sync_import_limit))
        return task_id


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
