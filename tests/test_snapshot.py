"""vmbackup.zfs.snapshot: properties, idempotence, check mode, and fsfreeze around the snapshot.

There is no VM on these machines, so the guest agent is a stand-in: a unix socket server that
answers the QEMU guest agent protocol with the replies a real qemu-ga gives (guest-sync echoes its
id; guest-fsfreeze-freeze/thaw return the number of filesystems; errors are {"error": {...}}).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading

from ansible_run import dumps, run_module
from conftest import exists, snapshots, zfs


class FakeGuestAgent(threading.Thread):
    """Replays qemu-ga replies and records, for each command, whether the snapshot existed then."""

    def __init__(self, snapshot: str, freeze_error: str | None = None):
        super().__init__(daemon=True)
        self.path = os.path.join(tempfile.mkdtemp(prefix="qga-"), "vm.qga")
        self.snapshot, self.freeze_error = snapshot, freeze_error
        self.log: list[tuple[str, bool]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)

    def run(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rb") as reader:
            for raw in reader:
                request = json.loads(raw.lstrip(b"\xff"))
                command = request["execute"]
                self.log.append((command, exists(self.snapshot)))
                if command == "guest-sync":
                    reply = {"return": request["arguments"]["id"]}
                elif command == "guest-fsfreeze-freeze" and self.freeze_error:
                    reply = {"error": {"class": "GenericError", "desc": self.freeze_error}}
                else:
                    reply = {"return": 2}
                conn.sendall(json.dumps(reply).encode() + b"\n")


def test_snapshot_with_properties_is_idempotent(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    args = {"dataset": disk, "name": "daily-20261128_210000", "properties": {"vmbackup:define": "daily"}}
    first = run_module("vmbackup.zfs.snapshot", args)
    assert not first.failed and first["changed"] and first["guid"], dumps(first)
    assert zfs("get", "-H", "-o", "value", "vmbackup:define", disk + "@daily-20261128_210000").strip() == "daily"
    again = run_module("vmbackup.zfs.snapshot", args)
    assert not again.failed and again["changed"] is False and again["guid"] == first["guid"]
    gone = run_module("vmbackup.zfs.snapshot", dict(args, state="absent"))
    assert gone["changed"] and gone["destroyed"] and snapshots(disk) == []
    made = {"snapshot": disk + "@daily-20261128_210000", "properties": {"vmbackup:define": "daily"}}
    assert first["diff"] == {"before": None, "after": made}, dumps(first)
    assert again["diff"] == {"before": made, "after": made} and gone["diff"] == {"before": made, "after": None}


def test_a_missing_dataset_fails_in_the_one_failure_shape(lab, vm):
    res = run_module("vmbackup.zfs.snapshot", {"dataset": lab.compute_pool + "/nosuchdisk", "name": "daily"})
    assert res.failed and res["msg"] == "dataset: %s/nosuchdisk does not exist on this node" % lab.compute_pool
    assert res["cmd"] is None and res["rc"] is None and res["stages"] == [] and res["cleanup"] == [], dumps(res)


def test_check_mode_creates_nothing(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    res = run_module("vmbackup.zfs.snapshot", {"dataset": disk, "name": "daily-20261128_220000"}, check=True)
    assert res["changed"] and snapshots(disk) == []


def test_fsfreeze_freezes_before_and_thaws_after_the_snapshot(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    agent = FakeGuestAgent(disk + "@daily-20261128_230000")
    agent.start()
    res = run_module("vmbackup.zfs.snapshot", {"dataset": disk, "name": "daily-20261128_230000",
                                               "fsfreeze": True, "qga_socket": agent.path})
    assert not res.failed and res["fsfreeze"]["frozen"] and res["fsfreeze"]["thawed"], dumps(res)
    commands = [(c, snap) for c, snap in agent.log if c != "guest-sync"]
    assert commands == [("guest-fsfreeze-freeze", False), ("guest-fsfreeze-thaw", True)]


def test_failed_freeze_still_snapshots_thaws_and_says_so(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    agent = FakeGuestAgent(disk + "@daily-20261128_233000", freeze_error="Command guest-fsfreeze-freeze failed")
    agent.start()
    res = run_module("vmbackup.zfs.snapshot", {"dataset": disk, "name": "daily-20261128_233000",
                                               "fsfreeze": True, "qga_socket": agent.path})
    assert not res.failed and not res["fsfreeze"]["frozen"], dumps(res)
    assert "fsfreeze failed" in res["fsfreeze"]["msg"] and res.get("warnings")
    assert snapshots(disk) == ["daily-20261128_233000"]
    assert agent.log[-1][0] == "guest-fsfreeze-thaw"


def test_missing_guest_agent_socket_is_not_fatal(lab, vm):
    disk = vm.disk(lab.compute_pool, 0)
    res = run_module("vmbackup.zfs.snapshot", {"dataset": disk, "name": "daily-20261128_234000",
                                               "fsfreeze": True, "qga_socket": "/nonexistent/vm.qga"})
    assert not res.failed and "cannot connect" in res["fsfreeze"]["msg"], dumps(res)
    assert snapshots(disk) == ["daily-20261128_234000"]


def test_fsfreeze_without_socket_is_refused(lab, vm):
    res = run_module("vmbackup.zfs.snapshot", {"dataset": vm.disk(lab.compute_pool, 0), "name": "x", "fsfreeze": True})
    assert res.failed and "qga_socket" in res["msg"], dumps(res)
