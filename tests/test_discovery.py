"""vmbackup.zfs.vm_info and playbooks/discover.yml: which VMs a compute node has.

The plain ZFS backend runs on real zfs-fuse pools. The SmartOS (vmadm) and libvirt (virsh) backends run on
REPLAYED outputs: tests/fixtures/vmadm and tests/fixtures/virsh hold what `vmadm lookup -j`, `virsh list
--all --uuid`, `virsh dumpxml`, `virsh domstate` and `virsh domblkinfo` print, in their real formats
(written after the vmadm(1M) and libvirt documentation and domain XML as libvirt emits it; there is no
SmartOS or libvirt host here to capture them from). tests/fixtures/replay.py stands in for the command
and prints the recorded output that matches its arguments.
"""

from __future__ import annotations

import os
import sys

from ansible_run import REPO, dumps, run_module
from conftest import zfs
from playbook_env import COMPUTE, Run, lab_inventory

from vmbackup_lab.lab import new_vm

FIXTURES = os.path.join(REPO, "tests", "fixtures")


def replay_command(tmp_path, tool: str) -> tuple[str, str]:
    """A stand-in for `tool` that replays tests/fixtures/<tool>; returns its path and its call log."""
    log = tmp_path / ("%s-calls.log" % tool)
    script = tmp_path / tool
    script.write_text('#!/bin/sh\nREPLAY_LOG=%s exec %s %s %s "$@"\n'
                      % (log, sys.executable, os.path.join(FIXTURES, "replay.py"), os.path.join(FIXTURES, tool)))
    script.chmod(0o755)
    return str(script), str(log)


def by_uuid(result: dict) -> dict[str, dict]:
    return {vm["uuid"]: vm for vm in result["vms"]}


# -- plain ZFS -------------------------------------------------------------------------------------------
def test_zfs_backend_finds_vms_by_their_datasets_and_properties(lab):
    web = new_vm("web-%s.lab" % os.getpid(), disks=2, state="running")
    zone = new_vm("zone-%s.lab" % os.getpid())
    lab.create_vm(web, data_mb=1)
    zfs("create", "-o", "quota=128M", "-o", "vmbackup:hostname=" + zone.hostname, "-o", "vmbackup:brand=joyent",
        "%s/%s" % (lab.compute_pool, zone.uuid))  # an OS zone: <pool>/<uuid>
    zfs("snapshot", "%s@before-upgrade" % web.disk(lab.compute_pool, 0))  # the owner's snapshot
    zfs("snapshot", "-o", "vmbackup:backup=daily-20261128_010000",
        "%s@daily-20261128_010000" % web.disk(lab.compute_pool, 0))  # a backup's base

    res = run_module("vmbackup.zfs.vm_info", {"backend": "zfs", "pools": [lab.compute_pool]})
    assert not res.failed and res["changed"] is False and res["backend"] == "zfs", dumps(res)
    vms = by_uuid(res)
    assert vms[web.uuid]["hostname"] == web.hostname
    assert vms[web.uuid]["brand"] == "kvm" and vms[web.uuid]["state"] == "running"
    assert vms[web.uuid]["disks"] == [
        {"disk_id": 1, "dataset": web.disk(lab.compute_pool, 0), "size": 256 * 2**20, "snapshots": 1,
         "backup_snapshots": 1},
        {"disk_id": 2, "dataset": web.disk(lab.compute_pool, 1), "size": 256 * 2**20, "snapshots": 0,
         "backup_snapshots": 0}]
    assert vms[zone.uuid]["brand"] == "joyent" and vms[zone.uuid]["state"] == "stopped"
    assert vms[zone.uuid]["disks"][0]["dataset"] == "%s/%s" % (lab.compute_pool, zone.uuid)
    assert vms[zone.uuid]["disks"][0]["size"] == 128 * 2**20
    # Nothing from the backup node's pool or from datasets that are not VM disks.
    assert all(d["dataset"].startswith(lab.compute_pool + "/") for vm in res["vms"] for d in vm["disks"])


def test_zfs_backend_finds_one_vm_by_hostname_or_uuid(lab, vm):
    for name in (vm.hostname, vm.uuid, vm.hostname.upper()):
        res = run_module("vmbackup.zfs.vm_info", {"backend": "zfs", "pools": [lab.compute_pool], "vm": name})
        assert not res.failed and [v["uuid"] for v in res["vms"]] == [vm.uuid], dumps(res)
    res = run_module("vmbackup.zfs.vm_info", {"backend": "zfs", "pools": [lab.compute_pool], "vm": "nobody.lab"})
    assert not res.failed and res["vms"] == [], dumps(res)


def test_vm_info_is_read_only_and_runs_in_check_mode(lab, vm):
    res = run_module("vmbackup.zfs.vm_info", {"backend": "zfs", "pools": [lab.compute_pool], "vm": vm.uuid},
                     check=True)
    assert not res.failed and res["changed"] is False and len(res["vms"]) == 1, dumps(res)


def test_bad_pool_name_is_refused():
    res = run_module("vmbackup.zfs.vm_info", {"backend": "zfs", "pools": ["-o evil"]})
    assert res.failed and res["msg"].startswith("pools:"), dumps(res)


# -- SmartOS, replayed ------------------------------------------------------------------------------------
def test_vmadm_backend_reads_kvm_bhyve_and_zone_vms(tmp_path):
    vmadm, log = replay_command(tmp_path, "vmadm")
    res = run_module("vmbackup.zfs.vm_info", {"backend": "vmadm", "vmadm_command": vmadm})
    assert not res.failed and res["backend"] == "vmadm", dumps(res)
    vms = by_uuid(res)
    kvm = vms["2b4c3d1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e"]
    assert (kvm["hostname"], kvm["brand"], kvm["state"]) == ("web01.example.com", "kvm", "running")
    assert kvm["qga_socket"] == "/zones/2b4c3d1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e/root/tmp/vm.qga"
    assert [(d["disk_id"], d["dataset"], d["size"]) for d in kvm["disks"]] == [
        (1, "zones/2b4c3d1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e-disk0", 10240 * 2**20),  # size is in MiB
        (2, "zones/2b4c3d1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e-disk1", 51200 * 2**20)]
    zone = vms["8e1d7c6b-5a49-4c38-b27a-16f5e4d3c2b1"]
    assert (zone["brand"], zone["state"], zone["qga_socket"]) == ("joyent", "stopped", None)
    assert zone["disks"] == [{"disk_id": 1, "dataset": "zones/8e1d7c6b-5a49-4c38-b27a-16f5e4d3c2b1",
                              "size": 25 * 2**30, "snapshots": None, "backup_snapshots": None}]  # quota in GiB
    bhyve = vms["c0ffee00-1a2b-4c3d-8e4f-5a6b7c8d9e0f"]
    assert bhyve["hostname"] == "win2019"  # no hostname: the alias
    assert bhyve["state"] == "provisioning" and bhyve["installed"] is False
    assert bhyve["disks"][0]["dataset"] == "zones/c0ffee00-1a2b-4c3d-8e4f-5a6b7c8d9e0f/disk0"
    with open(log) as handle:
        assert handle.read().split()[:3] == ["lookup", "-j", "-o"]


def test_auto_backend_prefers_vmadm_when_it_exists(tmp_path):
    vmadm, _log = replay_command(tmp_path, "vmadm")
    res = run_module("vmbackup.zfs.vm_info", {"vmadm_command": vmadm, "vm": "mail.example.com"})
    assert not res.failed and res["backend"] == "vmadm", dumps(res)
    assert [v["uuid"] for v in res["vms"]] == ["8e1d7c6b-5a49-4c38-b27a-16f5e4d3c2b1"]


# -- libvirt, replayed ------------------------------------------------------------------------------------
def test_libvirt_backend_reads_zvol_disks_state_and_capacity(tmp_path):
    virsh, log = replay_command(tmp_path, "virsh")
    res = run_module("vmbackup.zfs.vm_info", {"backend": "libvirt", "virsh_command": virsh,
                                              "virsh_uri": "qemu:///system"})
    assert not res.failed and res["backend"] == "libvirt", dumps(res)
    vms = by_uuid(res)
    db = vms["4d2a5c8e-91b3-4f6e-a7d0-3c8b1e9f2a64"]
    assert (db["hostname"], db["brand"], db["state"]) == ("db02.example.com", "kvm", "running")
    assert db["qga_socket"] == "/run/libvirt/qemu/channel/3-db02.example.com/org.qemu.guest_agent.0"
    assert [(d["disk_id"], d["dataset"], d["size"]) for d in db["disks"]] == [
        (1, "tank/vms/db02-disk0", 20 * 2**30), (2, "tank/vms/db02-disk1", 100 * 2**30)]  # the cdrom is no disk
    build = vms["a9e7f3c1-0b2d-4e58-96a4-7d1c5b3e8f20"]
    assert build["state"] == "stopped" and build["qga_socket"] is None  # "shut off"; channel not bound yet
    # The qcow2 file is not a ZFS disk; the zvol is the VM's first (and only) backup-able disk.
    assert [(d["disk_id"], d["dataset"], d["size"]) for d in build["disks"]] == [
        (1, "tank/a9e7f3c1-0b2d-4e58-96a4-7d1c5b3e8f20-disk0", 8 * 2**30)]
    with open(log) as handle:
        calls = handle.read().splitlines()
    assert calls[0] == "-c qemu:///system list --all --uuid"
    assert "-c qemu:///system domblkinfo 4d2a5c8e-91b3-4f6e-a7d0-3c8b1e9f2a64 vdb" in calls


def test_auto_backend_uses_libvirt_when_virsh_answers_and_there_is_no_vmadm(tmp_path):
    virsh, _log = replay_command(tmp_path, "virsh")
    res = run_module("vmbackup.zfs.vm_info", {"vmadm_command": str(tmp_path / "no-vmadm"), "virsh_command": virsh,
                                              "vm": "build01"})
    assert not res.failed and res["backend"] == "libvirt", dumps(res)
    assert [v["hostname"] for v in res["vms"]] == ["build01"]


def test_a_failing_backend_command_fails_with_the_command(tmp_path):
    virsh, _log = replay_command(tmp_path, "virsh")
    res = run_module("vmbackup.zfs.vm_info", {"backend": "libvirt", "virsh_command": virsh,
                                              "virsh_uri": "-oProxyCommand=x"})
    assert res.failed and res["msg"].startswith("virsh_uri:"), dumps(res)
    script = tmp_path / "broken-virsh"
    script.write_text("#!/bin/sh\necho 'error: failed to connect to the hypervisor' >&2\nexit 1\n")
    script.chmod(0o755)
    res = run_module("vmbackup.zfs.vm_info", {"backend": "libvirt", "virsh_command": str(script)})
    assert res.failed and "failed to connect" in res["msg"] and res["cmd"].endswith("list --all --uuid"), dumps(res)


# -- discover.yml -----------------------------------------------------------------------------------------
def test_discover_playbook_returns_the_vms_of_every_compute_node(lab, vm, tmp_path):
    run = Run("discover.yml", {}, lab_inventory(lab, tmp_path))
    assert run.ok, run
    assert run.result["failed"] == [] and set(run.result["nodes"]) == {COMPUTE}
    node = run.result["nodes"][COMPUTE]
    assert node["backend"] == "zfs"
    found = {v["uuid"]: v for v in node["vms"]}
    assert found[vm.uuid]["hostname"] == vm.hostname
    assert found[vm.uuid]["disks"][0]["dataset"] == vm.disk(lab.compute_pool, 0)
    assert run.result["vms"] == len(node["vms"])
    assert run.changed == 0


def test_discover_playbook_finds_one_vm_by_hostname(lab, vm, tmp_path):
    run = Run("discover.yml", {"hostname": vm.hostname}, lab_inventory(lab, tmp_path))
    assert run.ok, run
    assert [v["uuid"] for v in run.result["nodes"][COMPUTE]["vms"]] == [vm.uuid]


def test_discover_playbook_refuses_a_bad_backend(lab, tmp_path):
    run = Run("discover.yml", {"backend": "hyperv"}, lab_inventory(lab, tmp_path))
    assert not run.ok and "backend" in run.failures[0][1], run
