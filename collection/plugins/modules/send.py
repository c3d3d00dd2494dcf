#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

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
author: vmbackup developers (@vmbackup)
requirements:
  - Python 3.8 or newer on the backup node
  - ZFS on both nodes (OpenZFS 2.x, illumos or zfs-fuse); C(ssh) from the backup node to the compute node
  - On the backup node, C(pv) (progress, I(bwlimit)) or C(mbuffer) (I(bwlimit) only); the compressor of
    I(compression); C(sha256sum) or C(openssl) for file backups
extends_documentation_fragment:
  - vmbackup.zfs.attributes
  - vmbackup.zfs.attributes.FAILURE
  - vmbackup.zfs.node.SOURCE
seealso:
  - module: vmbackup.zfs.snapshot
    description: Makes the snapshot this module sends.
  - module: vmbackup.zfs.prune
    description: Applies the retention after a backup.
  - module: vmbackup.zfs.restore
    description: Restores a backup made by this module.
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
      - Also destroy older snapshots of the same I(definition) that were sent nowhere, left by a run that
        failed while the compute node was unreachable (it could not drop its snapshot then).
      - Snapshots sent to other targets, and snapshots not made by vmbackup, are never touched.
    type: bool
    default: false
  progress_file:
    description:
      - While the stream runs, keep a JSON file here with C(bytes) sent so far and the expected C(total)
        where ZFS can tell (null otherwise), refreshed every second; for the API's task progress.
    type: path
  resume_attempts:
    description:
      - Where both ZFS can resume a receive (C(zfs receive -s), C(zfs send -t)), a dataset backup whose stream
        is cut leaves a resume token on this node, and is resumed from it up to this many times in the same
        run, I(resume_delay) seconds apart. A later run resumes a token it finds when the token's snapshot is
        still on the source and its base is this node's newest (then sends the rest incrementally), else
        aborts it (C(zfs receive -A)) and plans again. C(0) resumes only in later runs.
    type: int
    default: 2
  resume_delay:
    description: Seconds between two resume attempts in the same run.
    type: int
    default: 10
  keep_source_snapshot:
    description:
      - After a successful dataset backup, keep the snapshot just sent on the source as the base of the next
        incremental (held, tag C(vmbackup)). With C(false), where the source's ZFS has bookmarks (OpenZFS,
        illumos), the snapshot is destroyed once bookmarked and the next incremental starts from the bookmark;
        the compute node keeps no snapshot between backups, so no block the VM overwrites stays allocated for
        them. Where it has no bookmarks (zfs-fuse) the snapshot is kept all the same, with a warning.
      - A drill (M(vmbackup.zfs.verify)) then finds no source snapshot to compare a backup with; it compares with
        the digest of the backup's last good drill, so a backup's first drill needs I(expected_digest) from
        elsewhere (a drill made while the snapshot existed).
    type: bool
    default: true
  target_id:
    description:
      - Names this target on the source's snapshots (C(vmbackup:target)); defaults to
        C(<this host>:<zpool>:<type>).
    type: str
notes:
  - Check mode says what would be sent (full or incremental, from which base, to where) and runs nothing. A
    I(snapshot) that does not exist yet (a check-mode run of M(vmbackup.zfs.snapshot) only predicts it) is
    planned as the newest snapshot of I(source).
  - The diff is the disk's backups of this type on this node before and after.
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
  sample: dataset
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
  sample: true
base:
  description: The snapshot name the incremental stream started from, or null for a full one.
  returned: always
  type: str
  sample: daily-20261127_040000
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
  sample: 3.512
file_path:
  description: The backup file; null for dataset backups.
  returned: always
  type: str
  sample: /backup/backups/file/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a/disk0/weekly-20261128_040000-full.zfs.zst
checksum:
  description: sha256 of the backup file (hex); null for dataset backups.
  returned: always
  type: str
  sample: 9b74c9897bac770ffc029102a200c5de3e5f7a8a1f0c4b5e6a7d8c9b0a1e2f3d
manifest:
  description: Where the manifest was written.
  returned: success
  type: str
  sample: /backup/backups/manifests/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0/daily-20261128_040000.json
kept_aside:
  description: The name the old backup dataset was moved to when the chain was broken, else null.
  returned: always
  type: str
  sample: backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0-aside-20261128T040003
bookmark:
  description:
    - The bookmark made of the snapshot just sent, on the source, where its ZFS has bookmarks; older bookmarks
      of the same I(definition) are destroyed. When the base snapshot is gone from the source, the next
      incremental starts from this bookmark (C(base_bookmark)).
  returned: always
  type: str
  sample: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0#daily-20261128_040000
base_bookmark:
  description: Whether this incremental started from a bookmark of its base (the base snapshot was gone).
  returned: always
  type: bool
resumed:
  description:
    - The transfers this run resumed from a resume token (the snapshot, and the bytes this run sent for it),
      and C(aborted), the token it aborted because it did not fit what was planned (else null).
  returned: always
  type: dict
  sample: {"transfers": [{"snapshot": "daily-20261128_040000", "bytes": 134217728}], "aborted": null}
raw:
  description:
    - Whether the disk is encrypted (native ZFS encryption) and went raw (C(zfs send -w)), its blocks encrypted as
      they are on disk; the backup node never has its key (the manifest's C(encryption) says how it is encrypted).
  returned: always
  type: bool
  sample: false
resume_token_left:
  description: On failure, whether the cut transfer left a resume token on this node for a later run.
  returned: failure
  type: bool
held:
  description:
    - The snapshots given vmbackup's user hold (tag C(vmbackup)) as the base of the next incremental, on the
      source and on this node, where their ZFS has holds (OpenZFS, illumos); the hold of the bases before them
      is released. A C(zfs destroy) of a held snapshot fails, so no other tool's retention breaks the chain.
  returned: always
  type: list
  elements: str
  sample: [zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000]
pruned_source:
  description: Source snapshots destroyed by I(prune_source).
  returned: always
  type: list
  elements: str
  sample: [zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261127_040000]
cmd:
  description: The pipeline as a shell line (what ran, or would run in check mode).
  returned: always
  type: str
  sample: >-
    ssh -o BatchMode=yes -o ConnectTimeout=10 -p 22 -l root node01 -- 'env LC_ALL=C zfs send
    zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000' | zfs receive -u
    backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
diff:
  description: The names of this disk's backups (of this type) on this node before and after.
  returned: always
  type: dict
  sample: {"before": {"backups": [daily-20261127_040000]},
           "after": {"backups": [daily-20261127_040000, daily-20261128_040000]}}
"""

import os
import socket
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout, manifest, rawstream, receive, stream
from ansible_collections.vmbackup.zfs.plugins.module_utils.backup_source import file_reader
from ansible_collections.vmbackup.zfs.plugins.module_utils.checks import (
    check_host,
    check_label,
    check_names,
    check_path,
)
from ansible_collections.vmbackup.zfs.plugins.module_utils.dataset import Dataset, Snapshot, move_hold
from ansible_collections.vmbackup.zfs.plugins.module_utils.encryption import RAW_FLAG, encryption_of
from ansible_collections.vmbackup.zfs.plugins.module_utils.estimate import parse_send_plan
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import (
    Interrupted,
    JobFailed,
    fail,
    stop_on_signals,
    utc_now,
)
from ansible_collections.vmbackup.zfs.plugins.module_utils.pipeline import Pipeline
from ansible_collections.vmbackup.zfs.plugins.module_utils.transfer import Transfer
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import ZfsError, node_argument_spec


class SendFailed(JobFailed):
    """The backup did not happen."""


class Backup(Transfer):
    """One run of the module: the plan, the transfer, and the cleanup if it fails."""

    failed = SendFailed

    def __init__(self, module: AnsibleModule):
        super().__init__(module, "source")
        p = self.p
        self.source = self.peer
        uuid, disk = layout.disk_of(p["source"])
        self.vm_uuid = (p["vm_uuid"] or uuid).lower()
        self.disk = disk
        self.disk_id = p["disk_id"] if p["disk_id"] is not None else disk + 1
        self.name = p["backup"] or p["snapshot"]
        self.snapshot = "%s@%s" % (p["source"], p["snapshot"])
        self.target_id = p["target_id"] or "%s:%s:%s" % (socket.gethostname(), p["zpool"], self.kind)
        self.created = utc_now()
        self.result.update(backup=self.name, type=self.kind, source=self.snapshot, target=None, incremental=False,
                           base=None, file_path=None, checksum=None, kept_aside=None, held=[], pruned_source=[],
                           raw=False,
                           bookmark=None, base_bookmark=False, resumed={"transfers": [], "aborted": None},
                           diff={"before": {"backups": []}, "after": {"backups": []}})
        # What this run made, so that a failure can undo exactly that.
        self._made_dataset: str | None = None
        self._made_snapshot: str | None = None
        self._aside: tuple[str, str] | None = None
        self._part: str | None = None
        self._kind: str | None = None  # the source disk's type, once asked
        self._base_is_bookmark = False  # the incremental starts from a bookmark of the base (its snapshot gone)
        self._encryption: object = False  # the source disk's Encryption or None, once asked

    # -- shared steps ---------------------------------------------------------------------------
    def source_snapshot(self):
        snaps = Dataset(self.source, self.p["source"]).snapshots((layout.PROP_BACKUP, layout.PROP_TARGET,
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

    def source_kind(self) -> str:
        """"volume" or "filesystem": what the source disk is, so what the stream must hold (asked once)."""
        if self._kind is not None:
            return self._kind
        kind = self.source.get_one(self.p["source"], "type")
        if kind not in ("volume", "filesystem"):
            raise SendFailed("source: %s is a %s on %s, not a volume or a file system" % (
                self.p["source"], kind, self.source.name))
        self._kind = kind
        return kind

    def encryption(self):
        """The source disk's native encryption (asked once), or None. An encrypted disk is sent raw, and only to a
        backup node whose ZFS receives raw streams: a plain send would decrypt it on the way."""
        if self._encryption is False:
            self._encryption = encryption_of(self.source, self.p["source"])
            if self._encryption and not self.local.features.send_raw:
                raise SendFailed("source: %s is encrypted (%s) and the ZFS of this backup node (%s) cannot receive "
                                 "a raw stream (zfs send -w); a plain one would carry the data decrypted: back it "
                                 "up to a node with OpenZFS 0.8 or newer" % (
                                     self.p["source"], self._encryption.cipher, self.local.features.implementation))
        return self._encryption

    def send_flags(self, base: str | None) -> list[str]:
        """The flags of this backup's `zfs send` (recorded in its manifest, so a restore knows the stream): an
        encrypted disk goes raw (-w: its blocks as they are on disk, encrypted and compressed); an incremental
        starts from the base snapshot, or from its bookmark once the snapshot is gone."""
        start = ("#" if self._base_is_bookmark else "@") + base if base else None
        flags = [RAW_FLAG] if self.encryption() else self.stream_flags(self.source, self.local)
        return flags + (["-i", start] if start else [])

    def send_argv(self, base: str | None) -> list[str]:
        return self.source.argv(["zfs", "send"] + self.send_flags(base) + [self.snapshot])

    def estimate(self, snap, base: str | None) -> int | None:
        """The stream's expected size: `zfs send -nP` where it exists, else a full stream's `referenced`."""
        try:
            if self.source.features.send_estimate:
                args = ["zfs", "send", "-nP"] + self.send_flags(base) + [self.snapshot]
                size = parse_send_plan(self.source.run(args).stdout).get("size")
                if size is not None:
                    return size
            if base is None:
                return int(self.source.get_one(snap.full, "referenced"))
        except (ZfsError, ValueError):
            pass
        return None

    def properties(self) -> dict:
        return manifest.backup_properties(self.name, self.p["definition"], self.vm_uuid, self.p["hostname"],
                                          self.disk_id, self.created, self.kind)

    def record(self, snap, extra: dict) -> dict:
        data = {
            "version": 1, "backup": self.name, "definition": self.p["definition"], "type": self.kind,
            "vm_uuid": self.vm_uuid, "hostname": self.p["hostname"], "disk_id": self.disk_id,
            "created": self.created, "zpool": self.p["zpool"],
            "source": {"node": self.source.name, "dataset": self.p["source"], "snapshot": self.p["snapshot"],
                       "guid": snap.guid, "type": self._kind},
            "zfs": {"source": self.source.features.implementation, "backup": self.local.features.implementation},
            "encryption": self.encryption().record() if self.encryption() else None,
            "vm": self.p["manifest"],
        }
        data.update(extra)
        return data

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
                Dataset(self.source, snap.full).destroy()
                self.result["pruned_source"].append(snap.full)
            for old in snaps:
                if old.createtxg >= snap.createtxg or old.properties.get(layout.PROP_BACKUP, "-") == "-":
                    continue
                sent_here = self.kind == "dataset" and old.properties.get(layout.PROP_TARGET) == self.target_id
                if sent_here or self.left_by_failed_run(old):
                    Dataset(self.source, old.full).destroy()
                    self.result["pruned_source"].append(old.full)
        except ZfsError as err:
            self.module.warn("backup made, but the source snapshots were not tidied: %s" % err)

    def hold_base(self, snap, snaps, target: str, received: str) -> None:
        """The snapshot just sent is the base of the next incremental on both sides: hold it (tag vmbackup)
        and release the bases before it (on the source, those sent to this same target), where the ZFS has
        holds. The backup is already committed: a failure here is a warning."""
        try:
            if self.source.features.holds:
                older = [s.full for s in snaps if s.createtxg < snap.createtxg
                         and s.properties.get(layout.PROP_TARGET) == self.target_id]
                move_hold(self.source, snap.full, older)
                self.result["held"].append(snap.full)
            if self.local.features.holds:
                others = [s.full for s in Dataset(self.local, target).snapshots()]
                move_hold(self.local, received, others)
                self.result["held"].append(received)
        except ZfsError as err:
            self.module.warn("backup made, but its base snapshot is not held: %s" % err)

    def source_bookmarks(self) -> dict[str, str]:
        """The source disk's bookmarks, guid -> name, where its ZFS has bookmarks."""
        if not self.source.features.bookmarks:
            return {}
        out = self.source.zfs("list", "-H", "-p", "-o", "name,guid", "-t", "bookmark", "-d", "1", self.p["source"])
        marks = {}
        for line in out.splitlines():
            name, dummy, guid = line.partition("\t")
            if name.startswith(self.p["source"] + "#"):
                marks[guid.strip()] = name.split("#", 1)[1]
        return marks

    def bookmark_sent(self, snap) -> None:
        """Bookmark the snapshot just sent on the source (a bookmark keeps no blocks): should the snapshot go
        (an operator, another tool), the next incremental still starts from it. Older bookmarks of this
        definition go. The backup is committed: a failure here is a warning."""
        if not self.source.features.bookmarks:
            return
        mark = "%s#%s" % (self.p["source"], snap.name)
        try:
            marks = self.source_bookmarks()
            if snap.guid not in marks:
                self.source.zfs("bookmark", snap.full, mark)
            prefix = (self.p["definition"] or "") + "-"
            for guid, name in marks.items():
                if guid != snap.guid and self.p["definition"] and name.startswith(prefix):
                    self.source.zfs("destroy", "%s#%s" % (self.p["source"], name))
            self.result["bookmark"] = mark
        except ZfsError as err:
            self.module.warn("backup made, but the source snapshot is not bookmarked: %s" % err)

    def keep_only_bookmark(self, snap) -> None:
        """keep_source_snapshot=false: once the sent snapshot is bookmarked, destroy it (and its hold) on the source;
        the next incremental starts from the bookmark, and the disk keeps no snapshot between backups (no blocks
        the VM overwrote since stay allocated). Without a bookmark the snapshot is the only base: it stays."""
        if not self.result["bookmark"]:
            self.module.warn("keep_source_snapshot=false: %s stays, as the base of the next incremental, because "
                             "%s has no bookmark of it (its ZFS, %s, has %s)" % (
                                 snap.full, self.source.name, self.source.features.implementation,
                                 "bookmarks" if self.source.features.bookmarks else "no bookmarks"))
            return
        try:
            Dataset(self.source, snap.full).destroy()
            self.result["pruned_source"].append(snap.full)
            self.result["held"] = [name for name in self.result["held"] if name != snap.full]
        except ZfsError as err:
            self.module.warn("backup made and bookmarked, but %s was not destroyed: %s" % (snap.full, err))

    def left_by_failed_run(self, old) -> bool:
        """An older snapshot of this definition that went nowhere: a run failed before it could drop it
        (the compute node was unreachable, or its ZFS down, when that run cleaned up)."""
        return bool(self.p["definition"]) and old.properties.get(layout.PROP_TARGET, "-") == "-" and \
            old.properties.get(layout.PROP_DEFINITION) == self.p["definition"]

    # -- resumable transfers --------------------------------------------------------------------
    @property
    def resumable(self) -> bool:
        """Whether a cut stream can be resumed: `zfs receive -s` here and `zfs send -t` on the source."""
        return self.kind == "dataset" and self.source.features.resume and self.local.features.resume

    def resume_token(self, target: str) -> str | None:
        """The resume token a cut receive left on `target`, if any (read here: it needs no link)."""
        if not self.local.features.resume or not Dataset(self.local, target).exists():
            return None
        token = self.local.get_one(target, "receive_resume_token")
        return None if token in ("-", "") else token

    def token_plan(self, token: str) -> dict:
        """What a token would send, as `zfs send -nvPt` on the source says: toguid, fromguid (an incremental),
        toname (guids as decimal strings, as `zfs get` gives them) and `size`, the bytes left to send."""
        out = self.source.run(["zfs", "send", "-nvPt", token], check=False)
        return parse_send_plan(out.stdout + "\n" + out.stderr)

    def settle_token(self, target: str, snaps) -> str | None:
        """A token an earlier run left on `target`: resume it when its snapshot is still on the source and its
        base is this node's newest snapshot (the chain goes on from there), else abort it (`zfs receive -A`)
        and plan as if it had never been. Returns the name of a snapshot resumed that is not this run's."""
        token = self.resume_token(target)
        if token is None:
            return None
        plan = self.token_plan(token)
        by_guid = {s.guid: s for s in snaps}
        received = Dataset(self.local, target).snapshots()
        newest = received[-1].guid if received else None
        snap = by_guid.get(plan.get("toguid"))
        if snap is None or plan.get("fromguid") != newest or snap.name == self.p["snapshot"]:
            why = ("its snapshot %s is no longer on the source" % plan.get("toname", "?") if snap is None
                   else "it does not start from this node's newest snapshot" if plan.get("fromguid") != newest
                   else "this run sends its snapshot again, whole")
            self.result["resumed"]["aborted"] = "%s: %s" % (target, why)
            if not self.module.check_mode:
                self.local.zfs("receive", "-A", target)
            return None
        if self.module.check_mode:
            self.result["resumed"]["transfers"].append({"snapshot": snap.name, "bytes": None})
            return None
        kind = self.source_kind()
        pipeline = self.resume_pipeline(target, token, kind)
        self.transfer(pipeline, total=plan.get("size"))
        self.result["resumed"]["transfers"].append({"snapshot": snap.name,
                                                    "bytes": stream.metered_bytes(pipeline.stage("meter"))})
        self.check_received(target, kind)
        return None if snap.name == self.p["snapshot"] else snap.name

    def check_received(self, target: str, kind: str) -> None:
        """After every receive from the compute node (a resumed one too): `receive.check`, its refusal a
        failed backup (undone like any other)."""
        try:
            receive.check(self.local, target, kind, "compute node %s" % self.source.name)
        except receive.ReceiveRefused as err:
            raise SendFailed(str(err)) from err

    def resume_pipeline(self, target: str, token: str, kind: str) -> Pipeline:
        pipeline = Pipeline().add(self.source.argv(["zfs", "send", "-t", token]), "zfs send")
        pipeline.add(stream.meter_stage(self.p["bwlimit"], True), "meter")
        pipeline.add(receive.receive_argv(self.local, target, kind, resumable=True), "zfs receive")
        return pipeline

    def resume_after_cut(self, target: str, snap, cut: Pipeline, error: SendFailed) -> int | None:
        """The stream was cut: resume it from the token it left, up to `resume_attempts` times, `resume_delay`
        apart. Returns the bytes sent over all attempts (None when they cannot be counted); raises the last
        failure when there is no token or no attempt went through."""
        sent = stream.metered_bytes(cut.stage("meter")) or 0
        for _attempt in range(self.p["resume_attempts"] if self.resumable else 0):
            try:
                token = self.resume_token(target)
            except ZfsError:
                token = None
            if token is None:
                break
            time.sleep(self.p["resume_delay"])
            pipeline = self.resume_pipeline(target, token, self.source_kind())
            try:
                self.transfer(pipeline, total=self.token_plan(token).get("size"))  # what is left, for progress
            except SendFailed:  # the first failure says what cut the stream; this one says it again
                sent += stream.metered_bytes(pipeline.stage("meter")) or 0
                continue
            resumed = stream.metered_bytes(pipeline.stage("meter"))
            self.result["resumed"]["transfers"].append({"snapshot": snap.name, "bytes": resumed})
            return sent + resumed if resumed is not None else None
        raise error

    # -- dataset backups ------------------------------------------------------------------------
    def run_dataset(self) -> None:
        snap, snaps = self.source_snapshot()
        target = layout.dataset_backup_target(self.p["zpool"], self.vm_uuid, self.disk)
        self.result["target"] = target
        stale = self.settle_token(target, snaps)  # a transfer an earlier run left cut: resumed or aborted
        base, aside = None, None
        if Dataset(self.local, target).exists():
            received = Dataset(self.local, target).snapshots()
            self.diff([r.name for r in received], [r.name for r in received])
            if any(r.guid == snap.guid for r in received):
                self.result["size"] = 0
                self.result["msg"] = "%s is already on this node" % self.snapshot
                return  # idempotent: this backup exists
            source_guids = {s.guid for s in snaps}
            common_snaps = [r for r in received if r.guid in source_guids]
            marks = self.source_bookmarks() if received else {}
            # A raw incremental lands only on a raw copy: backups made plain (before the disk was sent raw) stay
            # aside, and a new chain starts.
            chain_fits = bool(self.encryption()) == bool(encryption_of(self.local, target))
            if not chain_fits:
                aside = "%s-aside-%s" % (target, self.created[:19].replace(":", "").replace("-", ""))
            elif common_snaps and common_snaps[-1].guid == received[-1].guid:
                base = common_snaps[-1].name
            elif received and received[-1].guid in marks:  # the base snapshot is gone, its bookmark is not
                base, self._base_is_bookmark = marks[received[-1].guid], True
            else:
                aside = "%s-aside-%s" % (target, self.created[:19].replace(":", "").replace("-", ""))
        self.result.update(incremental=base is not None, base=base, kept_aside=aside,
                           base_bookmark=self._base_is_bookmark, raw=bool(self.encryption()))
        before = self.result["diff"]["before"]["backups"]
        self.diff(before, ([] if aside else before) + [self.p["snapshot"]])

        pipeline = Pipeline().add(self.send_argv(base), "zfs send")
        # Count the stream's bytes where nothing else can say its size (incremental) or someone watches.
        count = base is not None or bool(self.p["progress_file"])
        pipeline.add(stream.meter_stage(self.p["bwlimit"], count), "meter")
        kind = self.source_kind()
        pipeline.add(receive.receive_argv(self.local, target, kind, force=base is not None,
                                          resumable=self.resumable), "zfs receive")
        self.result["cmd"] = str(pipeline)
        self.result["changed"] = True
        if self.module.check_mode:
            return

        manifest_mount = Dataset(self.local, layout.manifest_root(self.p["zpool"])).ensure_filesystem()
        receive.prepare_parent(self.local, target.rsplit("/", 1)[0])
        if aside:
            Dataset(self.local, target).rename(aside)
            self._aside = (target, aside)
        if base is None:
            self._made_dataset = target
        else:
            self._made_snapshot = "%s@%s" % (target, self.p["snapshot"])
        total = self.estimate(snap, base)
        try:
            self.transfer(pipeline, total=total)
            size = stream.metered_bytes(pipeline.stage("meter"))
        except SendFailed as err:
            size = self.resume_after_cut(target, snap, pipeline, err)
        self.check_received(target, kind)

        received = "%s@%s" % (target, self.p["snapshot"])
        self._made_snapshot = received
        self.local.set(received, self.properties())
        if size is None:
            size = int(self.local.get_one(received, "referenced"))
        if stale:  # the earlier run's snapshot, resumed as the base of this one: its backup had failed
            Dataset(self.local, "%s@%s" % (target, stale)).destroy()
        self.result.update(size=size, time=round(pipeline.seconds, 3))
        path = layout.dataset_manifest_path(manifest_mount, self.vm_uuid, self.disk, self.name)
        manifest.write_json_atomic(path, self.record(snap, {
            "target": {"dataset": target, "snapshot": received}, "incremental": base is not None,
            "base": base, "base_bookmark": self._base_is_bookmark, "size": size, "time": self.result["time"],
            "send_flags": [f for f in self.send_flags(base) if f.startswith("-")], "kept_aside": aside,
            "resumed": self.result["resumed"]["transfers"]}))
        self.result["manifest"] = path
        self.hold_base(snap, snaps, target, received)
        self.bookmark_sent(snap)
        self.mark_and_prune_source(snap, snaps)
        if not self.p["keep_source_snapshot"]:
            self.keep_only_bookmark(snap)
        self._made_dataset = self._made_snapshot = self._aside = None  # committed

    # -- file backups ---------------------------------------------------------------------------
    def run_file(self) -> None:
        snap, snaps = self.source_snapshot()
        self.source_kind()  # recorded: a drill receives the stream as that type and no other
        compression = layout.compression_name(self.p["compression"])
        root = Dataset(self.local, layout.file_backup_root(self.p["zpool"]))
        if root.exists():
            mount = root.mountpoint()
        elif self.module.check_mode:
            mount = "/" + root.name  # where it will be once created
        else:
            mount = root.ensure_filesystem()
        folder = layout.file_backup_dir(mount, self.vm_uuid, self.disk)
        path = os.path.join(folder, layout.file_backup_name(self.name, compression))
        manifest_path = layout.file_manifest_path(path)
        self.result.update(target=path, file_path=path)
        before = sorted(b for b in map(layout.backup_of_file, os.listdir(folder) if os.path.isdir(folder) else [])
                        if b)
        self.diff(before, before)
        existing = manifest.read_manifest(manifest_path)
        if os.path.exists(path) and existing and existing.get("checksum"):
            self.result.update(checksum=existing["checksum"], size=os.path.getsize(path),
                               manifest=manifest_path, msg="%s already exists" % path)
            return

        self.diff(before, sorted(set(before) | {self.name}))
        self.result["raw"] = bool(self.encryption())  # a raw stream in the file: the key stays on the source
        part = "%s%s%d" % (path, manifest.PART_MARK, os.getpid())
        pipeline = Pipeline().add(self.send_argv(None), "zfs send")
        # Always counted: the manifest's stream_size is what a restore later reports progress against.
        pipeline.add(stream.meter_stage(self.p["bwlimit"]), "meter")
        pipeline.add(stream.compress_stage(compression), compression)
        pipeline.add(stream.tee_stage(part), "tee")
        pipeline.add(stream.checksum_stage(), "sha256")
        self.result["cmd"] = str(pipeline)
        self.result["changed"] = True
        if self.module.check_mode:
            return

        os.makedirs(folder, exist_ok=True)
        manifest.remove_stale_parts(folder)
        self._part = part
        self.transfer(pipeline, capture=True, total=self.estimate(snap, None))

        checksum = pipeline.stdout.decode().split()[0]
        with open(part, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(part, path)
        self._part = None
        manifest.fsync_dir(folder)
        size = os.path.getsize(path)
        self.result.update(size=size, time=round(pipeline.seconds, 3), checksum=checksum)
        try:
            raw_digest = self.raw_digest_of(path) if self.encryption() else None
            manifest.write_json_atomic(layout.file_manifest_path(path), self.record(snap, {
                "target": {"file": path}, "incremental": False, "base": None, "size": size,
                "time": self.result["time"], "compression": compression, "checksum": checksum,
                "checksum_algorithm": "sha256", "send_flags": self.send_flags(None),
                "stream_size": stream.metered_bytes(pipeline.stage("meter")), "raw_digest": raw_digest}))
        except (OSError, SendFailed):
            os.unlink(path)
            raise
        self.result["manifest"] = layout.file_manifest_path(path)
        self.mark_and_prune_source(snap, snaps)

    def raw_digest_of(self, path: str) -> str:
        """The digest of the raw stream in a file backup of an encrypted disk (rawstream.py), read back from the
        file: what the compute node sent, which a drill compares its scratch copy with (no key needed)."""
        reading = Pipeline().add(file_reader(path), "read").add(rawstream.stage(), "raw digest")
        stream.run_stream(reading, None, None, SendFailed, capture=True)
        return reading.stdout.decode().split()[0]

    # -- failure --------------------------------------------------------------------------------
    def diff(self, before: list[str], after: list[str]) -> None:
        self.result["diff"] = {"before": {"backups": list(before)}, "after": {"backups": list(after)}}

    def undo(self) -> list[str]:
        """Put both nodes back as they were before this run; return what was done. A cut stream that left a
        resume token keeps it (and the source snapshot it resumes from) for the next run."""
        if self._part and os.path.exists(self._part):
            self.attempt("remove partial file %s" % self._part, lambda: os.unlink(self._part))
        target = self.result.get("target")
        try:
            token = self.resume_token(target) if target and self.kind == "dataset" else None
        except ZfsError:
            token = None
        if token and self._aside:  # the old chain goes back in place: nothing to resume into
            self.attempt("abort the cut receive into %s" % target, lambda: self.local.zfs("receive", "-A", target))
            token = None
        self.result["resume_token_left"] = bool(token)
        if token:
            self.cleanup.append("kept the resume token on %s and the source snapshot %s: the next run resumes "
                                "the transfer" % (target, self.snapshot))
            return self.cleanup
        made_dataset = Dataset(self.local, self._made_dataset) if self._made_dataset else None
        made_snapshot = Dataset(self.local, self._made_snapshot) if self._made_snapshot else None
        if made_dataset and made_dataset.exists():
            self.attempt("destroy half-made %s" % made_dataset, lambda: made_dataset.destroy(recursive=True))
        elif made_snapshot and made_snapshot.exists():
            self.attempt("destroy half-made %s" % made_snapshot, made_snapshot.destroy)
        if self._aside:
            target, aside = self._aside
            self.attempt("move %s back to %s" % (aside, target), lambda: Dataset(self.local, aside).rename(target))
        if self.p["destroy_snapshot_on_failure"]:
            self.attempt("destroy new source snapshot %s" % self.snapshot, self._drop_new_source_snapshot)
        return self.cleanup

    def _drop_new_source_snapshot(self) -> bool:
        """Destroy the source snapshot if vmbackup made it and the backup node does not hold it."""
        snapshot = Dataset(self.source, self.snapshot)
        if not snapshot.exists():
            return False
        values = snapshot.properties(["guid", layout.PROP_BACKUP])
        if values.get(layout.PROP_BACKUP, "-") == "-":
            return False
        target = Dataset(self.local, layout.dataset_backup_target(self.p["zpool"], self.vm_uuid, self.disk))
        if self.kind == "dataset" and target.exists():
            if any(r.guid == values.get("guid") for r in target.snapshots()):
                return False
        snapshot.destroy()
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
        "resume_attempts": {"type": "int", "default": 2},
        "resume_delay": {"type": "int", "default": 10},
        "keep_source_snapshot": {"type": "bool", "default": True},
    }
    spec.update(node_argument_spec("source"))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    check_names(module, datasets={"source": p["source"]},
                snapshots={"snapshot": p["snapshot"], "backup": p["backup"], "definition": p["definition"]},
                pools={"zpool": p["zpool"]})
    check_host(module, "source_host", p["source_host"])
    check_path(module, "progress_file", p["progress_file"])
    try:
        layout.disk_of(p["source"])
        layout.compression_name(p["compression"])
    except ValueError as err:
        option = "source" if "disk" in str(err) else "compression"
        fail(module, "%s: %s" % (option, err), option=option)
    check_names(module, uuids={"vm_uuid": p["vm_uuid"]})
    if p["bwlimit"] < 0:
        fail(module, "bwlimit: must be 0 (unlimited) or a number of bytes per second", option="bwlimit")
    for key in ("resume_attempts", "resume_delay"):
        if p[key] < 0:
            fail(module, "%s: must be 0 or more" % key, option=key)
    for key in ("hostname", "target_id"):
        check_label(module, key, p[key])

    stop_on_signals()
    run = Backup(module)
    try:
        if run.kind == "dataset":
            run.run_dataset()
        else:
            run.run_file()
    except (SendFailed, ZfsError, OSError, RuntimeError, Interrupted) as err:
        cleanup = [] if module.check_mode else run.undo()
        result = dict(run.result)
        result["changed"] = False
        result.update(getattr(err, "extra", {}))
        fail(module, str(err), err, cleanup, **result)
    module.exit_json(**run.result)


if __name__ == "__main__":
    main()
