#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vm_info
short_description: List the VMs of a compute node with their disks, sizes, brand and state
description:
  - Asks the node it runs on which VMs it has, read-only. Each VM comes with its uuid, hostname, brand,
    state (C(running), C(stopped), or what the hypervisor says otherwise) and its disks (1-based
    C(disk_id), ZFS dataset, size in bytes, number of snapshots).
  - "Three backends: SmartOS C(vmadm lookup -j) (JSON: C(disks[].zfs_filesystem) with C(size) in MiB for
    KVM and bhyve, C(zfs_filesystem) with C(quota) in GiB for OS zones); libvirt (C(virsh list --all
    --uuid), C(virsh dumpxml), C(virsh domstate), C(virsh domblkinfo); disks whose source is a ZFS zvol
    C(/dev/zvol/<pool>/<name>)); and plain ZFS, where a VM is the datasets C(<pool>/<uuid>-disk<N>) (or
    C(<pool>/<uuid>)) with the user properties C(vmbackup:hostname), C(vmbackup:brand) (default C(kvm)),
    C(vmbackup:state) (default C(stopped)) and optionally C(vmbackup:qga_socket)."
  - Snapshots made by vmbackup (they carry C(vmbackup:backup)) are counted apart from the others, so
    that a restore with C(force=false) only refuses disks that have snapshots of their own.
version_added: "0.1.0"
author: vmbackup developers (@vmbackup)
requirements:
  - Python 3.8 or newer on the node
  - One of SmartOS C(vmadm), libvirt C(virsh), or ZFS datasets in the vmbackup layout on the node
extends_documentation_fragment:
  - vmbackup.zfs.attributes.INFO_MODULE
  - vmbackup.zfs.attributes.FAILURE
seealso:
  - module: vmbackup.zfs.snapshot
    description: Snapshots the disks listed here.
  - module: vmbackup.zfs.restore
    description: Restores a backup into one of them.
options:
  backend:
    description:
      - Where the VMs come from. C(auto) uses C(vmadm) when it exists, else C(virsh) when it answers,
        else plain ZFS datasets.
    type: str
    choices: [auto, vmadm, libvirt, zfs]
    default: auto
  pools:
    description: The pools searched by the C(zfs) backend; all imported pools when not given.
    type: list
    elements: str
  vm:
    description:
      - Only this VM, by hostname or uuid (a uuid matches uuids only, never a hostname).
      - The result is then a list of one VM, or empty.
    type: str
  vmadm_command:
    description: The C(vmadm) program (a path, or a name looked up on C(PATH)).
    type: str
    default: vmadm
  virsh_command:
    description: The C(virsh) program (a path, or a name looked up on C(PATH)).
    type: str
    default: virsh
  virsh_uri:
    description: The libvirt connection URI (C(virsh -c)); the libvirt default when not given.
    type: str
  zfs_command:
    description: The C(zfs) program, used for sizes (C(zfs) backend) and snapshot counts (all backends).
    type: str
    default: zfs
notes:
  - Disk datasets that do not follow C(<pool>/<uuid>-disk<N>) (libvirt zvols with other names, bhyve's
    C(<pool>/<uuid>/disk<N>)) are listed as they are; the backup modules expect the vmbackup layout.
"""

EXAMPLES = r"""
- name: Which VMs does this compute node have?
  vmbackup.zfs.vm_info:
  register: node_vms

- name: Find one VM by hostname among plain ZFS datasets of the pool zones
  vmbackup.zfs.vm_info:
    backend: zfs
    pools: [zones]
    vm: web01.example.com
  register: found
"""

RETURN = r"""
zfs:
  description:
    - What this node's ZFS is and which of the features vmbackup uses it has, each read from what its C(zfs)
      says it takes (C(list_parsable), C(set_many), C(send_compressed), C(send_large_blocks), C(send_raw),
      C(send_estimate), C(resume), C(holds), C(bookmarks), C(receive_properties)).
  returned: success
  type: dict
  sample: {"implementation": "openzfs", "version": "zfs-2.3.2-2~bpo12+2", "features": ["holds", "bookmarks"]}
backend:
  description: The backend that answered.
  returned: always
  type: str
  sample: zfs
vms:
  description: The VMs of this node, sorted by hostname.
  returned: always
  type: list
  elements: dict
  contains:
    uuid:
      description: The VM's uuid (lower case).
      type: str
      sample: 9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a
    hostname:
      description: The VM's hostname (SmartOS C(hostname) or C(alias), libvirt domain name), else its uuid.
      type: str
      sample: web01.lab
    brand:
      description: C(kvm), C(bhyve), C(joyent), C(lx), ...
      type: str
      sample: kvm
    state:
      description: C(running), C(stopped), or the hypervisor's own word for other states.
      type: str
      sample: stopped
    installed:
      description: False while the VM is still being provisioned or received.
      type: bool
      sample: true
    qga_socket:
      description: The QEMU guest agent socket for fsfreeze, where the backend knows it; else null.
      type: str
      sample: /zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a/root/tmp/vm.qga
    disks:
      description: The VM's disks in order.
      type: list
      elements: dict
      contains:
        disk_id:
          description: 1-based disk number, as the API counts.
          type: int
          sample: 1
        dataset:
          description: The ZFS dataset (zvol or filesystem) of the disk.
          type: str
          sample: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0
        size:
          description: Size in bytes (volsize, or quota for filesystems, else referenced); null if unknown.
          type: int
          sample: 268435456
        snapshots:
          description: Snapshots of the disk not made by vmbackup; null if ZFS could not be asked.
          type: int
          sample: 0
        backup_snapshots:
          description: Snapshots of the disk made by vmbackup (the bases of incremental backups).
          type: int
          sample: 1
  sample:
    - uuid: 9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a
      hostname: web01.lab
      brand: kvm
      state: stopped
      installed: true
      qga_socket: null
      disks:
        - {disk_id: 1, dataset: zones/9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a-disk0, size: 268435456,
           snapshots: 0, backup_snapshots: 1}
"""

import json
import os
import shlex
import shutil
import subprocess
from xml.etree import ElementTree

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.hypervisor import NOT_INSTALLED, normal_state
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import fail
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import Node, ZfsError

MIB = 1 << 20
GIB = 1 << 30
ZVOL_PREFIX = "/dev/zvol/"
VMADM_FIELDS = "uuid,alias,hostname,brand,state,zone_state,zonepath,zfs_filesystem,quota,disks"


class CommandFailed(Exception):
    """A backend command failed; carries what ran."""

    def __init__(self, argv: list[str], rc: int, stderr: str):
        self.cmd, self.rc, self.stderr = shlex.join(argv), rc, stderr.strip()
        super().__init__("%s failed (rc=%d): %s" % (self.cmd, rc, self.stderr or "no message"))


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=dict(os.environ, LC_ALL="C"), check=False)
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr)
    return proc


def new_vm(uuid: str, hostname: str | None, brand: str, state: str, qga_socket: str | None = None) -> dict:
    state = (state or "").strip().lower()
    return {"uuid": uuid.lower(), "hostname": hostname or uuid.lower(), "brand": brand or "kvm",
            "state": normal_state(state), "installed": state not in NOT_INSTALLED,
            "qga_socket": qga_socket, "disks": []}


def new_disk(disk_id: int, dataset: str, size: int | None) -> dict:
    return {"disk_id": disk_id, "dataset": dataset, "size": size, "snapshots": None, "backup_snapshots": None}


# -- SmartOS ------------------------------------------------------------------------------------------
def vmadm_vms(vmadm: str) -> list[dict]:
    """`vmadm lookup -j`: full VM objects (only the fields we read)."""
    out = run([vmadm, "lookup", "-j", "-o", VMADM_FIELDS]).stdout
    vms = []
    for obj in json.loads(out or "[]"):
        brand = obj.get("brand") or "joyent"
        zonepath = obj.get("zonepath") or ""
        qga = "%s/root/tmp/vm.qga" % zonepath if brand == "kvm" and zonepath else None
        vm = new_vm(obj["uuid"], obj.get("hostname") or obj.get("alias"), brand, obj.get("state"), qga)
        disks = [d for d in obj.get("disks") or [] if d.get("zfs_filesystem") and d.get("media", "disk") == "disk"]
        if disks:
            for number, disk in enumerate(disks, 1):
                size = disk.get("size")
                vm["disks"].append(new_disk(number, disk["zfs_filesystem"], int(size) * MIB if size else None))
        elif obj.get("zfs_filesystem"):
            quota = obj.get("quota")
            vm["disks"].append(new_disk(1, obj["zfs_filesystem"], int(quota) * GIB if quota else None))
        vms.append(vm)
    return vms


# -- libvirt ------------------------------------------------------------------------------------------
def virsh_vms(virsh: list[str]) -> list[dict]:
    """libvirt domains with their zvol disks, sized by `virsh domblkinfo`."""
    uuids = [line.strip() for line in run(virsh + ["list", "--all", "--uuid"]).stdout.splitlines() if line.strip()]
    vms = []
    for uuid in uuids:
        domain = ElementTree.fromstring(run(virsh + ["dumpxml", uuid]).stdout)
        state = run(virsh + ["domstate", uuid]).stdout.strip()
        vm = new_vm(uuid, domain.findtext("name"), domain.get("type") or "kvm", state, guest_agent_socket(domain))
        number = 0
        for disk in domain.findall("./devices/disk"):
            source = disk.find("source")
            path = None if source is None else source.get("dev") or source.get("file")
            if disk.get("device", "disk") != "disk" or not path or not path.startswith(ZVOL_PREFIX):
                continue
            number += 1
            target = disk.find("target")
            size = None
            if target is not None and target.get("dev"):
                size = domblk_capacity(run(virsh + ["domblkinfo", uuid, target.get("dev")], check=False).stdout)
            vm["disks"].append(new_disk(number, path[len(ZVOL_PREFIX):], size))
        vms.append(vm)
    return vms


def guest_agent_socket(domain) -> str | None:
    for channel in domain.findall("./devices/channel"):
        target, source = channel.find("target"), channel.find("source")
        if target is not None and target.get("name") == "org.qemu.guest_agent.0" and source is not None:
            return source.get("path")
    return None


def domblk_capacity(text: str) -> int | None:
    for line in text.splitlines():
        key, dummy, value = line.partition(":")
        if key.strip() == "Capacity" and value.strip().isdigit():
            return int(value.strip())
    return None


def virsh_answers(virsh: list[str]) -> bool:
    return run(virsh + ["list", "--all", "--uuid"], check=False).returncode == 0


# -- plain ZFS ----------------------------------------------------------------------------------------
ZFS_PROPS = ["type", "volsize", "quota", "referenced", layout.PROP_HOSTNAME, "vmbackup:brand", "vmbackup:state",
             "vmbackup:qga_socket"]


def zfs_vms(zfs: str, pools: list[str] | None) -> list[dict]:
    """VMs as datasets `<pool>/<uuid>-disk<N>` / `<pool>/<uuid>` with vmbackup user properties."""
    if not pools:
        pools = run(["zpool", "list", "-H", "-o", "name"]).stdout.split()
    if not pools:
        return []
    out = run([zfs, "list", "-H", "-o", "name", "-t", "filesystem,volume", "-d", "1"] + pools).stdout
    names = [n for n in out.splitlines() if layout.is_disk_dataset(n)]
    if not names:
        return []
    values: dict[str, dict[str, str]] = {n: {} for n in names}
    for line in run([zfs, "get", "-Hp", "-o", "name,property,value", ",".join(ZFS_PROPS)] + names).stdout.splitlines():
        name, prop, value = line.split("\t", 2)
        values.setdefault(name, {})[prop] = "" if value == "-" else value
    by_uuid: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        uuid, disk = layout.disk_of(name)
        by_uuid.setdefault(uuid, []).append((disk, name))
    vms = []
    for uuid, disks in by_uuid.items():
        disks.sort()
        first = values[disks[0][1]]
        vm = new_vm(uuid, first.get(layout.PROP_HOSTNAME), first.get("vmbackup:brand") or "kvm",
                    first.get("vmbackup:state") or "stopped", first.get("vmbackup:qga_socket") or None)
        for disk, name in disks:
            vm["disks"].append(new_disk(disk + 1, name, dataset_size(values[name])))
        vms.append(vm)
    return vms


def dataset_size(props: dict[str, str]) -> int | None:
    for key in (("volsize",) if props.get("type") == "volume" else ("quota", "referenced")):
        value = props.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def count_snapshots(zfs: str, vms: list[dict]) -> None:
    """Fill in each disk's snapshot counts (one `zfs list`); left null where ZFS cannot say."""
    datasets = [d["dataset"] for vm in vms for d in vm["disks"]]
    if not datasets or not shutil.which(zfs):
        return
    proc = run([zfs, "list", "-H", "-o", "name,%s" % layout.PROP_BACKUP, "-t", "snapshot", "-d", "1"] + datasets,
               check=False)
    counts: dict[str, list[int]] = {}
    for line in proc.stdout.splitlines():
        name, dummy, backup = line.partition("\t")
        dataset = name.split("@", 1)[0]
        entry = counts.setdefault(dataset, [0, 0])
        entry[1 if backup.strip() not in ("", "-") else 0] += 1
    answered = proc.returncode == 0
    for vm in vms:
        for disk in vm["disks"]:
            if disk["dataset"] in counts or answered:
                disk["snapshots"], disk["backup_snapshots"] = counts.get(disk["dataset"], [0, 0])


def pick_backend(params: dict, virsh: list[str]) -> str:
    if params["backend"] != "auto":
        return params["backend"]
    if shutil.which(params["vmadm_command"]):
        return "vmadm"
    if shutil.which(params["virsh_command"]) and virsh_answers(virsh):
        return "libvirt"
    return "zfs"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "backend": {"type": "str", "choices": ["auto", "vmadm", "libvirt", "zfs"], "default": "auto"},
            "pools": {"type": "list", "elements": "str"},
            "vm": {"type": "str"},
            "vmadm_command": {"type": "str", "default": "vmadm"},
            "virsh_command": {"type": "str", "default": "virsh"},
            "virsh_uri": {"type": "str"},
            "zfs_command": {"type": "str", "default": "zfs"},
        },
        supports_check_mode=True,
    )
    p = module.params
    for pool in p["pools"] or []:
        problem = layout.invalid_pool(pool)
        if problem:
            fail(module, "pools: %s" % problem, option="pools")
    if p["virsh_uri"] and (p["virsh_uri"].startswith("-") or any(c.isspace() for c in p["virsh_uri"])):
        fail(module, "virsh_uri: '%s' is not a libvirt URI" % p["virsh_uri"], option="virsh_uri")
    virsh = [p["virsh_command"]] + (["-c", p["virsh_uri"]] if p["virsh_uri"] else [])

    backend = pick_backend(p, virsh)
    try:
        if backend == "vmadm":
            vms = vmadm_vms(p["vmadm_command"])
        elif backend == "libvirt":
            vms = virsh_vms(virsh)
        else:
            vms = zfs_vms(p["zfs_command"], p["pools"])
        count_snapshots(p["zfs_command"], vms)
    except CommandFailed as err:
        fail(module, str(err), err, backend=backend)
    except (OSError, ValueError, KeyError, ElementTree.ParseError) as err:
        fail(module, "%s backend: cannot read the node's VMs: %s" % (backend, err), backend=backend)
    if p["vm"]:
        wanted = p["vm"].lower()  # a uuid names a uuid only, never a hostname that looks like one
        key = "uuid" if layout.UUID_RE.fullmatch(wanted) else "hostname"
        vms = [vm for vm in vms if vm[key].lower() == wanted]
    vms.sort(key=lambda vm: (vm["hostname"], vm["uuid"]))
    try:
        zfs = Node().features.report()
    except (ZfsError, OSError) as err:
        zfs = {"implementation": None, "version": None, "features": [], "error": str(err)}
    module.exit_json(changed=False, backend=backend, vms=vms, zfs=zfs)


if __name__ == "__main__":
    main()
