"""fsfreeze through a real QEMU guest agent: a running guest (the OpenZFS lab's image, qemu-guest-agent 10) whose
data disk is a raw file inside a VM disk of the test lab, so that the disk's snapshot holds what the guest
wrote. The guest formats that disk ext4, mounts it and writes to it without pause.

ext4 shows whether the snapshot was taken while frozen: a mounted ext4 carries `needs_recovery` in its
superblock, and a freeze (FIFREEZE) flushes the journal and clears it until the thaw. So the image in a
snapshot made under fsfreeze is clean, the same snapshot made without it needs a journal replay: each test
asserts which, and would fail if the freeze had not happened (or happened after the snapshot). The guest's
fsfreeze hook (`/etc/qemu/fsfreeze-hook.d/`, as a database's quiesce script) logs each call.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest
from ansible_run import dumps, run_module
from conftest import zfs
from playbook_env import Run, lab_inventory

from vmbackup_lab.lab import LabVM

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="QEMU taps and zfs-fuse need root")

IMAGE = "guest.img"


@pytest.fixture(scope="module")
def tenant(lab):
    """A lab VM whose disk (a zfs-fuse filesystem here) holds the raw disk of a running QEMU guest, and the
    guest, booted with that disk and its agent's socket on this machine."""
    from vmbackup_lab.ozlab import OpenZfsLab
    vm = LabVM(str(uuid.uuid4()), "qga-%s.lab" % uuid.uuid4().hex[:6], size_mb=256)
    lab.create_vm(vm, data_mb=1)
    disk = vm.disk(lab.compute_pool, 0)
    image = os.path.join(zfs("get", "-H", "-o", "value", "mountpoint", disk).strip(), IMAGE)
    subprocess.run(["truncate", "-s", "64M", image], check=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or "0"
    guests = OpenZfsLab(directory="/var/tmp/vmbackup-qga-%s-%d" % (worker, os.getpid()),
                        prefix="vbqg%s" % worker, subnet="10.79.%d" % (40 + int(worker)),
                        nodes=[("tenant", "compute")], pool_size="256M", memory_mb=1024,
                        drives={"tenant": [image]})
    guests.up(vms=[])
    guest = guests.node("tenant")
    guest.run(["sh", "-c", "mkfs.ext4 -q -F /dev/disk/by-id/virtio-data0 && mkdir -p /data && "
               "mount -o commit=1 /dev/disk/by-id/virtio-data0 /data && : > /run/vmbackup-fsfreeze.log"])
    # A writer that never pauses: a line a tenth of a second, flushed; it blocks while the disk is frozen.
    guest.run(["sh", "-c", "nohup sh -c 'while :; do date +%s.%N >> /data/writes; sync /data/writes; "
               "sleep 0.1; done' >/dev/null 2>&1 &"])
    zfs("set", "vmbackup:qga_socket=" + guest.qga_socket, disk)
    yield lab, vm, guest
    guests.down()


def hook_calls(guest) -> list[str]:
    out = guest.run(["cat", "/run/vmbackup-fsfreeze.log"]).stdout
    return [line.split()[0] for line in out.splitlines()]


def image_state(lab, dataset: str) -> dict:
    """The guest's disk as the backup holds it: is its ext4 clean (no journal to replay), does it check."""
    zfs("mount", dataset)
    try:
        image = os.path.join(zfs("get", "-H", "-o", "value", "mountpoint", dataset).strip(), IMAGE)
        header = subprocess.run(["dumpe2fs", "-h", image], capture_output=True, text=True, check=True).stdout
        features = next(line for line in header.splitlines() if line.startswith("Filesystem features:"))
        fsck = subprocess.run(["e2fsck", "-fn", image], capture_output=True, text=True)
        return {"needs_recovery": "needs_recovery" in features, "fsck_rc": fsck.returncode}
    finally:
        zfs("unmount", dataset)


def writes(guest) -> int:
    return int(guest.run(["wc", "-l", "/data/writes"]).stdout.split()[0])


def backup(lab, vm, tmp_path, name: str, fsfreeze: bool) -> Run:
    return Run("backup.yml", {"node": "lab-backup", "hostname": vm.hostname, "bkpdef": name.split("-")[0],
                              "bkpname": name, "fsfreeze": fsfreeze}, lab_inventory(lab, tmp_path))


def test_a_backup_under_fsfreeze_holds_a_clean_filesystem_and_the_guest_runs_on(tenant, tmp_path):
    lab, vm, guest = tenant
    target = "%s/backups/ds/%s-disk0" % (lab.backup_pool, vm.uuid)
    # Without fsfreeze first: the snapshot catches the mounted file system mid-journal.
    plain = backup(lab, vm, tmp_path, "plain-20261205_010000", fsfreeze=False)
    assert plain.ok, plain
    assert image_state(lab, target)["needs_recovery"] is True
    assert hook_calls(guest) == []

    before = writes(guest)
    frozen = backup(lab, vm, tmp_path, "frozen-20261205_020000", fsfreeze=True)
    assert frozen.ok, frozen
    report = frozen.result["fsfreeze"]
    assert report["frozen"] is True and report["thawed"] is True and report["filesystems"] >= 2, report
    assert hook_calls(guest) == ["freeze", "thaw"]  # the guest's quiesce hooks ran, in order
    frozen_target = "%s/backups/ds/%s-disk0" % (lab.backup_pool, vm.uuid)
    assert zfs("list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", frozen_target).split()[-1].endswith(
        "@frozen-20261205_020000")
    assert image_state(lab, frozen_target) == {"needs_recovery": False, "fsck_rc": 0}
    # Thawed: the writer goes on.
    deadline = time.monotonic() + 60
    while writes(guest) <= before + 5:
        assert time.monotonic() < deadline, "the guest's writes did not resume after the thaw"
        time.sleep(1)
    assert guest.run(["fsfreeze", "--unfreeze", "/data"], check=False).returncode != 0  # not frozen any more


def test_a_failed_snapshot_still_thaws_the_guest(tenant):
    lab, vm, guest = tenant
    guest.run(["sh", "-c", ": > /run/vmbackup-fsfreeze.log"])
    disk = vm.disk(lab.compute_pool, 0)
    # A user property value longer than ZFS takes: `zfs snapshot` fails after the freeze.
    res = run_module("vmbackup.zfs.snapshot", {"dataset": disk, "name": "failing-20261205_030000",
                                               "fsfreeze": True, "qga_socket": guest.qga_socket,
                                               "properties": {"vmbackup:note": "x" * 10000}})
    assert res.failed and "zfs snapshot" in res["msg"], dumps(res)
    assert hook_calls(guest) == ["freeze", "thaw"]
    assert guest.run(["sh", "-c", "timeout 20 touch /data/after-a-failed-snapshot"], check=False).returncode == 0
    assert "failing-20261205_030000" not in zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", disk)
