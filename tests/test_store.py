"""The store: no lost update under threads, no unloadable file after a crash, backups outlive VMs."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from vmbackup.app.auth import Auth, check_password
from vmbackup.store import journal
from vmbackup.store.store import Store

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
        from vmbackup.store.store import Store
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
    for when in ("in the journal", "after a checkpoint"):
        raw = ""
        for folder, _dirs, files in os.walk(tmp_path):
            raw += "".join(open(os.path.join(folder, name), errors="replace").read() for name in files)
        assert "alice" in raw, when  # the records are there...
        assert "correct horse" not in raw and token not in raw and key not in raw, when  # ...their secrets not
        store.checkpoint()
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


WRITER = textwrap.dedent("""
    import sys
    from vmbackup.store.store import Store
    store = Store(sys.argv[1])
    if sys.argv[2] != "0":
        store.start_checkpoints(float(sys.argv[2]))
    i = 0
    while True:
        store.insert_backup({"hostname": "h", "vm_uuid": "u%d" % (i % 7), "name": "b%d" % i, "disk_id": 1,
                             "define": "d", "status": 1, "note": "x" * 500})
        print(i, flush=True)  # acknowledged: insert_backup returned
        i += 1
""")


def acknowledged_then_killed(data_dir: str, checkpoint_every: str, seconds: float) -> int:
    """Run WRITER, SIGKILL it after `seconds`; how many inserts it was told were committed."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, data_dir, checkpoint_every], stdout=subprocess.PIPE,
                            text=True)
    time.sleep(seconds)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    lines = out.split()
    return int(lines[-1]) + 1 if lines else 0


def stored_names(store: Store) -> set[str]:
    return {b["name"] for b in store.backups()}


def test_every_acknowledged_write_survives_a_kill(tmp_path):
    """Commits live in the journal until a checkpoint; a kill at any moment (mid-write, mid-checkpoint)
    loses none that returned, and the next open folds the journal into the files."""
    for checkpoint_every in ("0", "0.05"):
        data = str(tmp_path / ("every-" + checkpoint_every))
        acked = acknowledged_then_killed(data, checkpoint_every, 2.0)
        assert acked > 20
        if checkpoint_every == "0":  # nothing but the journal holds them
            assert not os.listdir(os.path.join(data, "vms"))
            assert os.listdir(os.path.join(data, "journal"))
        reopened = Store(data)
        assert {"b%d" % i for i in range(acked)} <= stored_names(reopened)
        assert not os.listdir(os.path.join(data, "journal"))  # the open checkpointed
        assert {"b%d" % i for i in range(acked)} <= stored_names(Store(data))  # from the files alone


def test_a_torn_journal_line_is_cut_off_and_what_follows_it_is_kept(tmp_path):
    store = Store(str(tmp_path))
    store.insert_backup(a_backup("daily-1"))
    store.insert_backup(a_backup("daily-2"))
    segment = os.path.join(tmp_path, "journal", os.listdir(os.path.join(tmp_path, "journal"))[0])
    with open(segment, "rb") as handle:
        lines = handle.read().splitlines(keepends=True)
    with open(segment, "wb") as handle:  # the second commit cut short by a crash, as a power loss leaves it
        handle.write(lines[0] + lines[1][: len(lines[1]) // 2])
    lock = os.open(os.path.join(tmp_path, "checkpoint.lock"), os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # keep the next open from checkpointing: it must append after the tear
    try:
        reopened = Store(str(tmp_path))
        assert {b["name"] for b in reopened.backups(vm_uuid=UUID)} == {"daily-1"}
        reopened.insert_backup(a_backup("daily-3"))
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    assert {b["name"] for b in Store(str(tmp_path)).backups(vm_uuid=UUID)} == {"daily-1", "daily-3"}


def test_two_stores_share_writes_through_checkpoints(tmp_path):
    """Two stores on one data dir (as two processes: each has its own flock) write, read and checkpoint
    at the same time; every write is seen by the other and by a store opened afterwards."""
    first, second = Store(str(tmp_path)), Store(str(tmp_path))
    first.upsert_vm(a_vm())
    first.insert_backup(a_backup("daily-0"))
    assert [b["name"] for b in second.backups(vm_uuid=UUID)] == ["daily-0"]
    assert first.checkpoint() == 1 and second.checkpoint() == 0  # nothing left for the second to write
    second.update_backup(UUID, 1, "daily-0", {"note": "by second"})
    assert first.get_backup(UUID, 1, "daily-0")["note"] == "by second"
    stop = threading.Event()
    failures = []

    def writer(store: Store, who: str) -> None:
        for i in range(60):
            store.insert_backup(a_backup("%s-%02d" % (who, i)))
            store.update_backup(UUID, 1, "daily-0", {"note": "%s %d" % (who, i)})
            seen = {b["name"] for b in store.backups(vm_uuid=UUID)}
            if "%s-%02d" % (who, i) not in seen:
                failures.append((who, i))

    def checkpoints(store: Store) -> None:
        while not stop.is_set():
            store.checkpoint()

    threads = [threading.Thread(target=writer, args=(first, "a")), threading.Thread(target=writer, args=(second, "b"))]
    helpers = [threading.Thread(target=checkpoints, args=(s,)) for s in (first, second)]
    for thread in threads + helpers:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    for thread in helpers:
        thread.join()
    expected = {"daily-0"} | {"%s-%02d" % (w, i) for w in "ab" for i in range(60)}
    assert not failures
    for store in (first, second, Store(str(tmp_path))):
        assert {b["name"] for b in store.backups(vm_uuid=UUID)} == expected
    last = {store.get_backup(UUID, 1, "daily-0")["note"] for store in (first, second, Store(str(tmp_path)))}
    assert len(last) == 1 and last.pop() in ("a 59", "b 59")


def test_a_commit_that_cannot_be_written_leaves_no_trace(tmp_path):
    store = Store(str(tmp_path))
    store.insert_backup(a_backup("daily-1"))
    append = store.journal.append

    def disk_full(segment, changes):
        raise OSError(28, "No space left on device")

    store.journal.append = disk_full
    try:
        with store.lock:
            store.insert_backup(a_backup("daily-2"))
            store.update_backup(UUID, 1, "daily-1", {"note": "lost"})
        raise AssertionError("the commit did not fail")
    except OSError as err:
        assert err.errno == 28
    store.journal.append = append
    assert [(b["name"], b["note"]) for b in store.backups(vm_uuid=UUID)] == [("daily-1", "")]
    store.insert_backup(a_backup("daily-3"))
    assert {b["name"] for b in Store(str(tmp_path)).backups(vm_uuid=UUID)} == {"daily-1", "daily-3"}


def test_a_journal_line_naming_a_file_outside_the_store_is_ignored(tmp_path):
    data = tmp_path / "data"
    store = Store(str(data))
    store.insert_backup(a_backup("daily-1"))
    segment = os.path.join(data, "journal", os.listdir(os.path.join(data, "journal"))[0])
    forged = {"../outside.json": {"t": {"1": {"x": 1}}}, "vms/../../escape.json": {"t": {"1": {"x": 1}}},
              "vms/%s.json" % UUID: {"backups": {"99": dict(a_backup("daily-2"))}}}
    with open(segment, "ab") as handle:
        handle.write(journal.encode(forged))
    reopened = Store(str(data))
    assert {b["name"] for b in reopened.backups(vm_uuid=UUID)} == {"daily-1", "daily-2"}
    assert sorted(os.listdir(tmp_path)) == ["data"] and not os.path.exists(data / "outside.json")


def test_a_checkpoint_cut_short_loses_nothing_at_the_next_one(tmp_path):
    """A file that a checkpoint failed to write is written by the next one, before its segments go."""
    store = Store(str(tmp_path))
    store.insert_backup(a_backup("daily-1"))
    storage = store._partition(UUID).storage
    flush = storage.flush

    def disk_full(data):
        raise OSError(28, "No space left on device")

    storage.flush = disk_full
    try:
        store.checkpoint()
        raise AssertionError("the checkpoint did not fail")
    except OSError as err:
        assert err.errno == 28
    storage.flush = flush
    store.insert_task({"task_id": "t1", "status": "PENDING"})  # another file only, in the next segment
    assert store.checkpoint() == 2
    assert not os.listdir(os.path.join(tmp_path, "journal"))
    os.remove(os.path.join(tmp_path, "generation"))  # nothing but the files now
    reopened = Store(str(tmp_path))
    assert [b["name"] for b in reopened.backups(vm_uuid=UUID)] == ["daily-1"] and reopened.get_task("t1")


def test_two_stores_inserting_in_turn_never_reuse_a_document_id(tmp_path):
    """A TinyDB table caches the next document id it will give; the other process may have used it since.
    Each store's inserts in turn (journal replay), and after a checkpoint (files re-read), keep every record."""
    first, second = Store(str(tmp_path)), Store(str(tmp_path))
    for i in range(6):
        store = (first, second)[i % 2]
        store.insert_task({"task_id": "t%d" % i, "status": "SUCCESS"})
        store.log({"task_id": "t%d" % i})
        store.insert_backup(a_backup("daily-%d" % i))
        if i == 3:
            assert first.checkpoint() >= 2
    for store in (first, second, Store(str(tmp_path))):
        assert all(store.get_task("t%d" % i) for i in range(6))
        assert sorted(e["task_id"] for e in store.task_log()) == ["t%d" % i for i in range(6)]
        assert {b["name"] for b in store.backups(vm_uuid=UUID)} == {"daily-%d" % i for i in range(6)}
