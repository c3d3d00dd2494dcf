"""The store: no lost update under threads, no unloadable file after a crash, backups outlive VMs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from vmbackup.auth import Auth, check_password
from vmbackup.store import Store

UUID = "11111111-2222-4333-8444-555555555555"


def a_vm(uuid: str = UUID, hostname: str = "web.example.com") -> dict:
    return {"uuid": uuid, "hostname": hostname, "node": "n1", "brand": "kvm", "state": "stopped",
            "disks": [{"disk_id": 1, "dataset": "zones/%s-disk0" % uuid, "size": 1 << 30}]}


def a_backup(name: str, uuid: str = UUID, hostname: str = "web.example.com") -> dict:
    return {"hostname": hostname, "vm_uuid": uuid, "define": "daily", "name": name, "disk_id": 1, "type": 1,
            "node": "b1", "zpool": "zones", "created": "2026-11-28T00:00:00.000Z", "status": 1, "size": 1,
            "time": 1, "file_path": None, "note": ""}


def test_concurrent_writes_lose_nothing(tmp_path):
    store = Store(str(tmp_path))
    store.upsert_vm(a_vm())
    for i in range(40):
        store.insert_backup(a_backup("daily-%03d" % i))

    def note_all(worker: int) -> None:
        for i in range(worker, 40, 4):
            store.update_backup(UUID, 1, "daily-%03d" % i, {"note": "by %d" % worker})
            store.save_definition({"vm_uuid": UUID, "hostname": "web.example.com", "disk_id": 1,
                                   "name": "d%d-%d" % (worker, i)})

    threads = [threading.Thread(target=note_all, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reloaded = Store(str(tmp_path))  # what is on disk, not what is cached
    notes = {b["name"]: b["note"] for b in reloaded.backups(vm_uuid=UUID)}
    assert notes == {"daily-%03d" % i: "by %d" % (i % 4) for i in range(40)}
    assert len(reloaded.definitions(UUID)) == 40


def test_a_crash_mid_write_leaves_files_that_load(tmp_path):
    writer = textwrap.dedent("""
        import sys
        from vmbackup.store import Store
        store = Store(sys.argv[1])
        store.upsert_vm({"uuid": "%s", "hostname": "h", "node": "n", "disks": []})
        i = 0
        while True:
            store.insert_backup({"hostname": "h", "vm_uuid": "%s", "name": "b%%d" %% i, "disk_id": 1,
                                 "note": "x" * 2000})
            i += 1
    """ % (UUID, UUID))
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path)])
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for folder, _dirs, files in os.walk(tmp_path):
            for name in files:
                if name.endswith(".json"):
                    with open(os.path.join(folder, name)) as handle:
                        json.load(handle)  # every file is whole
        store = Store(str(tmp_path))
        assert len(store.backups(vm_uuid=UUID)) > 0


def test_backups_outlive_their_vm_and_are_found_by_the_original_hostname(tmp_path):
    store = Store(str(tmp_path))
    store.upsert_vm(a_vm())
    store.insert_backup(a_backup("daily-1"))
    store.save_definition({"vm_uuid": UUID, "hostname": "web.example.com", "disk_id": 1, "name": "daily"})
    store.upsert_vm(a_vm(hostname="renamed.example.com"))  # renamed
    assert store.get_vm("web.example.com") is None and store.get_vm("renamed.example.com")["uuid"] == UUID
    assert [b["name"] for b in store.backups("web.example.com")] == ["daily-1"]
    store.mark_vm_deleted(UUID)
    reloaded = Store(str(tmp_path))
    assert reloaded.get_vm(UUID) is None and reloaded.get_vm("renamed.example.com") is None
    assert [b["name"] for b in reloaded.backups("web.example.com")] == ["daily-1"]
    assert [b["name"] for b in reloaded.backups(UUID)] == ["daily-1"]
    assert reloaded.definitions() == []  # a deleted VM's definitions are not listed


def test_passwords_and_tokens_are_stored_hashed(tmp_path):
    store = Store(str(tmp_path))
    auth = Auth(store, token_lifetime=1)
    key = auth.add_user("alice", "correct horse", admin=True)
    token = auth.login("alice", "correct horse")["token"]
    raw = open(os.path.join(tmp_path, "main.json")).read()
    assert "correct horse" not in raw and token not in raw and key not in raw
    assert check_password("correct horse", store.get_user("alice")["password"])
    assert auth.authenticate("Token " + token, None)["username"] == "alice"
    assert auth.authenticate(None, key)["username"] == "alice"
    time.sleep(2.1)
    try:
        auth.authenticate("Token " + token, None)
        raise AssertionError("an expired token was accepted")
    except Exception as err:
        assert str(err) == "Invalid token."


def test_newest_backups_follow_every_write(tmp_path):
    """The scheduler's per-minute question (each definition's newest OK backup) is answered from a cache
    per VM file; a write of that file, by this store or another process, must show in the next answer."""
    store, other = Store(str(tmp_path)), None

    def backup(uuid, name, created, status=1, define="daily"):
        return {"vm_uuid": uuid, "hostname": "h-" + uuid, "disk_id": 1, "define": define, "name": name,
                "created": created, "status": status}

    store.insert_backup(backup("a", "daily-1", "2026-12-01T01:00:00Z"))
    store.insert_backup(backup("a", "daily-2", "2026-12-01T02:00:00Z", status=0))  # not OK: not counted
    store.insert_backup(backup("b", "daily-1", "2026-12-01T01:00:00Z"))
    names = lambda: {k: v["name"] for k, v in store.newest_backups(1).items()}  # noqa: E731
    assert names() == {("a", 1, "daily"): "daily-1", ("b", 1, "daily"): "daily-1"}
    store.update_backup("a", 1, "daily-2", {"status": 1})
    assert names()[("a", 1, "daily")] == "daily-2"
    other = Store(str(tmp_path))  # another process's write
    other.insert_backup(backup("b", "daily-3", "2026-12-01T03:00:00Z"))
    assert names()[("b", 1, "daily")] == "daily-3"
    store.delete_backups("b", 1, ["daily-3"])
    assert names()[("b", 1, "daily")] == "daily-1"
    answer = store.newest_backups(1)
    answer[("a", 1, "daily")]["name"] = "changed by a caller"
    assert names()[("a", 1, "daily")] == "daily-2"  # callers get copies
