"""A real vmbackup service for the tests: its own data dir, inventory of the test pools, users, VMs,
and `vmbackup serve` started as a process on a free loopback port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field

import yaml

from vmbackup.cli.client import Client
from vmbackup.store.store import Store
from vmbackup_lab.lab import Lab, LabVM

BIN = os.path.dirname(sys.executable)
ADMIN, OWNER = ("admin", "admin-password"), ("owner", "owner-password")
DISK_MB = 256


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_inventory(path: str, lab: Lab, extra_compute: dict | None = None) -> None:
    """Compute node `tc` and backup node `tb` are this machine (the test pools); `dead` never answers."""
    python = sys.executable
    inventory = {"all": {
        "vars": {"ansible_python_interpreter": python},
        "children": {
            "compute": {"hosts": {"tc": {"ansible_connection": "local", "vmbackup_pool": lab.compute_pool,
                                         "vmbackup_pools": [lab.compute_pool]},
                                  "dead": {"ansible_host": "127.0.0.1", "ansible_port": 1,
                                           "ansible_connection": "ssh", "vmbackup_pool": "zones"},
                                  **(extra_compute or {})}},
            "backup": {"hosts": {"tb": {"ansible_connection": "local", "vmbackup_zpool": lab.backup_pool}}},
        }}}
    with open(path, "w") as handle:
        yaml.safe_dump(inventory, handle)


@dataclass
class ApiEnv:
    """One running service and what the tests need to talk to it."""

    lab: Lab
    data_dir: str
    inventory: str
    port: int = 0
    proc: subprocess.Popen | None = None
    vms: dict = field(default_factory=dict)
    admin_key: str = ""
    serve_args: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d/api" % self.port

    def client(self, who: tuple[str, str] | None = ADMIN) -> Client:
        client = Client(self.url)
        client.backup_pool = self.lab.backup_pool
        if who:
            assert client.login(*who).status == 200
        return client

    def start(self, wait: float = 60) -> None:
        self.port = self.port or free_port()
        log = open(os.path.join(self.data_dir, "serve.log"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "vmbackup"), "serve", "--listen", "127.0.0.1:%d" % self.port, "--data-dir",
             self.data_dir, "--inventory", self.inventory, *self.serve_args],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"]))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if Client(self.url).get("task").status == 403:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, open(os.path.join(self.data_dir, "serve.log")).read()[-3000:]
            time.sleep(0.2)
        raise AssertionError("the service did not answer within %ds" % wait)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def add_user(self, name: str, password: str, admin: bool = False, vms: list[str] = ()) -> str:
        argv = [os.path.join(BIN, "vmbackup"), "user", "add", name, "--data-dir", self.data_dir,
                "--inventory", self.inventory] + (["--admin"] if admin else [])
        for vm in vms:
            argv += ["--vm", vm]
        out = subprocess.run(argv, input=password + "\n", capture_output=True, text=True, check=True).stdout
        return out.strip().rsplit(" ", 1)[-1]

    def wait_for_bytes(self, client: Client, task_id: str, at_bytes: int = 1, timeout: float = 60) -> int:
        """Wait until the task's transfer has moved `at_bytes` (its progress, as GET task/<id> shows it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = client.get("task/%s" % task_id).result or {}
            moved = ((info.get("progress") or {}).get("bytes")) or 0
            if moved >= at_bytes:
                return moved
            assert info.get("status") == "PENDING", "task %s ended first: %s" % (task_id, info)
            time.sleep(0.2)
        raise AssertionError("task %s moved fewer than %d bytes in %ds" % (task_id, at_bytes, timeout))

    def wait(self, client: Client, task_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = client.get("task/%s/status" % task_id)
            if status.status != 201:
                return {"code": status.status, **status.body}
            time.sleep(0.3)
        raise AssertionError("task %s still pending after %ds" % (task_id, timeout))


def make_vm(lab: Lab, name: str, disks: int = 1, brand: str = "kvm", state: str = "stopped",
            size_mb: int = DISK_MB, data_mb: int = 4) -> LabVM:
    vm = LabVM(str(uuidlib.uuid4()), "%s-%s.lab" % (name, uuidlib.uuid4().hex[:4]), disks=disks, brand=brand,
               state=state, size_mb=size_mb)
    lab.create_vm(vm, data_mb=data_mb)
    return vm


def seed(store: Store, lab: Lab, vm: LabVM, node: str = "tc", snapshots: int = 0, **extra) -> None:
    """Record a lab VM as discovery would (for the states the lab cannot show: locked, not installed)."""
    store.upsert_vm({"uuid": vm.uuid, "hostname": vm.hostname, "node": node, "brand": vm.brand, "state": vm.state,
                     "disks": [{"disk_id": n + 1, "dataset": vm.disk(lab.compute_pool, n),
                                "size": vm.size_mb * 2**20, "snapshots": snapshots} for n in range(vm.disks)],
                     "installed": True, "locked": False, **extra})


def seed_nodes(store: Store, lab: Lab) -> None:
    """Compute node `tc` and backup node `tb` as discovery records them: operational, with their pools."""
    store.upsert_node({"name": "tc", "roles": ["compute"], "operational": True,
                       "pools": {lab.compute_pool: {"free": 10**10}}})
    store.upsert_node({"name": "tb", "roles": ["backup"], "operational": True,
                       "pools": {lab.backup_pool: {"free": 10**10}}})


def new_env(lab: Lab) -> ApiEnv:
    data_dir = tempfile.mkdtemp(prefix="vmbackup-api-", dir="/var/tmp")
    env = ApiEnv(lab, data_dir, os.path.join(data_dir, "hosts.yml"))
    write_inventory(env.inventory, lab)
    return env


@contextlib.contextmanager
def serving(lab: Lab, vm_names: tuple[str, ...] = ()):
    """A `vmbackup serve` of its own (no discovery, no scheduler) with the lab's nodes, the VMs `vm_names` seeded
    and an admin key (`env.admin_key`); stopped and its data dir removed at the end."""
    env = new_env(lab)
    store = Store(env.data_dir)
    seed_nodes(store, lab)
    for name in vm_names:
        seed(store, lab, make_vm(lab, name))
    del store
    env.admin_key = env.add_user(*ADMIN, admin=True)
    env.serve_args = ["--no-discover", "--no-scheduler"]
    env.start()
    try:
        yield env
    finally:
        env.stop()
        shutil.rmtree(env.data_dir, ignore_errors=True)
