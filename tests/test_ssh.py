"""The pull model over real ssh: the backup node pulls the compute node's snapshot through sshd."""

from __future__ import annotations

import pytest
from ansible_run import dumps
from conftest import dataset_checksums
from test_send import backup, target_of

from vmbackup_lab.lab import ensure_sshd


@pytest.fixture(scope="session")
def ssh_access(lab):
    return ensure_sshd("/var/tmp/vmbackup-ssh")


def test_dataset_backup_pulled_over_ssh(lab, vm, ssh_access):
    disk = vm.disk(lab.compute_pool, 0)
    first = backup(lab, vm, "daily-20261128_170000", **ssh_access.module_args("source"))
    assert not first.failed, dumps(first)
    assert first["cmd"].startswith("ssh ") and "-p %d" % ssh_access.port in first["cmd"]
    lab.write_data(disk, "over-ssh.bin", 2)
    second = backup(lab, vm, "daily-20261128_180000", prune_source=True, **ssh_access.module_args("source"))
    assert not second.failed and second["incremental"], dumps(second)
    assert dataset_checksums(target_of(lab, vm)) == dataset_checksums(disk)


def test_file_backup_pulled_over_ssh(lab, vm, ssh_access):
    res = backup(lab, vm, "daily-20261128_190000", type="file", compression="gzip",
                 **ssh_access.module_args("source"))
    assert not res.failed and res["file_path"].endswith(".zfs.gz"), dumps(res)


def test_unreachable_compute_node_fails_clearly(lab, vm, ssh_access):
    args = ssh_access.module_args("source")
    args["source_port"] = 1  # nothing listens there
    res = backup(lab, vm, "daily-20261128_200000", **args)
    assert res.failed and ("ssh" in res["msg"].lower() or "connect" in res["msg"].lower()), dumps(res)
