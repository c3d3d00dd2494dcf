#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: restore
short_description: Restore a dataset or file backup from this backup node into a VM disk
description:
  - Runs on the backup node and pushes a backup into the target VM disk I(target) on the compute node (over
    ssh, or locally when I(target_host) is not given).
  - A dataset backup is the snapshot C(<zpool>/backups/ds/<vm_uuid>-disk<disk>@<backup>) (or, after a broken
    chain, the same backup in a dataset that M(vmbackup.zfs.send) kept aside); it goes over with C(zfs send).
  - A file backup is C(<zpool>/backups/file/<vm_uuid>/disk<disk>/<backup>-full.zfs[.ext]). Its sha256 is
    checked against its manifest first; a file that does not match is refused before anything changes. It is
    decompressed by its extension (C(.gz), C(.bz2), C(.xz), C(.zst), C(.lz4) or none).
  - The target disk is first kept aside as C(<target>-restore-<time>) (unmounted); the backup is received in
    its place with C(zfs receive -u); the properties set on the old disk (quota, refquota, reservation,
    refreservation, recordsize, compression, mountpoint, volsize and the like, and all user properties such
    as C(vmbackup:hostname)) are set on the new one; it is mounted if the old one was. Only then is the old
    copy destroyed, with its snapshots.
  - Any failure, SIGTERM included, destroys the half-received disk and renames the old copy back, untouched
    (same guid, same snapshots, same data). When the target node cannot be reached (a cut link), the module
    waits up to 60 seconds for it to answer again before it gives up and says where the old disk is.
  - The snapshot that came with the stream is removed from the restored disk, so that it holds no snapshot.
version_added: "0.1.0"
author: vmbackup developers
extends_documentation_fragment:
  - vmbackup.zfs.node.TARGET
options:
  zpool:
    description: The pool on this backup node that holds the backup.
    type: str
    required: true
  backup:
    description: The backup's name, C(<bkpdef>-YYYYMMDD_HHMMSS).
    type: str
    required: true
  type:
    description: C(dataset) (API type 1) or C(file) (API type 2).
    type: str
    choices: [dataset, file, "1", "2"]
    default: dataset
  vm_uuid:
    description: The uuid of the VM the backup was made of (the original VM, which may no longer exist).
    type: str
    required: true
  disk:
    description:
      - The 0-based number of the backed-up disk (C(<vm_uuid>-disk<disk>)), that is the API's I(disk_id) minus
        one. It names the backup dataset or the folder of the backup files.
    type: int
    default: 0
  file_path:
    description:
      - The backup file, for file backups. Defaults to the file of I(backup) in the VM disk's folder, found
        whatever its compression. Its manifest is C(<file_path>.json).
    type: path
  target:
    description:
      - The VM disk to restore into, on the target node, for example C(zones/<uuid>-disk0); it must exist.
        It may be a disk of another VM than the one backed up. A disk with datasets below it is refused (they
        would go with the old disk).
    type: str
    required: true
  force:
    description:
      - With C(false), refuse (before changing anything) when the target disk has snapshots. With C(true)
        they are destroyed together with the old disk.
    type: bool
    default: true
  bwlimit:
    description: Transfer rate limit in bytes per second; C(0) means unlimited.
    type: int
    default: 0
  progress_file:
    description:
      - While the stream runs, keep a JSON file here with C(bytes) received so far and the expected C(total)
        (or null), refreshed every second; for the API's task progress.
    type: path
notes:
  - Check mode checks everything a restore needs (the target and its snapshots, the backup, the file's checksum)
    and says what would run; it changes nothing.
  - The API checks the target VM's state, brand and disk size before it calls this module; stop the VM first.
  - Restoring needs room for the old and the new disk at the same time on the target pool.
  - On zfs-fuse (pool version 23) there are no zvols; volume properties are handled where they exist.
"""

EXAMPLES = r"""
- name: Restore a dataset backup into the same disk, on a compute node reached by ssh
  vmbackup.zfs.restore:
    zpool: zones
    backup: daily-20261128_040000
    vm_uuid: 9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a
    disk: 0
    target: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
    target_host: node01.example.com
    target_key: /root/.ssh/vmbackup

- name: Restore a file backup into disk 1 of another VM, refusing if that disk has snapshots
  vmbackup.zfs.restore:
    zpool: backup
    backup: weekly-20261128_040000
    type: file
    vm_uuid: 9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a
    target: zones/5d0c7a12-8e4f-4b6a-b1c3-7e9d2a4f6b10-disk1
    force: false
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
target:
  description: The VM disk restored into.
  returned: always
  type: str
  sample: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
source:
  description: The backup snapshot (dataset backups) or file (file backups) the data came from.
  returned: when found
  type: str
  sample: backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000
file_path:
  description: The backup file; null for dataset backups.
  returned: always
  type: str
size:
  description: Bytes of the stream received.
  returned: success
  type: int
  sample: 41843149
time:
  description: Seconds the transfer took.
  returned: success
  type: float
kept_aside:
  description:
    - Where the old disk is kept. Null at the end of a successful restore (it was destroyed) and after a
      failure (it was renamed back); set only when the restore succeeded but the old copy could not be destroyed.
  returned: always
  type: str
checksum_verified:
  description: Whether the backup file's sha256 matched its manifest (false for dataset backups).
  returned: always
  type: bool
properties:
  description: The properties of the old disk set on the new one.
  returned: always
  type: dict
  sample: {"quota": "268435456", "vmbackup:hostname": "web01.example.com"}
dropped_snapshots:
  description: The target disk's snapshots that went with the old disk (I(force=true)).
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
failed_cmd:
  description: The zfs command that failed, with its C(rc) and C(stderr), when a zfs command (not the stream) failed.
  returned: on failure
  type: str
cleanup:
  description: What was done to put the target disk back as it was, on failure.
  returned: on failure
  type: list
  elements: str
"""

import functools
import os
import shlex
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.zfs.plugins.module_utils import backup as common
from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.pipeline import Pipeline
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import (
    Node,
    ZfsError,
    check_host,
    check_names,
    dataset_exists,
    local_properties,
    node_argument_spec,
    retry_busy,
    ssh_target_from_params,
)

# How long a failed restore waits for a target node it cannot reach (its old disk is aside) to answer again.
UNDO_WAIT = 60


class RestoreFailed(common.JobFailed):
    """The restore did not happen."""


class Restore:
    """One run of the module: the checks, the swap of the old disk for the new, and the undo if it fails."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.p = p = module.params
        self.local = Node()
        self.target = Node(ssh_target_from_params(p, "target"))
        self.disk = p["target"]
        self.kind = {"1": "dataset", "2": "file"}.get(p["type"], p["type"])
        self.vm_uuid = p["vm_uuid"].lower()
        self.aside = layout.restore_aside_name(self.disk, time.strftime(layout.BACKUP_TIME_FORMAT, time.gmtime()))
        self.result = {"changed": False, "backup": p["backup"], "type": self.kind, "target": self.disk,
                       "source": None, "file_path": None, "kept_aside": None, "checksum_verified": False,
                       "properties": {}, "dropped_snapshots": [], "cmd": ""}
        # What this run did to the target, so that a failure can undo exactly that.
        self._old_guid: str | None = None
        self._old_type: str | None = None
        self._was_mounted = False

    # -- checks (nothing changes) ---------------------------------------------------------------
    def check_target(self) -> None:
        """The target disk exists, and has no snapshots unless force; note what it is like."""
        if not dataset_exists(self.target, self.disk):
            raise RestoreFailed("target: %s does not exist on %s%s" % (self.disk, self.target.name,
                                                                      self._leftovers_hint()))
        values = self.target.get([self.disk], ["guid", "type", "mounted"])[self.disk]
        self._old_guid, self._was_mounted = values["guid"], values.get("mounted") == "yes"
        self._old_type = values["type"]
        children = self.target.children(self.disk)
        if children:
            # They would be renamed aside with it and destroyed with the old copy (an OS zone's delegated dataset).
            raise RestoreFailed("target: %s has datasets below it (%s) that a restore would destroy; restore "
                                "them as disks of their own" % (self.disk, ", ".join(children)))
        all_snaps = self.target.snapshots(self.disk, (layout.PROP_BACKUP,))
        snaps = [s.name for s in all_snaps]
        # vmbackup's own snapshots (the base of the next incremental) are not the VM's snapshots.
        own = [s.name for s in all_snaps if s.properties.get(layout.PROP_BACKUP, "-") == "-"]
        if own and not self.p["force"]:
            raise RestoreFailed("target: %s has %d snapshot(s) (%s); with force=false the restore is refused"
                                % (self.disk, len(own), ", ".join(own)))
        self.result["dropped_snapshots"] = snaps
        if dataset_exists(self.target, self.aside):
            raise RestoreFailed("target: %s already exists; another restore is running" % self.aside)

    def _leftovers_hint(self) -> str:
        """A restore killed outright (SIGKILL) leaves the old disk aside: say where, the operator decides."""
        parent = self.disk.rsplit("/", 1)[0]
        try:
            prefix = self.disk + layout.RESTORE_ASIDE_MARK
            kept = [c for c in self.target.children(parent) if c.startswith(prefix)]
        except ZfsError:
            return ""
        if not kept:
            return ""
        return ("; %s holds the disk as an interrupted restore kept it aside: rename it back to %s "
                "with zfs rename" % (", ".join(kept), self.disk))

    def dataset_source(self) -> tuple[list[str], int | None]:
        """The `zfs send` of the backup snapshot, and its expected size."""
        snapshot = "%s@%s" % (layout.dataset_backup_target(self.p["zpool"], self.vm_uuid, self.p["disk"]),
                              self.p["backup"])
        if not dataset_exists(self.local, snapshot):
            # The backup may be named apart from its snapshot, or live in a dataset kept aside.
            found = [b["path"] for b in common.dataset_backups(self.local, self.p["zpool"])
                     if b["vm_uuid"] == self.vm_uuid and b["disk"] == self.p["disk"] and b["name"] == self.p["backup"]
                     and b["dataset"]]
            if not found:
                raise RestoreFailed("backup: %s of %s is not on this node (no snapshot %s)"
                                    % (self.p["backup"], layout.disk_leaf(self.vm_uuid, self.p["disk"]), snapshot))
            snapshot = found[-1]
        self.result["source"] = snapshot
        dataset = snapshot.split("@", 1)[0]
        if self.local.get_one(dataset, "type") != self._old_type:
            raise RestoreFailed("backup: %s is a %s, the target %s a %s" % (
                snapshot, self.local.get_one(dataset, "type"), self.disk, self._old_type))
        return ["zfs", "send", snapshot], int(self.local.get_one(snapshot, "referenced"))

    def file_source(self) -> tuple[list[str], int | None]:
        """The decompression of the backup file, once its checksum matches its manifest."""
        path = self.p["file_path"]
        if not path:
            mount = common.mounted_at(self.local, layout.file_backup_root(self.p["zpool"]))
            found = common.find_backup_files(mount, self.vm_uuid, self.p["disk"], self.p["backup"]) if mount else []
            if not found:
                raise RestoreFailed("backup: %s of %s is not on this node" % (
                    self.p["backup"], layout.disk_leaf(self.vm_uuid, self.p["disk"])))
            if len(found) > 1:
                raise RestoreFailed("backup: %s has several files (%s); say which with file_path" % (
                    self.p["backup"], ", ".join(found)))
            path = found[0]
        self.result.update(source=path, file_path=path)
        try:
            compression = layout.compression_of_file(path)
        except ValueError as err:
            raise RestoreFailed("file_path: %s" % err) from err
        if not os.path.isfile(path):
            raise RestoreFailed("file_path: %s does not exist" % path)
        manifest = common.read_manifest(layout.file_manifest_path(path))
        if not manifest or not manifest.get("checksum"):
            raise RestoreFailed("%s has no readable manifest with a checksum (%s): it cannot be verified"
                                % (path, layout.file_manifest_path(path)))
        if manifest.get("backup") not in (None, self.p["backup"]):
            raise RestoreFailed("file_path: %s holds the backup %s, not %s" % (path, manifest["backup"],
                                                                             self.p["backup"]))
        checksum = common.sha256_of(path)
        if checksum != manifest["checksum"]:
            raise RestoreFailed("%s is damaged: its sha256 is %s, its manifest says %s; nothing was changed"
                                % (path, checksum, manifest["checksum"]), checksum=checksum)
        self.result["checksum_verified"] = True
        decompress = common.decompress_stage(compression)
        argv = decompress + [path] if decompress else ["cat", path]
        stream_size = manifest.get("stream_size")
        return argv, stream_size if isinstance(stream_size, int) else None

    # -- the restore ----------------------------------------------------------------------------
    def run(self) -> None:
        self.check_target()
        if self.kind == "dataset":
            source, total = self.dataset_source()
        else:
            source, total = self.file_source()
        pipeline = Pipeline().add(source, "zfs send" if self.kind == "dataset" else source[0])
        pipeline.add(common.meter_stage(self.p["bwlimit"]), "meter")
        pipeline.add(self.target.argv(["zfs", "receive", "-u", self.disk]), "zfs receive")
        self.result.update(cmd=str(pipeline), changed=True)
        if self.module.check_mode:
            self.result["msg"] = ("would keep %s aside as %s, receive %s in its place, set its properties, "
                                  "then destroy the old disk%s" % (
                                      self.disk, self.aside, self.result["source"],
                                      " and its snapshots" if self.result["dropped_snapshots"] else ""))
            return

        properties = {k: v for k, v in local_properties(self.target, self.disk).items()
                      if k in layout.RESTORE_PROPERTIES or ":" in k}
        old_blocksize = self.target.get_one(self.disk, "volblocksize")
        if self._was_mounted:
            retry_busy(lambda: self.target.zfs("unmount", self.disk))
        # Unmounted, it stays unmounted once renamed: the old and the new disk never share a mountpoint.
        retry_busy(lambda: self.target.rename(self.disk, self.aside))

        self.transfer(pipeline, total)
        for snap in self.target.snapshots(self.disk):
            retry_busy(functools.partial(self.target.destroy, snap.full))  # the one that came with the stream
        new = self.target.get([self.disk], ["type", "volsize", "volblocksize"])[self.disk]
        if new["type"] != self._old_type:
            raise RestoreFailed("the backup holds a %s, the target %s was a %s" % (new["type"], self.disk,
                                                                                  self._old_type))
        if new.get("volblocksize", "-") != old_blocksize:
            self.module.warn("volblocksize of %s is %s now (the backup's), it was %s" % (
                self.disk, new.get("volblocksize"), old_blocksize))
        if "volsize" in properties and int(properties["volsize"]) <= int(new["volsize"]):
            if int(properties["volsize"]) < int(new["volsize"]):
                self.module.warn("%s keeps the backup's volsize %s: shrinking it to the old %s could cut data"
                                 % (self.disk, new["volsize"], properties["volsize"]))
            properties.pop("volsize")
        for prop in sorted(properties, key=self._property_order):
            self.target.set(self.disk, {prop: properties[prop]})
        self.result["properties"] = properties
        if self._was_mounted and self.target.get_one(self.disk, "mounted") != "yes":
            self.target.zfs("mount", self.disk)

        # Committed: the new disk is complete. Dropping the old copy must not be cut short by a signal.
        common.ignore_signals()
        try:
            retry_busy(lambda: self.target.destroy(self.aside, recursive=True))
        except ZfsError as err:
            self.result["kept_aside"] = self.aside
            self.module.warn("restored, but the old disk kept aside as %s could not be destroyed (%s); "
                             "destroy it with zfs destroy -r when it is no longer busy" % (self.aside, err))
        self.result["msg"] = "restored %s (%s) into %s: %s bytes in %.1f s" % (
            self.p["backup"], self.result["source"], self.disk, self.result["size"], self.result["time"])

    @staticmethod
    def _property_order(prop: str) -> tuple[int, str]:
        order = layout.RESTORE_PROPERTIES
        return (order.index(prop), prop) if prop in order else (len(order), prop)

    def transfer(self, pipeline: Pipeline, total: int | None) -> None:
        common.run_stream(pipeline, self.p["progress_file"], total, RestoreFailed)
        size = common.metered_bytes(pipeline.stage("meter"))
        if size is None:
            size = int(self.target.get_one(self.disk, "referenced"))
        self.result.update(size=size, time=round(pipeline.seconds, 3))

    # -- failure --------------------------------------------------------------------------------
    def undo(self) -> list[str]:
        """Destroy the half-received disk and put the old one back; return what was done.

        What to do is read from the node, not from flags: a signal may have cut a rename short.
        """
        common.ignore_signals()  # a second SIGTERM must not leave the disk aside
        done: list[str] = []
        if self._old_guid is None:
            return done  # refused before anything changed
        if not self.target.is_local and not self._target_answers(UNDO_WAIT):
            done.append("FAILED to reach %s within %ds to put %s back; it may be kept aside as %s"
                        % (self.target.name, UNDO_WAIT, self.disk, self.aside))
            return done

        def attempt(label: str, action) -> bool:
            try:
                action()
                done.append(label)
                return True
            except (ZfsError, OSError) as err:
                done.append("FAILED to %s: %s" % (label, err))
                return False

        try:
            aside = dataset_exists(self.target, self.aside) and \
                self.target.get_one(self.aside, "guid") == self._old_guid
            if aside:
                if dataset_exists(self.target, self.disk):
                    if not attempt("destroy half-received %s" % self.disk, self._destroy_half_received):
                        return done
                attempt("rename %s back to %s" % (self.aside, self.disk),
                        lambda: retry_busy(lambda: self.target.rename(self.aside, self.disk)))
            if self._was_mounted and dataset_exists(self.target, self.disk) and \
                    self.target.get_one(self.disk, "mounted") != "yes":
                attempt("mount %s" % self.disk, lambda: retry_busy(lambda: self.target.zfs("mount", self.disk)))
        except ZfsError as err:
            done.append("FAILED to inspect %s: %s" % (self.disk, err))
        return done

    def _target_answers(self, wait: float) -> bool:
        """Whether the target node answers, asking again for up to `wait` seconds (a link that flapped)."""
        deadline = time.monotonic() + wait
        while self.target.run(["true"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(2)
        return True

    def _destroy_half_received(self) -> None:
        """A killed `zfs receive` removes its dataset itself, maybe while we look: gone counts as done."""
        try:
            retry_busy(lambda: self.target.destroy(self.disk, recursive=True))
        except ZfsError:
            if dataset_exists(self.target, self.disk):
                raise


def main() -> None:
    spec = {
        "zpool": {"type": "str", "required": True},
        "backup": {"type": "str", "required": True},
        "type": {"type": "str", "choices": ["dataset", "file", "1", "2"], "default": "dataset"},
        "vm_uuid": {"type": "str", "required": True},
        "disk": {"type": "int", "default": 0},
        "file_path": {"type": "path"},
        "target": {"type": "str", "required": True},
        "force": {"type": "bool", "default": True},
        "bwlimit": {"type": "int", "default": 0},
        "progress_file": {"type": "path"},
    }
    spec.update(node_argument_spec("target"))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    check_names(module, datasets={"target": p["target"]}, snapshots={"backup": p["backup"]},
                pools={"zpool": p["zpool"]})
    check_host(module, "target_host", p["target_host"])
    if not layout.UUID_RE.match(p["vm_uuid"]):
        module.fail_json(msg="vm_uuid: '%s' is not a uuid" % p["vm_uuid"])
    if p["disk"] < 0:
        module.fail_json(msg="disk: must be 0 or more (the API's disk_id minus one)")
    if p["bwlimit"] < 0:
        module.fail_json(msg="bwlimit: must be 0 (unlimited) or a number of bytes per second")
    if "/" not in p["target"]:
        module.fail_json(msg="target: %s is a pool, not a VM disk" % p["target"])
    if not p["target_host"] and (p["target"] + "/").startswith("%s/backups/" % p["zpool"]):
        module.fail_json(msg="target: %s is inside this node's backups, not a VM disk" % p["target"])

    common.stop_on_signals()
    run = Restore(module)
    try:
        run.run()
    except (RestoreFailed, ZfsError, OSError, RuntimeError, common.Interrupted) as err:
        extra = dict(getattr(err, "extra", {}))
        if isinstance(err, ZfsError):
            extra.update(failed_cmd=shlex.join(err.cmd), rc=err.rc, stderr=err.stderr)
        cleanup = [] if module.check_mode else run.undo()
        still_aside = any(line.startswith("FAILED") for line in cleanup)
        result = dict(run.result, changed=still_aside, cleanup=cleanup, dropped_snapshots=[],
                      kept_aside=run.aside if still_aside else None)
        result.update(extra)
        module.fail_json(msg=str(err), **result)
    module.exit_json(**run.result)


if __name__ == "__main__":
    main()
