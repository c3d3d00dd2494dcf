#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_info
short_description: List the backups on this backup node, from the nodes' own records
description:
  - Lists the backups in a pool of the node it runs on, read from what the node holds, without any other record
    (the API's C(discover) rebuilds its index from it).
  - Dataset backups are the snapshots below C(<zpool>/backups/ds), described by their C(vmbackup:*) user properties
    and their manifests; backup datasets that M(vmbackup.zfs.send) kept aside after a broken chain are included.
  - File backups are the files C(<zpool>/backups/file/<vm_uuid>/disk<N>/<backup>-full.zfs[.ext]) with their
    manifests (C(<file>.json)) beside them.
  - Something that is only half there (a file without its manifest, a manifest without its file or snapshot, a
    snapshot without vmbackup properties) is listed with a C(problem) that says what is wrong.
  - Never changes anything.
version_added: "0.1.0"
author: vmbackup developers (@vmbackup)
requirements:
  - Python 3.8 or newer on the node
  - ZFS on the node (OpenZFS 2.x, illumos or zfs-fuse)
extends_documentation_fragment:
  - vmbackup.zfs.attributes.INFO_MODULE
  - vmbackup.zfs.attributes.FAILURE
seealso:
  - module: vmbackup.zfs.send
    description: Makes the backups listed here.
  - module: vmbackup.zfs.prune
    description: Deletes them.
  - module: vmbackup.zfs.restore
    description: Restores one into a VM disk.
options:
  zpool:
    description: The pool on this backup node to list.
    type: str
    required: true
  vm_uuid:
    description: List only the backups of this VM.
    type: str
  disk_id:
    description: List only the backups of this disk (the API's 1-based I(disk_id)).
    type: int
  definition:
    description: List only the backups made by this backup definition.
    type: str
  type:
    description: List only dataset (C(dataset) or C(1)) or file (C(file) or C(2)) backups.
    type: str
    choices: [dataset, file, "1", "2"]
"""

EXAMPLES = r"""
- name: Every backup on the backup node's pool
  vmbackup.zfs.backup_info:
    zpool: zones
  register: found

- name: The daily file backups of disk 1 of one VM
  vmbackup.zfs.backup_info:
    zpool: backup
    vm_uuid: 9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a
    disk_id: 1
    definition: daily
    type: file
"""

RETURN = r"""
backups:
  description: The backups, oldest first within each type (dataset backups, then file backups).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The backup's name.
      type: str
      sample: daily-20261128_040000
    vm_uuid:
      description: The uuid of the VM it was made of.
      type: str
      sample: 9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a
    hostname:
      description: The VM's hostname at backup time (null if not recorded).
      type: str
      sample: web01.example.com
    disk_id:
      description: The API's 1-based disk number.
      type: int
      sample: 1
    disk:
      description: The 0-based disk number, as in C(<vm_uuid>-disk<N>).
      type: int
      sample: 0
    definition:
      description: The backup definition that made it (null if not recorded).
      type: str
      sample: daily
    created:
      description: When it was made, ISO 8601 UTC.
      type: str
      sample: "2026-11-28T04:00:03.123456Z"
    size:
      description: Bytes sent when it was made (dataset backups, from the manifest, else the snapshot's
        C(referenced)), or the file's size.
      type: int
      sample: 41843149
    type:
      description: C(dataset) or C(file).
      type: str
      sample: dataset
    path:
      description: The snapshot's full name, or the file's path.
      type: str
      sample: backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0@daily-20261128_040000
    checksum:
      description: sha256 of the file, from its manifest (file backups).
      type: str
      sample: 9b74c9897bac770ffc029102a200c5de3e5f7a8a1f0c4b5e6a7d8c9b0a1e2f3d
    manifest:
      description: The manifest's path, or null when there is none.
      type: str
      sample: /backup/backups/manifests/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0/daily-20261128_040000.json
    problem:
      description: What is wrong with it, or null.
      type: str
      sample: "file without manifest: its checksum cannot be verified"
    dataset:
      description: The backup dataset holding the snapshot (dataset backups).
      type: str
      sample: backup/backups/ds/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
    guid:
      description: The snapshot's guid, the same as the source snapshot it was sent from (dataset backups).
      type: str
      sample: "11282167598858090038"
    kept_aside:
      description: Whether the snapshot lives in a backup dataset kept aside after a broken chain.
      type: bool
      sample: false
    holds:
      description:
        - How many user holds the snapshot has (C(userrefs)); vmbackup holds the base of the next incremental
          (tag C(vmbackup)) where the ZFS lists holds. Null for file backups.
      type: int
      sample: 1
    compression:
      description: The file's compression (file backups).
      type: str
      sample: zstd
zfs:
  description:
    - What this node's ZFS is and which of the features vmbackup uses it has, each read from what its C(zfs)
      says it takes (C(list_parsable), C(set_many), C(send_compressed), C(send_large_blocks), C(send_raw),
      C(send_estimate), C(resume), C(holds), C(bookmarks), C(receive_properties)).
  returned: success
  type: dict
  sample: {"implementation": "openzfs", "version": "zfs-2.3.2-2~bpo12+2", "features": ["holds", "bookmarks"]}
count:
  description: The number of backups listed.
  returned: always
  type: int
  sample: 7
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout, listing
from ansible_collections.vmbackup.zfs.plugins.module_utils.checks import check_names
from ansible_collections.vmbackup.zfs.plugins.module_utils.dataset import Dataset
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import fail
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import Node, ZfsError


def wanted(item: dict, p: dict) -> bool:
    """Whether a backup passes the module's filters."""
    return ((not p["vm_uuid"] or item["vm_uuid"] == p["vm_uuid"].lower())
            and (p["disk_id"] is None or item["disk_id"] == p["disk_id"])
            and (not p["definition"] or item["definition"] == p["definition"]))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "zpool": {"type": "str", "required": True},
            "vm_uuid": {"type": "str"},
            "disk_id": {"type": "int"},
            "definition": {"type": "str"},
            "type": {"type": "str", "choices": ["dataset", "file", "1", "2"]},
        },
        supports_check_mode=True,
    )
    p = module.params
    check_names(module, pools={"zpool": p["zpool"]})
    kind = {"1": "dataset", "2": "file"}.get(p["type"], p["type"])
    node = Node()
    items = []
    try:
        if not Dataset(node, p["zpool"]).exists():
            fail(module, "zpool: %s does not exist on this node" % p["zpool"])
        if kind in (None, "dataset"):
            items += listing.dataset_backups(node, p["zpool"])
        if kind in (None, "file"):
            root = Dataset(node, layout.file_backup_root(p["zpool"]))
            if root.exists() and root.mounted_at() is None:
                module.warn("%s is not mounted: its file backups are not listed" % root)
            items += listing.file_backups(node, p["zpool"])
    except (ZfsError, OSError) as err:
        fail(module, str(err), err)
    backups = [item for item in items if wanted(item, p)]
    module.exit_json(changed=False, backups=backups, count=len(backups), zfs=node.features.report())


if __name__ == "__main__":
    main()
