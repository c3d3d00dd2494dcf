"""Untrusted input never becomes code, and no client or second writer loses a record.

Tried as an attacker would: template payloads in every string a playbook gets (through the API, through
discovery, through a scheduled batch), a second writer beside a running service, cancel after pid reuse,
big and broken requests, two VMs with one hostname, password guessing, and file modes.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid as uuidlib

import pytest
import yaml
from api_env import ADMIN, BIN, make_vm, new_env, seed, seed_nodes, write_inventory

from vmbackup.app import auth as authmod
from vmbackup.app.discovery import checked_vm
from vmbackup.app.scheduler import Scheduler
from vmbackup.app.service import Service
from vmbackup.domain import errors
from vmbackup.engine import cpugroup, unsafe
from vmbackup.engine.runner import Runner
from vmbackup.store.store import Store


def payload(canary: str) -> str:
    """A string that, if Ansible ever templated it, would create `canary` on the controller."""
    return "{{ lookup('ansible.builtin.pipe', 'touch %s') }}x" % canary


@pytest.fixture
def canaries(tmp_path):
    folder = tmp_path / "canaries"
    folder.mkdir()
    yield folder
    assert list(folder.iterdir()) == [], "a payload was evaluated: %s" % list(folder.iterdir())


def run_playbook(lab, tmp_path, playbook: str, extravars: dict, timeout: float = 300) -> dict:
    """One run through the service's own runner (extravars as the service writes them); its result."""
    inventory = str(tmp_path / "hosts.yml")
    write_inventory(inventory, lab)
    runner = Runner(str(tmp_path / "runs"), inventory)
    done = threading.Event()
    outcome = {}
    ident = uuidlib.uuid4().hex
    runner.start(ident, playbook, extravars, lambda result: (outcome.update(result=result), done.set()))
    assert done.wait(timeout), "the run did not end"
    return outcome["result"]


def test_extravars_are_written_unsafe_at_every_depth():
    text = unsafe.dump({"hostname": "{{ x }}", "backups": [{"bkpname": "{% y %}", "disk_id": 1}], "n": None})
    assert "hostname: !unsafe '{{ x }}'" in text and "bkpname: !unsafe '{% y %}'" in text
    assert "disk_id: 1" in text and "n: null" in text
    with pytest.raises(ValueError):
        unsafe.dump({"{{ key }}": 1})


BACKUP_STRINGS = ["node", "compute_node", "vm_uuid", "hostname", "bkpdef", "bkpname", "zpool",
                  "vmbackup_progress_file", "compression", "qga_socket"]


@pytest.mark.parametrize("field", BACKUP_STRINGS)
def test_a_payload_in_any_backup_variable_is_never_evaluated(lab, tmp_path, canaries, field):
    vm = make_vm(lab, "inj")
    extravars = {"node": "tb", "compute_node": "tc", "vm_uuid": vm.uuid, "hostname": vm.hostname, "disk_id": 1,
                 "bkpdef": "daily", "bkpname": "daily-20261201_000000", "zpool": lab.backup_pool, "type": 1,
                 "compression": "0", "bwlimit": 0, "fsfreeze": False, "retention": 0,
                 "vmbackup_progress_file": str(tmp_path / "progress.json")}
    extravars[field] = payload(canaries / field)
    result = run_playbook(lab, tmp_path, "backup.yml", extravars)
    if field not in ("vmbackup_progress_file", "qga_socket", "hostname"):  # (vm_uuid names the VM)
        assert not result.ok  # a payload is not a valid value either: the run refuses it


def test_payloads_in_the_other_playbooks_and_nested_batch_items_are_never_evaluated(lab, tmp_path, canaries):
    vm = make_vm(lab, "injb")
    bad = {name: payload(canaries / name) for name in ("node", "hostname", "zpool", "bkpname", "vm_uuid")}
    item = {"node": "tb", "compute_node": payload(canaries / "item-compute"),
            "vm_uuid": payload(canaries / "item-uuid"),
            "hostname": payload(canaries / "item-host"), "disk_id": 1, "bkpdef": payload(canaries / "item-def"),
            "bkpname": payload(canaries / "item-name"), "zpool": payload(canaries / "item-pool"), "type": 1,
            "compression": payload(canaries / "item-comp"), "bwlimit": 0, "fsfreeze": False}
    run_playbook(lab, tmp_path, "backup_batch.yml", {"node": "tb", "backups": [item]})
    for playbook in ("restore.yml", "delete.yml", "prune.yml", "verify.yml"):
        run_playbook(lab, tmp_path, playbook, dict(bad, vm_uuid=vm.uuid, disk_id=1, type=1, bkpdef="daily",
                                                   retention=1, target_hostname=bad["hostname"],
                                                   target_disk_id=1, compute_node="tc",
                                                   target_compute_node="tc", file_path=bad["zpool"]))


def service_for(lab, data_dir: str) -> Service:
    os.makedirs(data_dir)
    inventory = os.path.join(data_dir, "hosts.yml")
    write_inventory(inventory, lab)
    store = Store(data_dir)
    seed_nodes(store, lab)
    return Service(store, Runner(os.path.join(data_dir, "runs"), inventory))


def wait_task(service: Service, task_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = service.store.get_task(task_id)
        if task["status"] != "PENDING":
            return task
        time.sleep(0.3)
    raise AssertionError("task %s still pending" % task_id)


def test_a_record_with_a_payload_hostname_backs_up_and_a_scheduled_batch_too(lab, tmp_path, canaries):
    """Records made before discovery checked hostnames (or written by hand) still never run as code."""
    service = service_for(lab, str(tmp_path / "data"))
    admin = {"id": 1, "username": "admin", "is_admin": True}
    vms = [make_vm(lab, "pl1"), make_vm(lab, "pl2")]
    for n, vm in enumerate(vms):
        seed(service.store, lab, vm, hostname=payload(canaries / ("host%d" % n)))
        service.store.save_definition({"hostname": vm.hostname, "vm_uuid": vm.uuid, "name": "daily", "disk_id": 1,
                                       "type": 1, "node": "tb", "zpool": lab.backup_pool, "schedule": "* * * * *",
                                       "retention": 1, "active": True, "compression": 0, "bwlimit": None,
                                       "desc": "", "fsfreeze": False, "created": "2026-01-01T00:00:00.000Z",
                                       "last_due": "2026-01-01T00:00:00.000Z"})
    task = wait_task(service, service.backups.create(admin, vms[0].uuid, "daily", {}))
    assert task["status"] == "SUCCESS", task["result"]
    time.sleep(1.1)  # the next backup gets another name (its time stamp has seconds)
    started = Scheduler(service, str(tmp_path / "data")).tick()
    assert len(started) == 1 and len(service.store.get_task(started[0])["items"]) == 2  # one run, two disks
    wait_task(service, started[0])


def test_a_job_answered_but_not_started_before_a_crash_runs_after_the_restart(lab, tmp_path):
    """The 201 comes once the task is recorded; the run starts after. A service that dies in between
    (here: its launcher never gets the task) leaves a task that the next service starts."""
    data = str(tmp_path / "data")
    first = service_for(lab, data)
    vm = make_vm(lab, "crash")
    seed(first.store, lab, vm)
    first.store.save_definition({"hostname": vm.hostname, "vm_uuid": vm.uuid, "name": "daily", "disk_id": 1,
                                 "type": 1, "node": "tb", "zpool": lab.backup_pool, "schedule": "0 4 * * *",
                                 "retention": 0, "active": True, "compression": 0, "bwlimit": None, "desc": "",
                                 "fsfreeze": False, "created": "2026-01-01T00:00:00.000Z"})
    first.queue._hand_over = lambda task: None  # the process dies right after answering
    task_id = first.backups.create({"id": 1, "username": "admin", "is_admin": True}, vm.uuid, "daily", {})
    assert first.store.get_task(task_id)["status"] == "PENDING" and not first.queue.runner.running(task_id)
    second = Service(Store(data), Runner(os.path.join(data, "runs"), os.path.join(data, "hosts.yml")))
    assert second.tasks.recover() == 1
    task = wait_task(second, task_id)
    assert task["status"] == "SUCCESS", task["result"]
    assert [b["status"] for b in second.store.backups(vm_uuid=vm.uuid)] == [1]


def test_discovery_skips_a_vm_whose_report_fails_a_check(lab, tmp_path, canaries):
    env = new_env(lab)
    good = make_vm(lab, "okvm")
    evil = make_vm(lab, "evil")
    subprocess.run(["zfs", "set", "vmbackup:hostname=" + payload(canaries / "discovered") + ".example.com",
                    evil.disk(lab.compute_pool, 0)], check=True)
    proc = subprocess.run([os.path.join(BIN, "vmbackup"), "discover", "--data-dir", env.data_dir,
                           "--inventory", env.inventory], capture_output=True, text=True, timeout=300)
    try:
        assert proc.returncode == 0, proc.stderr
        store = Store(env.data_dir)
        assert store.get_vm(good.uuid)["hostname"] == good.hostname
        assert store.get_vm(evil.uuid) is None  # it never reaches the store
        line = next(line for line in proc.stderr.splitlines() if evil.uuid in line)
        assert "node tc" in line and "hostname" in line and "skipped" in line
        assert json.loads(proc.stdout)["skipped"] >= 1
    finally:
        shutil.rmtree(env.data_dir, ignore_errors=True)


@pytest.mark.parametrize("field, value", [
    ("hostname", "web\n.example.com"), ("hostname", "a" * 254), ("hostname", "-bad.example.com"),
    ("hostname", "11111111-2222-4333-8444-555555555556"), ("uuid", "11111111-2222-4333-8444-555555555555\n"),
    ("brand", "kvm; rm -rf /"), ("state", "{{ x }}"), ("disk_id", 0), ("disk_id", "1"), ("dataset", "zones/x\n"),
    ("dataset", "zones/../etc"), ("size", -1), ("qga_socket", "relative/path"), ("locked", "no")])
def test_each_field_a_node_reports_is_checked(field, value):
    vm = {"uuid": "11111111-2222-4333-8444-555555555555", "hostname": "web.example.com", "brand": "kvm",
          "state": "running", "locked": False,
          "disks": [{"disk_id": 1, "dataset": "zones/11111111-2222-4333-8444-555555555555-disk0", "size": 1}]}
    assert checked_vm(vm, "n1")["hostname"] == "web.example.com"
    if field in ("disk_id", "dataset", "size"):
        vm["disks"][0][field] = value
    else:
        vm[field] = value
    with pytest.raises(ValueError) as refusal:
        checked_vm(vm, "n1")
    assert refusal.value.field == field


@pytest.fixture(scope="module")
def env(lab):
    env = new_env(lab)
    store = Store(env.data_dir)
    seed_nodes(store, lab)
    store.upsert_node({"name": "tb2", "roles": ["backup"], "operational": False, "pools": None})
    env.vms = {"a": make_vm(lab, "harda"), "twin1": make_vm(lab, "twin"), "twin2": make_vm(lab, "twin")}
    for key, vm in env.vms.items():
        seed(store, lab, vm, hostname="twin.example.com" if key.startswith("twin") else vm.hostname)
    del store
    env.admin_key = env.add_user(*ADMIN, admin=True)
    env.serve_args = ["--no-discover", "--no-scheduler", "--stream-limit", "2"]
    os.environ["VMBACKUP_TEST_SECRET"] = "s3cr3t-of-the-service"
    try:
        env.start()
    finally:
        del os.environ["VMBACKUP_TEST_SECRET"]
    yield env
    env.stop()
    shutil.rmtree(env.data_dir, ignore_errors=True)


def test_a_definition_pool_must_be_one_the_node_reported(env):
    client, vm = env.client(), env.vms["a"]
    base = {"schedule": "0 4 * * *", "retention": 3}
    bad = client.post("vm/%s/define/backup/p1" % vm.hostname, node="tb", zpool="{{ 7*7 }}", **base)
    assert bad.status == 400 and "zpool" in bad.result
    assert client.post("vm/%s/define/backup/p1" % vm.hostname, node="tb", zpool="nosuch", **base).status == 400
    unknown = client.post("vm/%s/define/backup/p1" % vm.hostname, node="tb2", zpool="zones", **base)
    assert unknown.status == 423 and unknown.body == {"detail": "Node is not operational"}
    newline = client.post("vm/%s/define/backup/x%%0A" % vm.hostname, node="tb", zpool=env.lab.backup_pool, **base)
    assert newline.status == 400 and "name" in newline.result


def test_user_add_while_serving_keeps_the_user(env):
    client = env.client()
    env.add_user("bob", "bob-password-1")
    assert env.client().login(*ADMIN).status == 200  # the service writes main.json (a token)
    assert env.client(("bob", "bob-password-1")).get("task").status == 200
    listed = subprocess.run([os.path.join(BIN, "vmbackup"), "user", "list", "--data-dir", env.data_dir],
                            capture_output=True, text=True, check=True).stdout
    assert "bob" in listed and "admin" in listed
    assert client.get("task").status == 200


def test_a_password_change_ends_the_users_tokens(env):
    env.add_user("carol", "carol-password-1")
    carol = env.client(("carol", "carol-password-1"))
    assert carol.get("task").status == 200
    env.add_user("carol", "carol-password-2")
    assert carol.get("task").body == {"detail": "Invalid token."}
    assert env.client(("carol", "carol-password-2")).get("task").status == 200


def test_login_is_throttled(env):
    client = env.client(None)
    replies = [client.post("accounts/login", username="dave", password="wrong-%d" % i) for i in range(6)]
    assert [r.status for r in replies[:5]] == [400] * 5
    assert replies[5].status == 429 and int(replies[5].headers["retry-after"]) >= 1
    assert "detail" in replies[5].body
    time.sleep(int(replies[5].headers["retry-after"]) + 0.5)  # this address may log in again


def test_an_unknown_user_costs_as_long_as_a_wrong_password(tmp_path):
    auth = authmod.Auth(Store(str(tmp_path)), throttle=authmod.Throttle(free=1000))
    auth.add_user("erin", "erin-password")

    def timed(username: str) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            with pytest.raises(errors.LoginFailed):
                auth.login(username, "not-the-password", "10.0.0.1")
            times.append(time.perf_counter() - start)
        return sorted(times)[2]

    known, unknown = timed("erin"), timed("nobody")
    assert 0.5 < unknown / known < 2, (known, unknown)


def test_passwords_are_argon2id_and_expired_tokens_purged(tmp_path):
    store = Store(str(tmp_path))
    auth = authmod.Auth(store, token_lifetime=1)
    auth.add_user("frank", "frank-password")
    auth.login("frank", "frank-password")
    assert store.get_user("frank")["password"].startswith("$argon2id$")
    time.sleep(1.2)
    auth.login("frank", "frank-password")
    assert len(store.main.table("tokens").all()) == 1


def raw_request(env, head: str, body: bytes = b"", chunks: list[bytes] | None = None) -> tuple[int, dict, bytes]:
    """Send a request as bytes (the body from a thread, as a client that keeps sending) and read the answer."""
    with socket.create_connection(("127.0.0.1", env.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n")

        def send():
            try:
                if body:
                    sock.sendall(body)
                for chunk in chunks or []:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if chunks:
                    sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server answered and closed before reading it all: as it should

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
    status = int(data.split(b" ", 2)[1])
    head, _, rest = data.partition(b"\r\n\r\n")
    fields = (line.decode().partition(": ") for line in head.split(b"\r\n")[1:])
    return status, {k.lower(): v for k, _, v in fields}, rest


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def rss(pid: int) -> int:
    with open("/proc/%d/status" % pid) as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))


def test_a_big_body_is_refused_unread_and_memory_stays_flat(env):
    before = rss(env.proc.pid)
    big = 64 << 20
    status, headers, body = raw_request(
        env, "POST /api/accounts/login/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %d" % big, b"x" * big)
    assert status == 413 and headers["content-type"].startswith("application/json") and b"detail" in body
    status, headers, body = raw_request(
        env, "POST /api/accounts/login/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Transfer-Encoding: chunked", chunks=[b"y" * (1 << 20)] * 3)
    assert status == 413 and headers["content-type"].startswith("application/json")
    assert rss(env.proc.pid) - before < 16 << 20
    assert env.client().get("task").status == 200  # and it still answers


def test_broken_requests_get_400_json_never_html(env):
    head = "Authorization: Token %s\r\nContent-Type: application/json" % env.client().token
    deep = b"[" * 100000 + b"]" * 100000
    for path, body in (("/api/vm/x/define/backup/d/", deep), ("/api/accounts/login/", b'{"username": "\xff\xfe"}'),
                       ("/api/vm/x/define/backup/d/", b"{not json")):
        status, headers, reply = raw_request(
            env, "POST %s HTTP/1.1\r\nHost: x\r\n%s\r\nContent-Length: %d" % (path, head, len(body)), body)
        assert status == 400 and headers["content-type"].startswith("application/json"), (path, status, reply[:200])
        assert json.loads(reply)
    for target in ("/api/vm/%ff%fe/backup/", "/api/vm/define/backup/?full=%ff%fe"):
        status, headers, reply = raw_request(env, "GET %s HTTP/1.1\r\nHost: x\r\n%s" % (target, head))
        assert status == 400 and headers["content-type"].startswith("application/json"), (target, reply[:200])
        assert "detail" in json.loads(reply) or "result" in json.loads(reply)


def test_two_vms_with_one_hostname_keep_their_definitions(env, tmp_path):
    client = env.client()
    twins = [env.vms["twin1"], env.vms["twin2"]]
    for vm in twins:
        assert client.post("vm/%s/define/backup/tw" % vm.uuid, node="tb", zpool=env.lab.backup_pool,
                           schedule="* * * * *", retention=2).status == 201
    by_name = client.get("vm/twin.example.com/define/backup")
    assert by_name.status == 404 and "uuid" in by_name.body["detail"] and twins[0].uuid in by_name.body["detail"]
    listed = client.get("vm/define/backup", full=True).result
    assert {d["vm_uuid"] for d in listed if d["name"] == "tw"} == {twins[0].uuid, twins[1].uuid}
    # The scheduler keys on uuids: both are due and both start (in a copy of the data, not to disturb serve).
    copy = str(tmp_path / "copy")
    shutil.copytree(env.data_dir, copy, ignore=shutil.ignore_patterns("runs", "*.lock", "generation"))
    store = Store(copy)
    due = [d for d in store.definitions() if d["name"] == "tw"]
    scheduler = Scheduler(Service(store, Runner(os.path.join(copy, "runs"), env.inventory)), copy)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=2)
    claimed = [scheduler.claim(d, later) for d in due]
    assert len(due) == 2 and all(claimed)


def test_an_es_stream_wait_ends_at_its_limit_with_the_current_status(env):
    client, vm = env.client(), env.vms["a"]
    assert client.post("vm/%s/define/backup/slow" % vm.hostname, node="tb", zpool=env.lab.backup_pool,
                       schedule="0 4 * * *", retention=2, bwlimit=1000000).status == 201
    env.lab.write_data(vm.disk(env.lab.compute_pool, 0), "slow.bin", 6)  # about 6 s at 1 MB/s
    start = time.monotonic()
    streamed = client.request("POST", "vm/%s/backup/slow" % vm.hostname, {}, headers={"ES-STREAM": "es"})
    took = time.monotonic() - start
    assert streamed.status == 201 and streamed.body["status"] == "PENDING" and 2 <= took < 5, (streamed, took)
    assert env.wait(client, streamed.task_id)["code"] == 200


def start_stranger() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)


@pytest.mark.parametrize("pid_file", ["identity", "bare-number"])
def test_cancel_after_pid_reuse_leaves_the_stranger_alive(env, pid_file):
    """A task whose run folder names a pid now used by another process (as after a restart): with another
    start time, or as a bare number (no identity to check: never trusted)."""
    stranger = start_stranger()
    try:
        task_id = "1e1d1-%s-aaaa-bbbb-cccc" % uuidlib.uuid4().hex[:8]
        folder = os.path.join(env.data_dir, "runs", task_id)
        os.makedirs(folder)
        with open(os.path.join(folder, "pid"), "w") as handle:
            if pid_file == "identity":
                handle.write(json.dumps({"pid": stranger.pid, "start": 1, "boot": None}))
            else:
                handle.write(str(stranger.pid))
        env.stop()
        store = Store(env.data_dir)
        vm = env.vms["a"]
        store.insert_task({"task_id": task_id, "kind": "backup", "playbook": "backup.yml", "status": "PENDING",
                           "username": "admin", "user_id": 1, "vm_uuid": vm.uuid, "hostname": vm.hostname,
                           "disk_id": 1, "bkpname": "gone-20260101_000000", "node": "tb", "queued": False,
                           "items": [{"vm_uuid": vm.uuid, "hostname": vm.hostname, "disk_id": 1,
                                      "bkpname": "gone-20260101_000000", "define": "gone"}],
                           "extravars": {}, "result": None})
        del store
        env.start()
        client = env.client()
        status = env.wait(client, task_id, timeout=30)  # the job's process is gone: FAILURE, disk freed
        assert status["code"] == 400 and "interrupted" in status["result"]["detail"], status
        assert client.put("task/%s/cancel" % task_id).status == 406
        assert stranger.poll() is None  # never signalled
        assert client.get("task/%s/done" % task_id).body["done"] is True
    finally:
        stranger.kill()
        stranger.wait()


def test_files_are_private_and_jobs_get_no_service_environment(env):
    client, vm = env.client(), env.vms["a"]
    assert client.post("vm/%s/define/backup/env" % vm.hostname, node="tb", zpool=env.lab.backup_pool,
                       schedule="0 4 * * *", retention=2).status == 201
    started = client.post("vm/%s/backup/env" % vm.hostname)
    assert env.wait(client, started.task_id)["code"] == 200
    assert stat.S_IMODE(os.stat(env.data_dir).st_mode) == 0o700
    store_files = []  # the records (journal or files, whichever holds them now) and the locks
    for folder, dirs, files in os.walk(env.data_dir):
        dirs[:] = [d for d in dirs if d != "runs"]
        for name in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o700, name
        store_files += [os.path.join(folder, name) for name in files]
    assert any("journal" in path or path.endswith(".json") for path in store_files)
    for path in store_files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    run = os.path.join(env.data_dir, "runs", started.task_id)
    for folder, dirs, files in os.walk(run):
        for name in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) & 0o077 == 0, name
        for name in files:
            path = os.path.join(folder, name)
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path
            with open(path, "rb") as handle:
                assert b"s3cr3t-of-the-service" not in handle.read(), path


def test_finished_runs_folders_are_purged_and_their_tasks_stay(lab, tmp_path):
    from vmbackup.app.application import Application
    from vmbackup.app.config import Config
    data = str(tmp_path / "data")
    app = Application(Config(data_dir=data, inventory=os.path.join(data, "hosts.yml"), run_retention=0))
    write_inventory(os.path.join(data, "hosts.yml"), lab)
    old = os.path.join(data, "runs", "1e1d1-00000000-0000-0000-0000")
    os.makedirs(old)
    app.store.insert_task({"task_id": "1e1d1-00000000-0000-0000-0000", "status": "SUCCESS", "kind": "backup"})
    time.sleep(0.05)
    assert app.purge_runs() == ["1e1d1-00000000-0000-0000-0000"]
    assert not os.path.exists(old) and app.store.get_task("1e1d1-00000000-0000-0000-0000")["status"] == "SUCCESS"


def test_runs_work_at_the_runners_niceness(tmp_path):
    """A night's batch must not take the CPU from the API: runs are started under nice(1), the pid staying
    the run's (nice execs ansible-runner), so cancel and the pid identity still hold; where autogroups would
    weigh each run's session like the service, in the CPU cgroup `cpugroup.for_runs` gives."""
    playbook = tmp_path / "nice.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                        "    - ansible.builtin.shell: nice > {{ out }}; cat /proc/self/cgroup >> {{ out }}\n")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    own = os.nice(0)
    placement = cpugroup.for_runs(7)
    assert placement.reason
    for nice in (0, 7):
        procs = placement.procs if nice else None
        runner = Runner(str(tmp_path / ("runs%d" % nice)), str(inventory), nice=nice, cpu_group=procs)
        done = threading.Event()
        out = tmp_path / ("nice%d.txt" % nice)
        results = []
        runner.start("nice%d" % nice, str(playbook), {"out": str(out)},
                     lambda result, results=results, done=done: (results.append(result), done.set()))
        assert done.wait(120), "the run did not end"
        assert results[0].status == "successful", results[0]
        niceness, *cgroups = out.read_text().split()
        assert int(niceness) == min(19, own + nice)
        in_group = any(line.split(":")[2] == "/" + cpugroup.group_name(7) for line in cgroups
                       if "cpu" in line.split(":")[1].split(","))
        assert in_group == (procs is not None), cgroups  # the shell in ansible-playbook's session is in it too
    if placement.procs is not None:
        with open(os.path.join(os.path.dirname(placement.procs), "cpu.shares")) as handle:
            assert int(handle.read()) == cpugroup.weight(7) < 1024 / 4


def test_order_by_takes_each_field_once_and_splits_no_further():
    from vmbackup.domain import validation
    assert validation.order_by("hostname,-created", ["hostname", "created"], "") == [("hostname", False),
                                                                                   ("created", True)]
    for repeated in ("hostname,hostname", "created,-created", ",".join(["hostname"] * 100000)):
        with pytest.raises(errors.PreconditionFailed, match="Invalid order_by"):
            validation.order_by(repeated, ["hostname", "created"], "")
    started = time.monotonic()
    with pytest.raises(errors.PreconditionFailed):
        validation.order_by("created," * 200000, ["hostname", "created"], "")  # 1.4 MB: split 3 times, not 200,000
    assert time.monotonic() - started < 0.05


@pytest.mark.parametrize("name", ["scheduler", "Scheduler", "system", "vmbackup"])
def test_the_services_own_names_cannot_be_users(tmp_path, name):
    from vmbackup.store.store import Store
    with pytest.raises(ValueError, match="reserved for the service's own jobs"):
        authmod.Auth(Store(str(tmp_path))).add_user(name, "long-enough-password")
    assert Store(str(tmp_path)).get_user(name) is None


def test_the_inventory_is_read_without_the_services_secrets(tmp_path, monkeypatch):
    """An inventory script (or plugin) runs with a job's minimal environment: the AWX token and the webhook
    secret in the service's environment do not reach it."""
    from vmbackup.app.discovery import inventory_nodes
    monkeypatch.setenv("VMBACKUP_AWX_TOKEN", "s3cret-token")
    monkeypatch.setenv("VMBACKUP_WEBHOOK_SECRET", "s3cret-hook")
    script = tmp_path / "inventory.py"
    script.write_text("#!%s\nimport json, os\nsaw = [k for k in os.environ if 'S3CRET' in os.environ[k].upper()]\n"
                      "print(json.dumps({'compute': {'hosts': ['saw-' + (saw[0].lower() if saw else 'nothing')]},"
                      " '_meta': {'hostvars': {}}}))\n" % sys.executable)
    script.chmod(0o755)
    assert inventory_nodes(str(script)) == {"saw-nothing": ["compute"]}


def test_a_user_locked_out_from_one_address_still_logs_in_from_another(tmp_path):
    auth = authmod.Auth(Store(str(tmp_path)))
    auth.add_user("admin2", "the-admins-password")
    for n in range(5):
        with pytest.raises(errors.LoginFailed):
            auth.login("admin2", "wrong-%d" % n, "203.0.113.9")  # someone elsewhere, failing now and then
    with pytest.raises(errors.TooManyRequests):
        auth.login("admin2", "the-admins-password", "203.0.113.9")
    assert auth.login("admin2", "the-admins-password", "10.0.0.5")["token"]


def test_an_address_trying_many_users_meets_its_own_ceiling(tmp_path):
    auth = authmod.Auth(Store(str(tmp_path)))
    auth.add_user("frank", "franks-password")
    for n in range(30):
        with pytest.raises(errors.LoginFailed):
            auth.login("user%d" % n, "spray", "198.51.100.7")  # one try per name: under each pair's limit
    with pytest.raises(errors.TooManyRequests):
        auth.login("frank", "franks-password", "198.51.100.7")
    assert auth.login("frank", "franks-password", "10.0.0.6")["token"]


def test_tokens_are_capped_per_user_the_oldest_revoked(tmp_path):
    store = Store(str(tmp_path))
    auth = authmod.Auth(store, tokens_per_user=3)
    auth.add_user("gina", "ginas-password")
    tokens = [auth.login("gina", "ginas-password", "10.0.0.7")["token"] for _ in range(5)]
    assert len(store.user_tokens("gina")) == 3
    for old in tokens[:2]:
        with pytest.raises(errors.NotAuthenticated):
            auth.authenticate("Token " + old, None)
    assert auth.authenticate("Token " + tokens[-1], None)["username"] == "gina"


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_clients():
    from vmbackup.http.server import forwarded_for
    seen = []

    def app(environ, start_response):
        seen.append(environ["REMOTE_ADDR"])
        return []

    wrapped = forwarded_for(app, frozenset({"10.0.0.1"}))
    for remote, header in (("10.0.0.1", "1.2.3.4, 198.51.100.20"), ("10.0.0.1", "not-an-address"),
                           ("192.0.2.5", "198.51.100.20")):
        wrapped({"REMOTE_ADDR": remote, "HTTP_X_FORWARDED_FOR": header}, None)
    # From the proxy: what it appended (not what the client wrote before it); a bad entry or another sender:
    # the connection's own address.
    assert seen == ["198.51.100.20", "10.0.0.1", "192.0.2.5"]


def test_a_definition_put_never_undoes_what_the_scheduler_wrote_meanwhile(tmp_path, monkeypatch):
    """The scheduler writes last_due (under the store lock) while a PUT validates its changes: the PUT reads,
    changes and writes under the lock too, so the scheduler's write lands after it, and both stay."""
    from types import SimpleNamespace

    from vmbackup.app.service import Service
    from vmbackup.app.tasks import SCHEDULER
    from vmbackup_lab.lab import LabVM
    store = Store(str(tmp_path))
    machine = LabVM(str(uuidlib.uuid4()), "put-%s.lab" % uuidlib.uuid4().hex[:6], size_mb=64)
    pools = SimpleNamespace(compute_pool="zones", backup_pool="bkp")
    seed_nodes(store, pools)
    seed(store, pools, machine)
    service = Service(store, runner=None)
    service.definitions.create(SCHEDULER, machine.hostname, "daily", {"node": "tb", "zpool": "bkp",
                                                                      "schedule": "0 4 * * *", "retention": 3})
    checked = service.definitions._check
    scheduler_wrote = threading.Event()

    def scheduler_tick():
        with store.lock:
            current = store.get_definition(machine.uuid, 1, "daily")
            store.save_definition(dict(current, last_due="2026-12-05T04:00:00Z"))
        scheduler_wrote.set()

    def slow_check(fields, definition):
        threading.Thread(target=scheduler_tick, daemon=True).start()
        scheduler_wrote.wait(0.5)  # blocked on the lock: the PUT holds it
        checked(fields, definition)

    monkeypatch.setattr(service.definitions, "_check", slow_check)
    service.definitions.update(SCHEDULER, machine.hostname, "daily", {"retention": 9})
    assert scheduler_wrote.wait(5)
    after = store.get_definition(machine.uuid, 1, "daily")
    assert (after["retention"], after["last_due"]) == (9, "2026-12-05T04:00:00Z")
