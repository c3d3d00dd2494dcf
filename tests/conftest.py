"""Fixtures: a lab of our own (zfs-fuse pools named for this test run) and fresh VMs in it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import warnings

import node_env
import pytest

from vmbackup_lab import lab as labmod

# pytest-xdist's worker number (gw0, gw1, ...): workers of one run get pools and subnets of their own.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]) % 5
TAG = (os.environ.get("VMBACKUP_TEST_TAG", "") + "w%d" % WORKER) if os.environ.get("VMBACKUP_TEST_TAG") \
    else "t%d" % os.getpid()
# A worker of several gets a zfs-fuse daemon and an sshd of its own (one daemon serving several workers
# deadlocks now and then: lab.isolate_zfs); pytest alone uses the machine's.
ISOLATED = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if ISOLATED:
    labmod.isolate_zfs("/var/tmp/vmbackup-zfsd-%s" % TAG)
    os.environ["VMBACKUP_LAB_SSH_PORT"] = str(2223 + WORKER)


# This process's temporary files (ansible-runner's private data dirs, the AWX stand-in's jobs, ...) in a folder of
# its own, removed at the end: a run leaves nothing in /tmp.
SCRATCH = tempfile.mkdtemp(prefix="vmbackup-tests-%s-" % TAG)
tempfile.tempdir = SCRATCH


def pytest_unconfigure(config):
    shutil.rmtree(SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def own_zfs_daemon():
    """Stops this worker's sshd and zfs-fuse once everything else is torn down (the first fixture set up is
    the last torn down)."""
    yield
    if ISOLATED:
        # Its sessions would land in this worker's namespace, which ends now.
        labmod.stop_sshd("/var/tmp/vmbackup-ssh", int(os.environ["VMBACKUP_LAB_SSH_PORT"]))
        labmod.stop_zfs_daemon()


@pytest.fixture(scope="session")
def lab():
    """Pools `<tag>zones` (compute node) and `<tag>bkp` (backup node), removed at the end."""
    the_lab = labmod.Lab(directory="/var/tmp/vmbackup-test-%s" % TAG, compute_pool=TAG + "zones",
                         backup_pool=TAG + "bkp", pool_size=os.environ.get("VMBACKUP_TEST_POOL_SIZE", "2G"))
    the_lab.up(vms=[])
    yield the_lab
    if not os.environ.get("VMBACKUP_TEST_KEEP"):
        the_lab.down()


@pytest.fixture
def vm(lab):
    """A new VM with one disk holding 8 MiB of random data."""
    machine = labmod.LabVM(str(uuid.uuid4()), "vm-%s.lab" % uuid.uuid4().hex[:6], disks=1)
    lab.create_vm(machine, data_mb=8)
    return machine


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], check=True, capture_output=True, text=True,
                          env=dict(os.environ, LC_ALL="C")).stdout


def destroy(name: str, attempts: int = 10) -> None:
    """zfs destroy -r, retried: zfs-fuse reports a dataset busy for a moment after a mount or create."""
    for attempt in range(attempts):
        proc = subprocess.run(["zfs", "destroy", "-r", name], capture_output=True, text=True)
        if proc.returncode == 0 or not exists(name):
            return
        if "busy" not in proc.stderr or attempt == attempts - 1:
            raise AssertionError("zfs destroy -r %s: %s" % (name, proc.stderr))
        time.sleep(0.5)


def exists(name: str) -> bool:
    return subprocess.run(["zfs", "list", "-H", name], capture_output=True).returncode == 0


def snapshots(dataset: str) -> list[str]:
    if not exists(dataset):
        return []
    out = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", dataset)
    return [line.split("@", 1)[1] for line in out.splitlines() if line.startswith(dataset + "@")]


def tree_checksums(root: str) -> dict[str, str]:
    """sha256 of every file below `root`, by relative path."""
    sums = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                sums[os.path.relpath(path, root)] = hashlib.file_digest(handle, "sha256").hexdigest()
    return sums


def dataset_checksums(dataset: str) -> dict[str, str]:
    """Checksums of the files in a filesystem, mounting it for the read if it is not mounted."""
    mounted = zfs("get", "-H", "-o", "value", "mounted", dataset).strip() == "yes"
    if not mounted:
        zfs("mount", dataset)
    try:
        return tree_checksums(zfs("get", "-H", "-o", "value", "mountpoint", dataset).strip())
    finally:
        if not mounted:
            zfs("unmount", dataset)


@pytest.fixture(scope="session")
def netlab():
    """Separate nodes `compute1` and `backup1`, each in its own namespaces with its own zfs-fuse, sshd and pool
    `zones`, on a bridge and subnet of this run's own; removed at the end."""
    from vmbackup_lab.netlab import NetLab
    the_lab = NetLab(directory="/var/tmp/vmbackup-netlab-%s" % TAG, prefix="nl%d" % (os.getpid() % 10**7),
                     subnet="10.78.%d" % ((os.getpid() % 50) * 5 + WORKER + 1),
                     nodes=[("compute1", "compute"), ("backup1", "backup"), ("compute2", "compute")],
                     pool_size="1G")
    the_lab.up(vms=[])
    yield the_lab
    if not os.environ.get("VMBACKUP_TEST_KEEP"):
        the_lab.down()


# The OpenZFS lab of the tests: QEMU guests (OpenZFS 2.3, zvols), shared by the test workers. `make test` brings
# it up before pytest and down after; a test run alone brings it up (idempotent, under a lock) and leaves it
# running for the next run (`vmbackup-lab ozlab down --dir /var/tmp/vmbackup-ozlab-test` stops it).
OZLAB_DIR = os.environ.get("VMBACKUP_TEST_OZLAB_DIR", "/var/tmp/vmbackup-ozlab-test")
OZLAB = {"prefix": "vbozt", "subnet": "10.79.9", "pool": "zones", "pool_size": "3G",
         "nodes": [("oz-c1", "compute"), ("oz-b1", "backup"), ("oz-c2", "compute")]}


@pytest.fixture(scope="session")
def ozlab():
    """Guests `oz-c1`, `oz-c2` (compute) and `oz-b1` (backup), each with its pool `zones` on a virtio disk."""
    import fcntl

    from vmbackup_lab.ozlab import OpenZfsLab
    os.makedirs(os.path.dirname(OZLAB_DIR), exist_ok=True)
    with open(OZLAB_DIR + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        the_lab = OpenZfsLab.load(OZLAB_DIR, **OZLAB)
        the_lab.up(vms=[])
    return the_lab


@pytest.fixture(autouse=True)
def forget_guest_vms(request):
    """After each test, the VMs it made on the OpenZFS guests taken away with their backups: a suite's VMs
    together need more than a guest's pool holds. Only on the guests of the test's own lab (a test file may work
    on a part of it). A clean-up that fails is a warning, not the test's failure: what it leaves shows as "out of
    space" later."""
    yield
    if node_env.ON_GUESTS:
        made = list(node_env.ON_GUESTS)
        node_env.ON_GUESTS.clear()
        labs = [value for value in request.node.funcargs.values() if hasattr(value, "node_list")]
        guests = {node.name: node for lab in labs for node in lab.node_list() if isinstance(node, node_env.Guest)}
        if not guests:
            warnings.warn("the VMs %s stay on the guests: the test has no lab of them" % ", ".join(made), stacklevel=2)
        for guest in guests.values():
            try:
                guest.forget(made)
            except RuntimeError as error:
                warnings.warn("the VMs %s stay on %s: %s" % (", ".join(made), guest.name, error), stacklevel=2)


@pytest.fixture
def progress():
    """A progress file's path, the same on this machine, in netlab's nodes and in the OpenZFS lab's guests."""
    path = "/var/tmp/vmbackup-progress-%s.json" % uuid.uuid4().hex[:8]
    yield path
    if os.path.exists(path):
        os.unlink(path)


@pytest.fixture(scope="module", params=["zfs-fuse", "openzfs"])
def nodes(request):
    """The same test on nodes reached by ssh running zfs-fuse (netlab: filesystems as VM disks) and OpenZFS
    2.3 (the OpenZFS lab: zvols)."""
    return request.getfixturevalue("netlab" if request.param == "zfs-fuse" else "ozlab")


# The files that run on the OpenZFS guests take longest (software-emulated guests): collected first, so that one
# worker starts on them at once (pytest-xdist's --dist loadfile hands files out in collection order) and the
# other works through the rest meanwhile, instead of both waiting on them at the end.
LONGEST_FIRST = ("test_nodes.py", "test_hostile_nodes.py", "test_guest_agent.py", "test_faults.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))
