#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

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
  - The backup is received beside the target disk, as C(<target>-restore-<time>-new) with C(zfs receive -u);
    the target disk stays as it is meanwhile. Once the new copy is complete, the two swap names (the old disk
    becomes C(<target>-restore-<time>), unmounted, for the few commands of the swap), the properties set on
    the old disk (quota, refquota, reservation, refreservation, recordsize, compression, mountpoint, volsize
    and the like, and all user properties such as C(vmbackup:hostname)) are set on the new one, it is mounted
    if the old one was, and only then is the old copy destroyed, with its snapshots.
  - Any failure, SIGTERM included, leaves the old disk as it was (same name, guid, snapshots and data). A
    failure while receiving (a cut link, a full pool) never touched it, and the partial copy is destroyed; a
    failure during the swap renames the old disk back. When the target node cannot be reached, the module
    waits up to 60 seconds for it to answer again; a partial copy it could not destroy is named in the
    result, and only a link lost in the middle of the swap can leave the old disk aside (the result says
    where).
  - The snapshot that came with the stream is removed from the restored disk, so that it holds no snapshot.
version_added: "0.1.0"
author: vmbackup developers (@vmbackup)
requirements:
  - Python 3.8 or newer on the backup node
  - ZFS on both nodes (OpenZFS 2.x, illumos or zfs-fuse); C(ssh) from the backup node to the compute node
  - On the backup node, C(pv) (progress, I(bwlimit)) or C(mbuffer) (I(bwlimit) only), C(sha256sum), and the
    decompressor of a file backup
extends_documentation_fragment:
  - vmbackup.zfs.attributes
  - vmbackup.zfs.attributes.FAILURE
  - vmbackup.zfs.node.TARGET
seealso:
  - module: vmbackup.zfs.backup_info
    description: Lists the backups that can be restored.
  - module: vmbackup.zfs.vm_info
    description: Finds the target VM's disks, their sizes and snapshots.
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
  vm_backend:
    description:
      - Who says whether the target VM runs, asked right before the swap (the transfer can take hours and the
        VM may have been started meanwhile). C(vmadm) is SmartOS (C(vmadm get)), C(libvirt) is C(virsh domstate)
        and C(zfs) is the target disk's C(vmbackup:state) property (unset means stopped). The backend
        M(vmbackup.zfs.vm_info) reported for the node. A VM that is not stopped then, or a hypervisor that does
        not answer, fails the restore with the disk as it was.
    type: str
    choices: [vmadm, libvirt, zfs]
    default: zfs
  target_vm_uuid:
    description:
      - The uuid of the VM that owns I(target), whose state I(vm_backend) is asked for. Defaults to the uuid in
        the target's name (C(<pool>/<uuid>-disk<N>)), else I(vm_uuid).
    type: str
  vmadm_command:
    description: The C(vmadm) command on the target node.
    type: str
    default: vmadm
  virsh_command:
    description: The C(virsh) command on the target node.
    type: str
    default: virsh
notes:
  - Check mode checks everything a restore needs (the target and its snapshots, the backup, the file's checksum)
    and says what would run; it changes nothing.
  - The API checks the target VM's state, brand and disk size before it calls this module; stop the VM first.
  - Restoring needs room for the old and the new disk at the same time on the target pool.
  - On zfs-fuse (pool version 23) there are no zvols; volume properties are handled where they exist.
  - The diff is the target disk's guid and snapshots before and after.
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
  sample: dataset
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
  sample: /backup/backups/file/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a/disk0/weekly-20261128_040000-full.zfs.zst
size:
  description: Bytes of the stream received.
  returned: success
  type: int
  sample: 41843149
time:
  description: Seconds the transfer took.
  returned: success
  type: float
  sample: 4.021
kept_aside:
  description:
    - Where the old disk is kept. Null at the end of a successful restore (it was destroyed) and after a
      failure (it was never moved, or renamed back); set when the restore succeeded but the old copy could not
      be destroyed, or when the target node was lost in the middle of the swap.
  returned: always
  type: str
  sample: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0-restore-20261128_050000
checksum_verified:
  description: Whether the backup file's sha256 matched its manifest (false for dataset backups).
  returned: always
  type: bool
  sample: true
raw:
  description:
    - Whether the backup is a raw stream of an encrypted disk (native ZFS encryption). It is sent back raw; the copy
      gets the disk's key on the target node (C(zfs load-key), from the C(keylocation) of the old disk's encryption
      root) before the swap, and inherits it again where the old disk did. A target that is not encrypted, or whose
      key is entered at a prompt, is refused before any data moves.
  returned: always
  type: bool
  sample: false
key_loaded_from:
  description: Where the restored copy's key was loaded from (the C(keylocation) of the old disk's encryption root).
  returned: always
  type: str
  sample: file:///etc/zfs/keys/zones.key
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
  sample: [daily-20261127_040000]
cmd:
  description: The pipeline as a shell line (what ran, or would run in check mode).
  returned: always
  type: str
  sample: >-
    zfs send backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000 | pv -n -b -i 1 |
    zfs receive -u zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
diff:
  description: The target disk's guid and snapshots before and after (the restored disk holds no snapshot).
  returned: always
  type: dict
  sample: {"before": {"disk": "zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0", "guid": "5270349870453413398",
                      "snapshots": [daily-20261127_040000]},
           "after": {"disk": "zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0", "guid": null, "snapshots": []}}
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout, listing, manifest, stream
from ansible_collections.vmbackup.zfs.plugins.module_utils.checks import check_host, check_names
from ansible_collections.vmbackup.zfs.plugins.module_utils.dataset import Dataset
from ansible_collections.vmbackup.zfs.plugins.module_utils.encryption import RAW_FLAG, encryption_of, is_raw
from ansible_collections.vmbackup.zfs.plugins.module_utils.hypervisor import StateUnknown, vm_state
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import (
    Interrupted,
    JobFailed,
    fail,
    ignore_signals,
    stop_on_signals,
)
from ansible_collections.vmbackup.zfs.plugins.module_utils.pipeline import Pipeline
from ansible_collections.vmbackup.zfs.plugins.module_utils.transfer import Transfer
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import ZfsError, node_argument_spec

# How long a failed restore waits for a target node it cannot reach (its old disk is aside) to answer again.
UNDO_WAIT = 60


class RestoreFailed(JobFailed):
    """The restore did not happen."""


class Restore(Transfer):
    """One run of the module: the checks, the swap of the old disk for the new, and the undo if it fails."""

    failed = RestoreFailed

    def __init__(self, module: AnsibleModule):
        super().__init__(module, "target")
        p = self.p
        self.target = self.peer
        self.disk = p["target"]
        self.vm_uuid = p["vm_uuid"].lower()
        stamp = time.strftime(layout.BACKUP_TIME_FORMAT, time.gmtime())
        self.aside = layout.restore_aside_name(self.disk, stamp)
        self.incoming = layout.restore_incoming_name(self.disk, stamp)
        self.result.update(backup=p["backup"], type=self.kind, target=self.disk, source=None, file_path=None,
                           kept_aside=None, checksum_verified=False, properties={}, dropped_snapshots=[],
                           raw=False, key_loaded_from=None,
                           diff={"before": None, "after": None})
        # What this run did to the target, so that a failure can undo exactly that.
        self._old_guid: str | None = None
        self._old_type: str | None = None
        self._was_mounted = False
        self._swapping = False  # from the first rename of the swap on, the old disk may be aside
        self._encryption = None  # the old disk's native encryption: the restored copy gets its key the same way
        self._raw = False  # the backup is a raw stream of an encrypted disk

    # -- checks (nothing changes) ---------------------------------------------------------------
    def check_target(self) -> None:
        """The target disk exists, and has no snapshots unless force; note what it is like."""
        disk = Dataset(self.target, self.disk)
        if not disk.exists():
            raise RestoreFailed("target: %s does not exist on %s%s"
                                % (self.disk, self.target.name, self._leftovers_hint()))
        values = disk.properties(["guid", "type", "mounted"])
        self._old_guid, self._was_mounted = values["guid"], values.get("mounted") == "yes"
        self._old_type = values["type"]
        self._encryption = encryption_of(self.target, self.disk)
        children = disk.children()
        if children:
            # They would be renamed aside with it and destroyed with the old copy (an OS zone's delegated dataset).
            raise RestoreFailed("target: %s has datasets below it (%s) that a restore would destroy; restore "
                                "them as disks of their own" % (self.disk, ", ".join(children)))
        all_snaps = disk.snapshots((layout.PROP_BACKUP,))
        snaps = [s.name for s in all_snaps]
        # vmbackup's own snapshots (the base of the next incremental) are not the VM's snapshots.
        own = [s.name for s in all_snaps if s.properties.get(layout.PROP_BACKUP, "-") == "-"]
        if own and not self.p["force"]:
            raise RestoreFailed("target: %s has %d snapshot(s) (%s); with force=false the restore is refused"
                                % (self.disk, len(own), ", ".join(own)))
        self.result["dropped_snapshots"] = snaps
        before = {"disk": self.disk, "guid": self._old_guid, "snapshots": snaps}
        self.result["diff"] = {"before": before, "after": dict(before, guid=None, snapshots=[])}
        for name in (self.aside, self.incoming):
            if Dataset(self.target, name).exists():
                raise RestoreFailed("target: %s already exists; another restore is running" % name)

    def _leftovers_hint(self) -> str:
        """A restore killed outright (SIGKILL) leaves the old disk aside: say where, the operator decides."""
        parent = self.disk.rsplit("/", 1)[0]
        try:
            prefix = self.disk + layout.RESTORE_ASIDE_MARK
            kept = [c for c in Dataset(self.target, parent).children()
                    if c.startswith(prefix) and not c.endswith(layout.RESTORE_INCOMING_SUFFIX)]
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
        if not Dataset(self.local, snapshot).exists():
            # The backup may be named apart from its snapshot, or live in a dataset kept aside.
            found = [b["path"] for b in listing.dataset_backups(self.local, self.p["zpool"])
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
        self.check_key(encryption_of(self.local, snapshot) is not None)
        flags = [RAW_FLAG] if self._raw else self.stream_flags(self.local, self.target)
        return ["zfs", "send"] + flags + [snapshot], int(self.local.get_one(snapshot, "referenced"))

    def check_key(self, raw: bool) -> None:
        """A raw backup (of an encrypted disk) goes back raw, and the restored copy needs the disk's key on the
        target node: refuse, before any data moves, what could not end with the key loaded."""
        self._raw = raw
        self.result["raw"] = raw
        if not raw:
            return
        if not self.target.features.send_raw:
            raise RestoreFailed("backup: %s is a raw stream of an encrypted disk; the ZFS of %s (%s) cannot receive it"
                                % (self.p["backup"], self.target.name, self.target.features.implementation))
        if self._encryption is None:
            raise RestoreFailed("target: %s is not encrypted, the backup %s is a raw stream of an encrypted disk: "
                                "its copy would need a key the target does not have; restore onto an encrypted "
                                "disk whose encryption root has the key" % (self.disk, self.p["backup"]))
        if self._encryption.keylocation in ("prompt", "none", "-"):
            raise RestoreFailed("target: the key of %s is entered at a prompt (keylocation=%s of %s): vmbackup cannot "
                                "load it into the restored copy; set keylocation to a file or URL, or restore by hand "
                                "with zfs send -w | zfs receive and zfs load-key" % (
                                    self.disk, self._encryption.keylocation, self._encryption.root))

    def unlock(self, incoming: Dataset) -> None:
        """A raw copy arrives as an encryption root of its own, its key not loaded: load the disk's key into it
        (from where the old disk's encryption root reads it), and where the old disk inherited its key from a
        parent, make the copy inherit it again."""
        enc = self._encryption
        own_root = enc.root == self.disk
        if own_root:
            self.target.set(incoming.name, {"keylocation": enc.keylocation})
            self.target.zfs("load-key", incoming.name)
        else:
            self.target.zfs("load-key", "-L", enc.keylocation, incoming.name)
            self.target.zfs("change-key", "-i", incoming.name)
        self.result["key_loaded_from"] = enc.keylocation

    def file_source(self) -> tuple[list[str], int | None]:
        """The decompression of the backup file, once its checksum matches its manifest."""
        path = self.p["file_path"]
        if not path:
            mount = Dataset(self.local, layout.file_backup_root(self.p["zpool"])).mounted_at()
            found = listing.find_backup_files(mount, self.vm_uuid, self.p["disk"], self.p["backup"]) if mount else []
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
        record = manifest.read_manifest(layout.file_manifest_path(path))
        if not record or not record.get("checksum"):
            raise RestoreFailed("%s has no readable manifest with a checksum (%s): it cannot be verified"
                                % (path, layout.file_manifest_path(path)))
        if record.get("backup") not in (None, self.p["backup"]):
            raise RestoreFailed("file_path: %s holds the backup %s, not %s"
                                % (path, record["backup"], self.p["backup"]))
        checksum = manifest.sha256_of(path)
        if checksum != record["checksum"]:
            raise RestoreFailed("%s is damaged: its sha256 is %s, its manifest says %s; nothing was changed"
                                % (path, checksum, record["checksum"]), checksum=checksum)
        self.result["checksum_verified"] = True
        self.check_key(is_raw(record.get("send_flags")))
        decompress = stream.decompress_stage(compression)
        argv = decompress + [path] if decompress else ["cat", path]
        stream_size = record.get("stream_size")
        return argv, stream_size if isinstance(stream_size, int) else None

    # -- the restore ----------------------------------------------------------------------------
    def run(self) -> None:
        self.check_target()
        if self.kind == "dataset":
            source, total = self.dataset_source()
        else:
            source, total = self.file_source()
        pipeline = Pipeline().add(source, "zfs send" if self.kind == "dataset" else source[0])
        pipeline.add(stream.meter_stage(self.p["bwlimit"]), "meter")
        pipeline.add(self.target.argv(["zfs", "receive", "-u", self.incoming]), "zfs receive")
        self.result.update(cmd=str(pipeline), changed=True)
        if self.module.check_mode:
            self.result["msg"] = ("would receive %s as %s beside %s, then swap them (the old disk as %s), set "
                                  "its properties, and destroy the old disk%s" % (
                                      self.result["source"], self.incoming, self.disk, self.aside,
                                      " and its snapshots" if self.result["dropped_snapshots"] else ""))
            return

        disk, incoming = Dataset(self.target, self.disk), Dataset(self.target, self.incoming)
        properties = {k: v for k, v in disk.local_properties().items()
                      if k in layout.RESTORE_PROPERTIES or ":" in k}
        old_blocksize = disk.get("volblocksize")
        self.transfer(pipeline, total)  # the long part: the disk is untouched while it runs
        for snap in incoming.snapshots():
            Dataset(self.target, snap.full).destroy()  # the one that came with the stream
        if self._raw:
            self.unlock(incoming)
        new = incoming.properties(["type", "volsize", "volblocksize", "guid"])
        self.result["diff"]["after"]["guid"] = new.get("guid")
        if new["type"] != self._old_type:
            raise RestoreFailed("the backup holds a %s, the target %s was a %s"
                                % (new["type"], self.disk, self._old_type))
        if new.get("volblocksize", "-") != old_blocksize:
            self.module.warn("volblocksize of %s is %s now (the backup's), it was %s" % (
                self.disk, new.get("volblocksize"), old_blocksize))

        self.check_vm_stopped()
        # The swap: a few quick commands. Unmounted, the old disk stays unmounted once renamed: the old and the
        # new disk never share a mountpoint.
        self._swapping = True
        if self._was_mounted:
            disk.unmount()
        disk.rename(self.aside)
        incoming.rename(self.disk)
        if "volsize" in properties and int(properties["volsize"]) <= int(new["volsize"]):
            if int(properties["volsize"]) < int(new["volsize"]):
                self.module.warn("%s keeps the backup's volsize %s: shrinking it to the old %s could cut data"
                                 % (self.disk, new["volsize"], properties["volsize"]))
            properties.pop("volsize")
        for prop in sorted(properties, key=self._property_order):
            self.target.set(self.disk, {prop: properties[prop]})
        self.result["properties"] = properties
        if self._was_mounted and disk.get("mounted") != "yes":
            disk.mount()

        # Committed: the new disk is complete. Dropping the old copy must not be cut short by a signal.
        ignore_signals()
        try:
            Dataset(self.target, self.aside).destroy(recursive=True)
        except ZfsError as err:
            self.result["kept_aside"] = self.aside
            self.module.warn("restored, but the old disk kept aside as %s could not be destroyed (%s); "
                             "destroy it with zfs destroy -r when it is no longer busy" % (self.aside, err))
        self.result["msg"] = "restored %s (%s) into %s: %s bytes in %.1f s" % (
            self.p["backup"], self.result["source"], self.disk, self.result["size"], self.result["time"])

    def check_vm_stopped(self) -> None:
        """Ask the target's hypervisor, now, whether the VM that owns the disk is stopped."""
        p = self.p
        owner = p["target_vm_uuid"]
        if not owner:
            owner = layout.disk_of(self.disk)[0] if layout.is_disk_dataset(self.disk) else self.vm_uuid
        try:
            state = vm_state(self.target, p["vm_backend"], owner, self.disk, vmadm=p["vmadm_command"],
                             virsh=[p["virsh_command"]])
        except StateUnknown as err:
            raise RestoreFailed("target: cannot tell whether the VM of %s is stopped (%s); the disk is as it was"
                                % (self.disk, err)) from err
        if state != "stopped":
            raise RestoreFailed("target: the VM of %s is %s now (it was stopped when the restore was asked for); "
                                "the disk is as it was: stop the VM and restore again" % (self.disk, state))

    @staticmethod
    def _property_order(prop: str) -> tuple[int, str]:
        order = layout.RESTORE_PROPERTIES
        return (order.index(prop), prop) if prop in order else (len(order), prop)

    def transfer(self, pipeline: Pipeline, total: int | None = None, capture: bool = False) -> Pipeline:
        super().transfer(pipeline, total, capture)
        size = stream.metered_bytes(pipeline.stage("meter"))
        if size is None:
            size = int(self.target.get_one(self.disk, "referenced"))
        self.result.update(size=size, time=round(pipeline.seconds, 3))
        return pipeline

    # -- failure --------------------------------------------------------------------------------
    def undo(self) -> list[str]:
        """Destroy the new copy and, if the swap had begun, put the old disk back; return what was done.

        What to do is read from the node, not from flags: a signal may have cut a rename short. Lines that
        start with FAILED mean the old disk may not be in its place; LEFT names a partial copy to destroy.
        """
        ignore_signals()  # a second SIGTERM must not leave the disk aside
        if self._old_guid is None:
            return self.cleanup  # refused before anything changed
        if not self.target.is_local and not self._target_answers(UNDO_WAIT):
            if self._swapping:
                self.cleanup.append("FAILED to reach %s within %ds to put %s back; it may be kept aside as %s"
                                    % (self.target.name, UNDO_WAIT, self.disk, self.aside))
            else:
                self.cleanup.append("LEFT %s on %s, which did not answer within %ds: %s is as it was; destroy the "
                                    "partial copy with zfs destroy -r once the node answers"
                                    % (self.incoming, self.target.name, UNDO_WAIT, self.disk))
            return self.cleanup
        disk, aside = Dataset(self.target, self.disk), Dataset(self.target, self.aside)
        incoming = Dataset(self.target, self.incoming)
        try:
            if aside.exists() and aside.get("guid") == self._old_guid:
                if disk.exists():  # the new copy, renamed in already
                    if not self.attempt("destroy the new copy %s" % disk, lambda: self._destroy_new(disk)):
                        return self.cleanup
                self.attempt("rename %s back to %s" % (aside, disk), lambda: aside.rename(self.disk))
            if incoming.exists():
                try:
                    self._destroy_new(incoming)
                    self.cleanup.append("destroy half-received %s" % incoming)
                except ZfsError as err:  # the disk is not at stake: say what is left, not FAILED
                    self.cleanup.append("LEFT %s (%s): %s is as it was; destroy the partial copy with zfs "
                                        "destroy -r" % (incoming, err, self.disk))
            if self._was_mounted and disk.exists() and disk.get("mounted") != "yes":
                self.attempt("mount %s" % disk, disk.mount)
        except ZfsError as err:
            self.cleanup.append("FAILED to inspect %s: %s" % (disk, err))
        return self.cleanup

    def _target_answers(self, wait: float) -> bool:
        """Whether the target node answers, asking again for up to `wait` seconds (a link that flapped)."""
        deadline = time.monotonic() + wait
        while self.target.run(["true"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(2)
        return True

    @staticmethod
    def _destroy_new(dataset: Dataset) -> None:
        """A killed `zfs receive` removes its dataset itself, maybe while we look: gone counts as done."""
        try:
            dataset.destroy(recursive=True)
        except ZfsError:
            if dataset.exists():
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
        "vm_backend": {"type": "str", "choices": ["vmadm", "libvirt", "zfs"], "default": "zfs"},
        "target_vm_uuid": {"type": "str"},
        "vmadm_command": {"type": "str", "default": "vmadm"},
        "virsh_command": {"type": "str", "default": "virsh"},
    }
    spec.update(node_argument_spec("target"))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    check_names(module, datasets={"target": p["target"]}, snapshots={"backup": p["backup"]},
                pools={"zpool": p["zpool"]})
    check_host(module, "target_host", p["target_host"])
    check_names(module, uuids={"vm_uuid": p["vm_uuid"], "target_vm_uuid": p["target_vm_uuid"]})
    for option in ("vmadm_command", "virsh_command"):
        if p[option].startswith("-") or any(c.isspace() for c in p[option]):
            fail(module, "%s: '%s' is not a command name" % (option, p[option]), option=option)
    if p["disk"] < 0:
        fail(module, "disk: must be 0 or more (the API's disk_id minus one)", option="disk")
    if p["bwlimit"] < 0:
        fail(module, "bwlimit: must be 0 (unlimited) or a number of bytes per second", option="bwlimit")
    if "/" not in p["target"]:
        fail(module, "target: %s is a pool, not a VM disk" % p["target"], option="target")
    if not p["target_host"] and (p["target"] + "/").startswith("%s/backups/" % p["zpool"]):
        fail(module, "target: %s is inside this node's backups, not a VM disk" % p["target"], option="target")

    stop_on_signals()
    run = Restore(module)
    try:
        run.run()
    except (RestoreFailed, ZfsError, OSError, RuntimeError, Interrupted) as err:
        cleanup = [] if module.check_mode else run.undo()
        still_aside = any(line.startswith("FAILED") for line in cleanup)
        result = dict(run.result)
        result.update({"changed": still_aside, "dropped_snapshots": [],
                       "kept_aside": run.aside if still_aside else None})
        if not still_aside:
            result["diff"] = {"before": result["diff"]["before"], "after": result["diff"]["before"]}
        result.update(getattr(err, "extra", {}))
        fail(module, str(err), err, cleanup, **result)
    module.exit_json(**run.result)


if __name__ == "__main__":
    main()
