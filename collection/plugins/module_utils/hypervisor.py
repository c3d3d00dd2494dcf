# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a VM is doing, in vmbackup's words, as its node's hypervisor says it: SmartOS C(vmadm), libvirt's
C(virsh), or, on plain ZFS, the disk's C(vmbackup:state) property.

vm_info lists VMs with these words; the restore module asks once more right before it swaps a disk, since the
API's check of the VM's state (from discovery) can be minutes old and a VM started meanwhile would have its
disk replaced under it.
"""

from __future__ import annotations

import json

BACKENDS = ("vmadm", "libvirt", "zfs")
# SmartOS and libvirt words for a VM that is not running but can be started (or restored into).
STOPPED = {"stopped", "installed", "shut off", "shutoff", "off", "down", "crashed"}
NOT_INSTALLED = {"configured", "incomplete", "provisioning", "receiving"}
STATE_PROPERTY = "vmbackup:state"


class StateUnknown(Exception):
    """The hypervisor did not say what the VM is doing."""


def normal_state(state: str | None) -> str:
    """C(running), C(stopped) (every word for a VM at rest), or the hypervisor's own word."""
    state = (state or "").strip().lower()
    if state == "running":
        return "running"
    return "stopped" if state in STOPPED or state in ("", "-") else state


def vm_state(node, backend: str, vm_uuid: str, disk: str, vmadm: str = "vmadm", virsh: list | None = None) -> str:
    """The state of VM `vm_uuid` (whose disk is the dataset `disk`) on `node` (a zfs.Node, local or over ssh),
    asked of `backend`; StateUnknown when the hypervisor does not answer or does not know the VM."""
    if backend == "vmadm":
        proc = node.run([vmadm, "get", vm_uuid], check=False)
        try:
            found = json.loads(proc.stdout or "null") if proc.returncode == 0 else None
        except ValueError:
            found = None
        if not isinstance(found, dict) or not isinstance(found.get("state"), str):
            raise StateUnknown("vmadm get %s: %s" % (vm_uuid, proc.stderr.strip() or "no VM object"))
        return normal_state(found["state"])
    if backend == "libvirt":
        proc = node.run(list(virsh or ["virsh"]) + ["domstate", vm_uuid], check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise StateUnknown("virsh domstate %s: %s" % (vm_uuid, proc.stderr.strip() or "no answer"))
        return normal_state(proc.stdout.splitlines()[0])
    if backend == "zfs":
        proc = node.run(["zfs", "get", "-H", "-o", "value", STATE_PROPERTY, disk], check=False)
        if proc.returncode != 0:
            raise StateUnknown("zfs get %s %s: %s" % (STATE_PROPERTY, disk, proc.stderr.strip() or "no answer"))
        return normal_state(proc.stdout.strip())
    raise StateUnknown("backend %s: not one of %s" % (backend, ", ".join(BACKENDS)))
