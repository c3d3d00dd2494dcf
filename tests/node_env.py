"""Playbooks run for real with ansible-playbook against labs of nodes reached by address and ssh: the netlab
(zfs-fuse in namespaces) and the OpenZFS lab (QEMU guests, zvols). Both labs' nodes answer the same calls
(`zfs`, `run`, `exists`, `create_vm`, `write_data`, `checksums`, `link`), so one test serves both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from vmbackup_lab.lab import LabVM
from vmbackup_lab.ozlab import Guest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


class Run:
    """An ansible-playbook run in the background, its output in a file."""

    def __init__(self, nodes, playbook: str, progress: str | None = None, *options: str, **extra):
        extra.setdefault("node", nodes.node("backup").name)
        if progress:
            extra["vmbackup_progress_file"] = progress
        self.log = os.path.join(nodes.directory, "run-%s.log" % uuid.uuid4().hex[:8])
        with open(self.log, "w") as handle:
            self.proc = subprocess.Popen(
                [os.path.join(BIN, "ansible-playbook"), "-i", nodes.inventory,
                 os.path.join(ROOT, "playbooks", playbook), "-e", json.dumps(extra), *options],
                cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                env=dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], ANSIBLE_NOCOLOR="1"))

    def wait(self, timeout: float = 600) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        with open(self.log) as handle:
            return rc, handle.read()


def playbook(nodes, name: str, *options: str, **extra) -> str:
    rc, out = Run(nodes, name, None, *options, **extra).wait()
    assert rc == 0, out[-4000:]
    return out


# The VMs this process (a test worker) made on the OpenZFS lab's guests: conftest's `forget_guest_vms` takes
# each test's away after it, with their backups (Guest.forget says why).
ON_GUESTS: list[str] = []


def remember(node, vm: LabVM) -> LabVM:
    if isinstance(node, Guest):
        ON_GUESTS.append(vm.uuid)
    return vm


def new_vm(node, data_mb: int, size_mb: int = 128, disks: int = 1) -> LabVM:
    vm = remember(node, LabVM(str(uuid.uuid4()), "f%s.lab" % uuid.uuid4().hex[:6], size_mb=size_mb, disks=disks))
    node.create_vm(vm, data_mb)
    return vm


def snapshots(node, dataset: str) -> list[str]:
    out = node.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", dataset)
    return [line.split("@", 1)[1] for line in out.splitlines()]


def pool_mountpoint(node) -> str:
    return node.zfs("get", "-H", "-o", "value", "mountpoint", node.pools[0]).strip()


def backup_state(node, vm: LabVM) -> dict:
    """All the backup node holds of a VM: datasets and snapshots, and files (backups, manifests, parts)."""
    names = node.zfs("list", "-H", "-o", "name", "-t", "all", "-r", node.pools[0]).splitlines()
    files = node.run(["find", pool_mountpoint(node), "-path", "*%s*" % vm.uuid]).stdout.split()
    state = {"datasets": sorted(n for n in names if vm.uuid in n), "files": sorted(files)}
    assert not [n for n in names if "%" in n], names  # no half-received (%recv) dataset, of any VM
    return state


def said(out: str) -> str:
    """What the playbook's last task said it did."""
    return out.rsplit("TASK [Say what was done]", 1)[-1]


def progress_bytes(progress: str, reader=None) -> int:
    """What a run's progress file says went through its stream; `reader`: the node that writes it, when it is
    not this machine's file system (a guest)."""
    try:
        if reader is None:
            with open(progress) as handle:
                return json.load(handle)["bytes"]
        return json.loads(reader.run(["cat", progress], check=False).stdout)["bytes"]
    except (OSError, ValueError, KeyError):
        return 0


def wait_for_bytes(run: Run, progress: str, at_bytes: int, timeout: float = 180, reader=None) -> None:
    """Until `at_bytes` went through the run's stream (its progress file says)."""
    deadline = time.monotonic() + timeout
    while True:
        if progress_bytes(progress, reader) >= at_bytes:
            return
        assert run.proc.poll() is None, run.wait()[1][-4000:]
        assert time.monotonic() < deadline, "the stream did not start"
        time.sleep(0.2)


def cut_midway(node, run: Run, progress: str, at_bytes: int = 2 << 20, down_for: float | None = None,
               wait: float = 240, reader=None) -> str:
    """Once `at_bytes` went through the stream, set the node's link down (and up again after `down_for`,
    else once the run ended)."""
    wait_for_bytes(run, progress, at_bytes, reader=reader)
    node.link(False)
    try:
        if down_for is not None:
            time.sleep(down_for)
            node.link(True)
        rc, out = run.wait(wait)
    finally:
        node.link(True)
    assert rc != 0, out[-4000:]
    return out
