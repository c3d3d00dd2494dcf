#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: send
short_description: Back up a VM disk snapshot to this backup node, as a dataset or a file
description:
  - Runs on the backup node and pulls the snapshot C(source@snapshot) from the compute node (over ssh,
    or locally when I(source_host) is not given) with C(zfs send).
  - C(type=dataset) receives it into C(<zpool>/backups/ds/<uuid>-disk<N>), with a full send the first time,
    then an incremental one from the newest snapshot both sides share (matched by guid). If they share
    none, or the backup dataset has moved past the source, the old backup dataset is kept aside under
    C(<name>-aside-<time>) and a new full send starts.
  - C(type=file) writes a full stream to C(<zpool>/backups/file/<uuid>/disk<N>/<backup>-full.zfs[.ext]),
    compressed as asked, with its sha256 checksum.
  - Each backup gets a manifest (JSON) beside it and vmbackup user properties on the received snapshot,
    so the backups on a node can be listed without any other record.
  - The stream runs as a pipeline of processes (C(zfs send | [pv] | compressor | zfs receive) or a file);
    no data passes through Python.
  - A failed or interrupted transfer leaves no partial file, no half-received snapshot or dataset, and
    (with I(destroy_snapshot_on_failure)) no new snapshot on the source; the next run starts clean.
version_added: "0.1.0"
author: vmbackup developers
extends_documentation_fragment:
  - vmbackup.zfs.node.SOURCE
options:
  source:
    description: The VM disk on the compute node, C(<pool>/<uuid>-disk<N>) or C(<pool>/<uuid>).
    type: str
    required: true
  snapshot:
    description: The name of the snapshot of I(source) to back up (made by M(vmbackup.zfs.snapshot)).
    type: str
    required: true
  type:
    description: C(dataset) (API type 1) receives into a dataset; C(file) (API type 2) writes a stream file.
    type: str
    choices: [dataset, file, "1", "2"]
    default: dataset
  zpool:
    description: The pool on this backup node that receives the backup.
    type: str
    required: true
  backup:
    description: The backup's name; defaults to I(snapshot).
    type: str
  definition:
    description: The backup definition that made this backup (stored in properties and the manifest).
    type: str
  hostname:
    description: The VM's hostname (stored, so that backups are found by it after the VM is gone).
    type: str
  vm_uuid:
    description: The VM's uuid; defaults to the uuid in I(source).
    type: str
  disk_id:
    description: The API's 1-based disk number; defaults to the disk number in I(source) plus one.
    type: int
  compression:
    description:
      - Compression of file backups. C(0) none, C(1) gzip, C(2) bzip2, C(3) xz as in the API, or the names
        C(none), C(gzip), C(bzip2), C(xz), and the faster C(zstd) and C(lz4). Ignored for dataset backups.
    type: str
    default: none
  bwlimit:
    description: Transfer rate limit in bytes per second; C(0) means unlimited.
    type: int
    default: 0
  manifest:
    description: What to record about the VM in the manifest (its definition at backup time).
    type: dict
    default: {}
  destroy_snapshot_on_failure:
    description:
      - When the transfer fails, destroy the source snapshot if it is a vmbackup snapshot (it carries
        C(vmbackup:backup)) that the backup node does not have, so that no half-made backup remains.
    type: bool
    default: true
  prune_source:
    description:
      - After a successful dataset backup, destroy the older vmbackup snapshots on the source that were
        sent to this same target (I(target_id)); the one just sent stays as the base of the next
        incremental. After a file backup (a full stream, the base of nothing), destroy the snapshot sent.
      - Also destroy older snapshots of the same I(definition) that were sent nowhere: a run that failed
        while the compute node was unreachable could not drop its snapshot then.
      - Snapshots sent to other targets, and snapshots not made by vmbackup, are never touched.
    type: bool
    default: false
  progress_file:
    description:
      - While the stream runs, keep a JSON file here with C(bytes) sent so far and the expected C(total)
        where ZFS can tell (null otherwise), refreshed every second; for the API's task progress.
    type: path
  target_id:
    description:
      - Names this target on the source's snapshots (C(vmbackup:target)); defaults to
        C(<this host>:<zpool>:<type>).
    type: str
notes:
  - Check mode says what would be sent (full or incremental, from which base, to where) and runs nothing. A
    I(snapshot) that does not exist yet (a check-mode run of M(vmbackup.zfs.snapshot) only predicts it) is
    planned as the newest snapshot of I(source).
  - On zfs-fuse (pool version 23) only C(zfs send -i/-I/-p/-R/-D) exist; no flags beyond those are used.
"""

EXAMPLES = r"""
- name: Dataset backup of disk 0, pulled from the compute node over ssh
  vmbackup.zfs.send:
    source: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
    snapshot: daily-20261128_040000
    source_host: node01.example.com
    source_key: /root/.ssh/vmbackup
    zpool: zones
    definition: daily
    hostname: web01.example.com
    prune_source: true

- name: File backup, zstd-compressed, limited to 50 MB/s
  vmbackup.zfs.send:
    source: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
    snapshot: weekly-20261128_040000
    type: file
    zpool: backup
    compression: zstd
    bwlimit: 50000000
"""

RETURN = r"""
backup:
  description: The backup's name.
  returned: always
  type: str
  sample: daily-20261128_040000
type:
  description: C(dataset) or C(file).
  returned: always
  type: str
source:
  description: The snapshot that was sent.
  returned: always
  type: str
  sample: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000
target:
  description: The backup dataset (dataset backups) or the file (file backups).
  returned: always
  type: str
  sample: backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
incremental:
  description: Whether the stream was incremental.
  returned: always
  type: bool
base:
  description: The snapshot name the incremental stream started from, or null for a full one.
  returned: always
  type: str
size:
  description:
    - Dataset backups, the bytes in the stream as counted by C(pv) (incremental backups, and any with
      I(bwlimit) or I(progress_file)); a full one without them is not metered (C(pv) costs a few percent
      of throughput) and reports the received snapshot's C(referenced) size. File backups, the file's size.
  returned: success
  type: int
  sample: 41843149
time:
  description: Seconds the transfer took.
  returned: success
  type: float
file_path:
  description: The backup file; null for dataset backups.
  returned: always
  type: str
checksum:
  description: sha256 of the backup file (hex); null for dataset backups.
  returned: always
  type: str
manifest:
  description: Where the manifest was written.
  returned: success
  type: str
kept_aside:
  description: The name the old backup dataset was moved to when the chain was broken, else null.
  returned: always
  type: str
pruned_source:
  description: Source snapshots destroyed by I(prune_source).
  returned: always
  type: list
  elements: str
cmd:
  description: The pipeline as a shell line (what ran, or would run in check mode).
  returned: always
  type: str
stages:
  description: Each stage's command, exit code and stderr, on failure.
  returned: on failure
  type: list
  elements: dict
"""

import os
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.zfs.plugins.module_utils import backup as common
from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.pipeline import Pipeline
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import (
    Node,
    Snapshot,
    ZfsError,
    check_host,
    check_names,
    dataset_exists,
    node_argument_spec,
    ssh_target_from_params,
)


class SendFailed(common.JobFailed):
    """The backup did not happen."""


class Backup:
    """One run of the module: the plan, the transfer, and the cleanup if it fails."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        p = module.params
        self.p = p
        self.source = Node(ssh_target_from_params(p, "source"))
        self.local = Node()
        uuid, disk = layout.disk_of(p["source"])
        self.vm_uuid = (p["vm_uuid"] or uuid).lower()
        self.disk = disk
        self.disk_id = p["disk_id"] if p["disk_id"] is not None else disk + 1
        self.kind = {"1": "dataset", "2": "file"}.get(p["type"], p["type"])
        self.name = p["backup"] or p["snapshot"]
        self.snapshot = "%s@%s" % (p["source"], p["snapshot"])
        self.target_id = p["target_id"] or "%s:%s:%s" % (socket.gethostname(), p["zpool"], self.kind)
        self.created = common.utc_now()
        self.result = {"changed": False, "backup": self.name, "type": self.kind, "source": self.snapshot,
                       "target": None, "incremental": False, "base": None, "file_path": None,
                       "checksum": None, "kept_aside": None, "pruned_source": [], "cmd": ""}
        # What this run made, so that a failure can undo exactly that.
        self._made_dataset: str | None = None
        self._made_snapshot: str | None = None
        self._aside: tuple[str, str] | None = None
        self._part: str | None = None

    # -- shared steps ---------------------------------------------------------------------------
    def source_snapshot(self):
        snaps = self.source.snapshots(self.p["source"], (layout.PROP_BACKUP, layout.PROP_TARGET,
                                                         layout.PROP_DEFINITION))
        by_name = {s.name: s for s in snaps}
        if self.p["snapshot"] in by_name:
            return by_name[self.p["snapshot"]], snaps
        if self.module.check_mode:
            # A playbook in check mode only predicted the snapshot: plan for it as the next one to be made.
            self.result["msg"] = "%s does not exist yet; planned as the newest snapshot of %s" % (
                self.snapshot, self.p["source"])
            newest = max([0] + [s.createtxg for s in snaps])
            return Snapshot(self.p["source"], self.p["snapshot"], createtxg=newest + 1), snaps
        raise SendFailed("snapshot: %s does not exist on %s" % (self.snapshot, self.source.name))

    def send_argv(self, base: str | None) -> list[str]:
        args = ["zfs", "send"]
        if base:
            args += ["-i", "@" + base]
        return self.source.argv(args + [self.snapshot])

    def estimate(self, snap, base: str | None) -> int | None:
        """The stream's expected size: `zfs send -nP` where it exists, else a full stream's `referenced`."""
        try:
            if self.source.features.send_estimate:
                args = ["zfs", "send", "-nP"] + (["-i", "@" + base] if base else []) + [self.snapshot]
                for line in self.source.run(args).stdout.splitlines():
                    if line.startswith("size"):
                        return int(line.split()[-1])
            if base is None:
                return int(self.source.get_one(snap.full, "referenced"))
        except (ZfsError, ValueError):
            pass
        return None

    def properties(self) -> dict:
        return common.backup_properties(self.name, self.p["definition"], self.vm_uuid, self.p["hostname"],
                                        self.disk_id, self.created, self.kind)

    def manifest(self, snap, extra: dict) -> dict:
        data = {
            "version": 1, "backup": self.name, "definition": self.p["definition"], "type": self.kind,
            "vm_uuid": self.vm_uuid, "hostname": self.p["hostname"], "disk_id": self.disk_id,
            "created": self.created, "zpool": self.p["zpool"],
            "source": {"node": self.source.name, "dataset": self.p["source"], "snapshot": self.p["snapshot"],
                       "guid": snap.guid},
            "zfs": {"source": self.source.features.implementation, "backup": self.local.features.implementation},
            "vm": self.p["manifest"],
        }
        data.update(extra)
        return data

    def transfer(self, pipeline: Pipeline, capture: bool = False, total: int | None = None) -> Pipeline:
        self.result["cmd"] = str(pipeline)
        return common.run_stream(pipeline, self.p["progress_file"], total, SendFailed, capture)

    def mark_and_prune_source(self, snap, snaps) -> None:
        """Tag the sent snapshot with this target; drop older ones sent to the same target.

        The backup is already committed: a failure here is a warning, not a failed backup.
        """
        try:
            self.source.set(snap.full, {layout.PROP_TARGET: self.target_id})
            if not self.p["prune_source"]:
                return
            if self.kind == "file":
                # A file backup is a full stream: its snapshot is the base of nothing.
                self.source.destroy(snap.full)
                self.result["pruned_source"].append(snap.full)
            for old in snaps:
                if old.createtxg >= snap.createtxg or old.properties.get(layout.PROP_BACKUP, "-") == "-":
                    continue
                sent_here = self.kind == "dataset" and old.properties.get(layout.PROP_TARGET) == self.target_id
                if sent_here or self.left_by_failed_run(old):
                    self.source.destroy(old.full)
                    self.result["pruned_source"].append(old.full)
        except ZfsError as err:
            self.module.warn("backup made, but the source snapshots were not tidied: %s" % err)

    def left_by_failed_run(self, old) -> bool:
        """An older snapshot of this definition that went nowhere: a run failed before it could drop it
        (the compute node was unreachable, or its ZFS down, when that run cleaned up)."""
        return bool(self.p["definition"]) and old.properties.get(layout.PROP_TARGET, "-") == "-" and \
            old.properties.get(layout.PROP_DEFINITION) == self.p["definition"]

    # -- dataset backups ------------------------------------------------------------------------
    def run_dataset(self) -> None:
        snap, snaps = self.source_snapshot()
        target = layout.dataset_backup_target(self.p["zpool"], self.vm_uuid, self.disk)
        self.result["target"] = target
        base, aside = None, None
        if self.local.exists(target):
            received = self.local.snapshots(target)
            if any(r.guid == snap.guid for r in received):
                self.result["size"] = 0
                self.result["msg"] = "%s is already on this node" % self.snapshot
                return  # idempotent: this backup exists
            source_guids = {s.guid for s in snaps}
            common_snaps = [r for r in received if r.guid in source_guids]
            if common_snaps and common_snaps[-1].guid == received[-1].guid:
                base = common_snaps[-1].name
            else:
                aside = "%s-aside-%s" % (target, self.created[:19].replace(":", "").replace("-", ""))
        self.result.update(incremental=base is not None, base=base, kept_aside=aside)

        pipeline = Pipeline().add(self.send_argv(base), "zfs send")
        # Count the stream's bytes where nothing else can say its size (incremental) or someone watches.
        count = base is not None or bool(self.p["progress_file"])
        pipeline.add(common.meter_stage(self.p["bwlimit"], count), "meter")
        receive = ["zfs", "receive", "-u"] + (["-F"] if base else []) + [target]
        pipeline.add(receive, "zfs receive")
        self.result["cmd"] = str(pipeline)
        self.result["changed"] = True
        if self.module.check_mode:
            return

        manifest_mount = self.local.ensure_filesystem(layout.manifest_root(self.p["zpool"]))
        parent = target.rsplit("/", 1)[0]
        if not self.local.exists(parent):
            self.local.create(parent, {"canmount": "off"})
        if aside:
            self.local.rename(target, aside)
            self._aside = (target, aside)
        if base is None:
            self._made_dataset = target
        else:
            self._made_snapshot = "%s@%s" % (target, self.p["snapshot"])
        self.transfer(pipeline, total=self.estimate(snap, base))

        received = "%s@%s" % (target, self.p["snapshot"])
        self._made_snapshot = received
        self.local.set(received, self.properties())
        size = common.metered_bytes(pipeline.stage("meter"))
        if size is None:
            size = int(self.local.get_one(received, "referenced"))
        self.result.update(size=size, time=round(pipeline.seconds, 3))
        path = layout.dataset_manifest_path(manifest_mount, self.vm_uuid, self.disk, self.name)
        common.write_json_atomic(path, self.manifest(snap, {
            "target": {"dataset": target, "snapshot": received}, "incremental": base is not None,
            "base": base, "size": size, "time": self.result["time"], "send_flags": ["-i"] if base else [],
            "kept_aside": aside}))
        self.result["manifest"] = path
        self.mark_and_prune_source(snap, snaps)
        self._made_dataset = self._made_snapshot = self._aside = None  # committed

    # -- file backups ---------------------------------------------------------------------------
    def run_file(self) -> None:
        snap, snaps = self.source_snapshot()
        compression = layout.compression_name(self.p["compression"])
        root = layout.file_backup_root(self.p["zpool"])
        if self.local.exists(root):
            mount = self.local.mountpoint(root)
        elif self.module.check_mode:
            mount = "/" + root  # where it will be once created
        else:
            mount = self.local.ensure_filesystem(root)
        folder = layout.file_backup_dir(mount, self.vm_uuid, self.disk)
        path = os.path.join(folder, layout.file_backup_name(self.name, compression))
        manifest_path = layout.file_manifest_path(path)
        self.result.update(target=path, file_path=path)
        existing = common.read_manifest(manifest_path)
        if os.path.exists(path) and existing and existing.get("checksum"):
            self.result.update(checksum=existing["checksum"], size=os.path.getsize(path),
                               manifest=manifest_path, msg="%s already exists" % path)
            return

        part = "%s%s%d" % (path, common.PART_MARK, os.getpid())
        pipeline = Pipeline().add(self.send_argv(None), "zfs send")
        # Always counted: the manifest's stream_size is what a restore later reports progress against.
        pipeline.add(common.meter_stage(self.p["bwlimit"]), "meter")
        pipeline.add(common.compress_stage(compression), compression)
        pipeline.add(common.tee_stage(part), "tee")
        pipeline.add(common.checksum_stage(), "sha256")
        self.result["cmd"] = str(pipeline)
        self.result["changed"] = True
        if self.module.check_mode:
            return

        os.makedirs(folder, exist_ok=True)
        common.remove_stale_parts(folder)
        self._part = part
        self.transfer(pipeline, capture=True, total=self.estimate(snap, None))

        checksum = pipeline.stdout.decode().split()[0]
        with open(part, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(part, path)
        self._part = None
        common.fsync_dir(folder)
        size = os.path.getsize(path)
        self.result.update(size=size, time=round(pipeline.seconds, 3), checksum=checksum)
        try:
            common.write_json_atomic(layout.file_manifest_path(path), self.manifest(snap, {
                "target": {"file": path}, "incremental": False, "base": None, "size": size,
                "time": self.result["time"], "compression": compression, "checksum": checksum,
                "checksum_algorithm": "sha256", "send_flags": [],
                "stream_size": common.metered_bytes(pipeline.stage("meter"))}))
        except OSError:
            os.unlink(path)
            raise
        self.result["manifest"] = layout.file_manifest_path(path)
        self.mark_and_prune_source(snap, snaps)

    # -- failure --------------------------------------------------------------------------------
    def undo(self) -> list[str]:
        """Put both nodes back as they were before this run; return what was done."""
        done: list[str] = []

        def attempt(label: str, action) -> None:
            try:
                if action() is not False:
                    done.append(label)
            except (ZfsError, OSError) as err:
                done.append("FAILED to %s: %s" % (label, err))

        if self._part and os.path.exists(self._part):
            attempt("remove partial file %s" % self._part, lambda: os.unlink(self._part))
        if self._made_dataset and self.local.exists(self._made_dataset):
            attempt("destroy half-made %s" % self._made_dataset,
                    lambda: self.local.destroy(self._made_dataset, recursive=True))
        elif self._made_snapshot and self.local.exists(self._made_snapshot):
            attempt("destroy half-made %s" % self._made_snapshot, lambda: self.local.destroy(self._made_snapshot))
        if self._aside:
            target, aside = self._aside
            attempt("move %s back to %s" % (aside, target), lambda: self.local.rename(aside, target))
        if self.p["destroy_snapshot_on_failure"]:
            attempt("destroy new source snapshot %s" % self.snapshot, self._drop_new_source_snapshot)
        return done

    def _drop_new_source_snapshot(self) -> bool:
        """Destroy the source snapshot if vmbackup made it and the backup node does not hold it."""
        # An unreachable compute node must show up as a failed cleanup, not as "no snapshot there".
        if not dataset_exists(self.source, self.snapshot):
            return False
        values = self.source.get([self.snapshot], ["guid", layout.PROP_BACKUP])[self.snapshot]
        if values.get(layout.PROP_BACKUP, "-") == "-":
            return False
        target = layout.dataset_backup_target(self.p["zpool"], self.vm_uuid, self.disk)
        if self.kind == "dataset" and self.local.exists(target):
            if any(r.guid == values.get("guid") for r in self.local.snapshots(target)):
                return False
        self.source.destroy(self.snapshot)
        return True


def main() -> None:
    spec = {
        "source": {"type": "str", "required": True},
        "snapshot": {"type": "str", "required": True},
        "type": {"type": "str", "choices": ["dataset", "file", "1", "2"], "default": "dataset"},
        "zpool": {"type": "str", "required": True},
        "backup": {"type": "str"},
        "definition": {"type": "str"},
        "hostname": {"type": "str"},
        "vm_uuid": {"type": "str"},
        "disk_id": {"type": "int"},
        "compression": {"type": "str", "default": "none"},
        "bwlimit": {"type": "int", "default": 0},
        "manifest": {"type": "dict", "default": {}},
        "destroy_snapshot_on_failure": {"type": "bool", "default": True},
        "prune_source": {"type": "bool", "default": False},
        "target_id": {"type": "str"},
        "progress_file": {"type": "path"},
    }
    spec.update(node_argument_spec("source"))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    check_names(module, datasets={"source": p["source"]},
                snapshots={"snapshot": p["snapshot"], "backup": p["backup"], "definition": p["definition"]},
                pools={"zpool": p["zpool"]})
    check_host(module, "source_host", p["source_host"])
    try:
        layout.disk_of(p["source"])
        layout.compression_name(p["compression"])
    except ValueError as err:
        module.fail_json(msg="%s: %s" % ("source" if "disk" in str(err) else "compression", err))
    if p["vm_uuid"] and not layout.UUID_RE.match(p["vm_uuid"]):
        module.fail_json(msg="vm_uuid: '%s' is not a uuid" % p["vm_uuid"])
    if p["bwlimit"] < 0:
        module.fail_json(msg="bwlimit: must be 0 (unlimited) or a number of bytes per second")
    for key in ("hostname", "target_id"):
        value = p[key]
        if value and (len(value) > 255 or any(c.isspace() or c in "\"'`$;&|<>\\" for c in value)):
            module.fail_json(msg="%s: '%s' contains characters not allowed in a name" % (key, value))

    common.stop_on_signals()
    run = Backup(module)
    try:
        if run.kind == "dataset":
            run.run_dataset()
        else:
            run.run_file()
    except (SendFailed, ZfsError, OSError, RuntimeError, common.Interrupted) as err:
        if module.check_mode:
            module.fail_json(msg=str(err), **run.result)
        extra = getattr(err, "extra", {})
        cleanup = run.undo()
        run.result["changed"] = False
        module.fail_json(msg=str(err), cleanup=cleanup, **dict(run.result, **extra))
    module.exit_json(**run.result)


if __name__ == "__main__":
    main()
