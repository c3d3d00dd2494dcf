"""Monitoring as an operator sees it, against a real `vmbackup serve` and the lab's pools: the Prometheus
metrics (authenticated under /api/, and on a scraper's own listen address), `vmbackup check` in the
Nagios convention, and signed webhooks sent once per failure (a backup that fails for real, backups that
a sync finds LOST, a definition gone stale, a failed drill).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import uuid as uuidlib

import pytest
from api_env import ADMIN, BIN, OWNER, free_port, make_vm, new_env, seed, seed_nodes
from conftest import destroy
from prometheus_client.parser import text_string_to_metric_families

from vmbackup.app import alerts as alertsmod
from vmbackup.domain.clock import backup_name, iso, now
from vmbackup.store.store import Store
from vmbackup_lab.lab import LabVM

SECRET = b"a shared secret for the webhooks"


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request (and can fail the first few)."""

    def __init__(self, fail_first: int = 0):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        received = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                failing = len(received.requests) <= received.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, event: str, test=lambda alert: True) -> list[dict]:
        found = [json.loads(r["body"]) for r in self.requests]
        return [a for a in found if a["event"] == event and test(a)]

    def wait(self, event: str, test=lambda alert: True, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.alerts(event, test):
                time.sleep(1.5)  # a second one would come now
                return self.alerts(event, test)
            time.sleep(0.2)
        raise AssertionError("no %s alert within %ds: %s" % (event, timeout, [r["body"] for r in self.requests]))

    def close(self):
        self.server.shutdown()


def signed(request: dict) -> bool:
    """The signature header is the HMAC-SHA256, with the shared secret, of the timestamp header, a dot and the
    body; the timestamp is now (a receiver refuses old ones: a replayed alert)."""
    stamp = request["headers"]["x-vmbackup-timestamp"]
    expected = "sha256=" + hmac.new(SECRET, stamp.encode() + b"." + request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(request["headers"]["x-vmbackup-signature"], expected) and \
        abs(time.time() - int(stamp)) < 120


@pytest.fixture(scope="module")
def receiver():
    hook = Receiver()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def env(lab, receiver):
    env = new_env(lab)
    store = Store(env.data_dir)
    seed_nodes(store, lab)
    # "ghost" is recorded with a disk whose dataset does not exist: its backups fail for real.
    ghost = LabVM(str(uuidlib.uuid4()), "ghost-%s.lab" % uuidlib.uuid4().hex[:4])
    env.vms = {"mon": make_vm(lab, "mon"), "own": make_vm(lab, "own"), "ghost": ghost}
    for vm in env.vms.values():
        seed(store, lab, vm)
    del store
    env.admin_key = env.add_user(*ADMIN, admin=True)
    env.add_user(*OWNER, vms=[env.vms["own"].uuid])
    secret_file = os.path.join(env.data_dir, "webhook.secret")
    with open(secret_file, "wb") as handle:
        handle.write(SECRET + b"\n")
    env.metrics_port = free_port()
    env.serve_args = ["--no-discover", "--no-scheduler", "--metrics-listen", "127.0.0.1:%d" % env.metrics_port,
                      "--webhook", receiver.url, "--webhook-secret-file", secret_file, "--stale-check-every", "1"]
    env.start()
    yield env
    env.stop()
    shutil.rmtree(env.data_dir, ignore_errors=True)


def define(env, client, vm, name: str, **data) -> None:
    body = {"node": "tb", "zpool": env.lab.backup_pool, "schedule": "0 4 * * *", "retention": 5}
    body.update(data)
    response = client.post("vm/%s/define/backup/%s" % (vm.hostname, name), **body)
    assert response.status == 201, response.body


def backup(env, client, vm, definition: str, code: int = 200) -> dict:
    started = client.post("vm/%s/backup/%s" % (vm.hostname, definition))
    assert started.status == 201, started.body
    done = env.wait(client, started.task_id)
    assert done["code"] == code, done
    return done


def scrape(port: int, path: str = "/api/metrics", headers: dict | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.getheader("Content-Type") or "", reply.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict:
    """{(metric name, frozenset of labels): value}, parsed by prometheus-client's own parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def series(found: dict, name: str, **labels) -> float | None:
    want = {(k, str(v)) for k, v in labels.items()}
    values = [v for (n, ls), v in found.items() if n == name and want <= ls]
    assert len(values) <= 1, (name, labels, values)
    return values[0] if values else None


def vmbackup_check(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "vmbackup"), "check", "--data-dir", env.data_dir, *args],
                          capture_output=True, text=True, timeout=120)


# -- metrics ----------------------------------------------------------------------------------------
def test_metrics_parse_and_follow_a_backup(env):
    client, vm = env.client(), env.vms["mon"]
    admin = {"ES-API-KEY": env.admin_key}
    define(env, client, vm, "metr")
    code, content_type, text = scrape(env.port, headers=admin)
    assert code == 200 and content_type.startswith("text/plain"), text
    before = samples(text)
    mine = {"hostname": vm.hostname, "definition": "metr", "disk_id": 1, "node": "tb"}
    assert series(before, "vmbackup_last_backup_timestamp_seconds", **mine) is None
    assert series(before, "vmbackup_backup_failures_total", **mine) == 0
    assert series(before, "vmbackup_jobs_running", node="tb") == 0
    assert series(before, "vmbackup_scheduler_lag_seconds") is not None
    ok_before = series(before, "vmbackup_backups", node="tb", status="OK") or 0

    started = time.time()
    backup(env, client, vm, "metr")
    after = samples(scrape(env.port, headers=admin)[2])
    assert started - 2 <= series(after, "vmbackup_last_backup_timestamp_seconds", **mine) <= time.time()
    assert series(after, "vmbackup_last_backup_size_bytes", **mine) > 2**20  # 4 MiB of random data
    assert series(after, "vmbackup_last_backup_duration_seconds", **mine) >= 0
    assert series(after, "vmbackup_backup_age_intervals", **mine) < 1
    assert series(after, "vmbackup_backups", node="tb", status="OK") == ok_before + 1

    # The scraper's own listen address: no authentication, the same series.
    code, _type, text = scrape(env.metrics_port, "/metrics")
    assert code == 200 and series(samples(text), "vmbackup_last_backup_timestamp_seconds", **mine) is not None


def test_metrics_need_credentials_and_show_an_owner_its_own_vms_only(env):
    admin = env.client()
    define(env, admin, env.vms["own"], "owned")
    assert scrape(env.port)[0] == 403
    owner = env.client(OWNER)
    code, _type, text = scrape(env.port, headers={"Authorization": "Token " + owner.token})
    assert code == 200
    found = samples(text)
    assert {dict(labels).get("hostname") for (_name, labels) in found} == {env.vms["own"].hostname}
    assert series(found, "vmbackup_backups_lost", node="tb") is None  # node-wide series are the admins'
    assert "/api/metrics" in admin.get("openapi.json").body["paths"]


# -- vmbackup check ---------------------------------------------------------------------------------
def test_check_is_critical_past_three_intervals_and_ok_after_a_new_backup(env, receiver):
    client, vm = env.client(), env.vms["mon"]
    define(env, client, vm, "minute", schedule="* * * * *")
    assert vmbackup_check(env, "--vm", vm.hostname, "--definition", "minute").returncode == 0  # counts from now
    old = now() - datetime.timedelta(minutes=5)
    Store(env.data_dir).insert_backup({
        "hostname": vm.hostname, "vm_uuid": vm.uuid, "define": "minute", "name": backup_name("minute", old),
        "disk_id": 1, "type": 1, "node": "tb", "zpool": env.lab.backup_pool, "created": iso(old), "status": 1,
        "size": 1, "time": 1, "file_path": None, "note": ""})
    late = vmbackup_check(env, "--vm", vm.hostname, "--definition", "minute")
    assert late.returncode == 2 and late.stdout.startswith("VMBACKUP CRITICAL - "), late.stdout
    assert "|" in late.stdout and "'%s/minute/1 age'=30" % vm.hostname in late.stdout.split("|", 1)[1]
    warn_only = vmbackup_check(env, "--vm", vm.hostname, "--definition", "minute", "--crit", "100")
    assert warn_only.returncode == 1 and warn_only.stdout.startswith("VMBACKUP WARNING - ")

    # The service's stale watch alerts the definition once for this stale episode.
    stale = receiver.wait("definition_stale", lambda a: a["vm_uuid"] == vm.uuid and a["define"] == "minute")
    assert len(stale) == 1 and stale[0]["intervals"] > 3

    backup(env, client, vm, "minute")
    fresh = vmbackup_check(env, "--vm", vm.hostname, "--definition", "minute")
    assert fresh.returncode == 0 and fresh.stdout.startswith("VMBACKUP OK - "), fresh.stdout
    assert vmbackup_check(env, "--vm", "nosuch.lab").returncode == 3
    assert len(receiver.alerts("definition_stale", lambda a: a["define"] == "minute")) == 1
    client.delete("vm/%s/define/backup/minute" % vm.hostname)


def test_check_without_a_data_dir_is_unknown(tmp_path):
    proc = subprocess.run([os.path.join(BIN, "vmbackup"), "check", "--data-dir", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert proc.returncode == 3 and proc.stdout.startswith("VMBACKUP UNKNOWN - ")
    assert not (tmp_path / "none").exists()
    bad = subprocess.run([os.path.join(BIN, "vmbackup"), "check", "--warn", "soon"], capture_output=True, text=True)
    assert bad.returncode == 3 and bad.stdout.startswith("VMBACKUP UNKNOWN - ")


# -- webhooks ---------------------------------------------------------------------------------------
def test_a_failed_backup_sends_one_signed_alert(env, receiver):
    client, ghost = env.client(), env.vms["ghost"]
    define(env, client, ghost, "fails")
    failed = backup(env, client, ghost, "fails", code=400)
    alerts = receiver.wait("job_failed", lambda a: a["task_id"] == failed["task_id"])
    assert len(alerts) == 1, alerts
    assert alerts[0]["hostname"] == ghost.hostname and alerts[0]["kind"] == "backup"
    assert alerts[0]["message"] == "Backup failed" and alerts[0]["status"] == "FAILURE"
    # Which backup failed and why, as data (the detail is text for people).
    (failure,) = alerts[0]["outcome"]["failed"]
    assert failure["vm_uuid"] == ghost.uuid and failure["define"] == "fails" and failure["why"]
    assert alerts[0]["outcome"]["made"] == []
    request = next(r for r in receiver.requests if json.loads(r["body"])["id"] == alerts[0]["id"])
    assert signed(request) and request["headers"]["x-vmbackup-event"] == "job_failed"
    assert request["headers"]["x-vmbackup-delivery"] == alerts[0]["id"]
    found = samples(scrape(env.port, headers={"ES-API-KEY": env.admin_key})[2])
    assert series(found, "vmbackup_backup_failures_total", hostname=ghost.hostname, definition="fails") == 1


def test_backups_turning_lost_send_one_alert(env, receiver):
    client, vm = env.client(), env.vms["mon"]
    define(env, client, vm, "gone", retention=0)
    name = backup(env, client, vm, "gone")["result"]["detail"].split(",")[0].split("=")[1]
    destroy("%s/backups/ds/%s-disk0@%s" % (env.lab.backup_pool, vm.uuid, name))
    started = client.put("sync")
    assert started.status == 201, started.body
    assert env.wait(client, started.task_id)["code"] == 200
    label = "%s/%s" % (vm.hostname, name)
    alerts = receiver.wait("backups_lost", lambda a: a["task_id"] == started.task_id)
    assert len(alerts) == 1 and label in alerts[0]["lost"], alerts
    assert all(signed(r) for r in receiver.requests)
    found = samples(scrape(env.port, headers={"ES-API-KEY": env.admin_key})[2])
    assert series(found, "vmbackup_backups_lost", node="tb") >= 1


# -- the alerts' own rules (no service needed) ------------------------------------------------------
def test_a_failed_drill_alerts_once_however_it_is_reported(tmp_path):
    hook = Receiver()
    alerts = alertsmod.Alerts(Store(str(tmp_path)), alertsmod.Webhooks([hook.url], SECRET, backoff=0.1))
    alerts.start()
    try:
        task = {"task_id": "1e1d1-drill", "kind": "verify", "hostname": "web01.lab", "status": "FAILURE",
                "result": {"message": "Verification failed", "detail": "checksum mismatch"}}
        alerts.listen("job_ended", {"task": task, "ok": False})
        alerts.listen("drill_failed", {"task": task})
        found = hook.wait("drill_failed")
        assert len(found) == 1 and found[0]["detail"] == "checksum mismatch"
        assert hook.alerts("job_failed") == []
    finally:
        alerts.stop()
        hook.close()


def test_a_receiver_that_fails_gets_the_alert_again_with_back_off(tmp_path):
    hook = Receiver(fail_first=2)
    webhooks = alertsmod.Webhooks([hook.url], SECRET, backoff=0.2)
    webhooks.start()
    try:
        started = time.monotonic()
        alertsmod.Alerts(Store(str(tmp_path)), webhooks).alert("job_failed", task_id="x")
        deadline = time.monotonic() + 20
        while len(hook.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(hook.requests) == 3 and time.monotonic() - started >= 0.2 + 0.4 - 0.05
        assert len({r["headers"]["x-vmbackup-delivery"] for r in hook.requests}) == 1
        assert all(signed(r) for r in hook.requests)
    finally:
        webhooks.stop()
        hook.close()


# -- the rules of check and metrics on their own ----------------------------------------------------
def test_lateness_counts_in_the_schedules_own_intervals():
    from vmbackup.app.check import lateness
    utc = datetime.timezone.utc
    friday = datetime.datetime(2026, 11, 27, 4, 0, 5, tzinfo=utc)  # a weekdays-only backup, made on time
    monday_early = datetime.datetime(2026, 11, 30, 3, 0, tzinfo=utc)
    interval, intervals = lateness("0 4 * * 1-5", friday, monday_early)
    assert interval == 86400 and intervals < 1  # not late over the weekend
    wednesday = datetime.datetime(2026, 12, 2, 5, 0, tzinfo=utc)  # Monday's and Tuesday's, Wednesday's missed
    assert 3 < lateness("0 4 * * 1-5", friday, wednesday)[1] < 3.1
    minute = datetime.datetime(2026, 12, 1, 12, 0, 30, tzinfo=utc)
    assert lateness("* * * * *", minute, minute + datetime.timedelta(minutes=5))[1] == pytest.approx(5.5)


def test_a_batch_counts_a_failure_for_each_backup_it_did_not_make(tmp_path, monkeypatch):
    """The failure counters come from the job's outcome as data (the `failed` backups of the task's `outcome`),
    kept by the store as tasks end, seen by every process, and kept when old tasks are purged."""
    from vmbackup.app.jobs import BackupJob
    from vmbackup.app.queue import JobQueue
    from vmbackup.domain import facts
    from vmbackup.engine.runner import RunResult

    store = Store(str(tmp_path))
    queue = JobQueue(store, runner=None)
    items = [{"vm_uuid": "u", "disk_id": n, "define": "daily", "bkpname": "daily-%d" % n, "hostname": "h"}
             for n in (1, 2)]
    task = {"task_id": "a-1", "kind": "backup", "status": "PENDING", "items": items, "node": "b",
            "username": "scheduler", "started": iso(now())}
    store.insert_task(task)
    for item in items:
        store.insert_backup(dict(item, name=item["bkpname"], status=facts.BackupStatus.PENDING, created=iso(now())))
    outcome = BackupJob().apply(store, task, RunResult("failed", 2, {"backups": {
        facts.batch_key("u", 1, "daily-1"): {"ok": True, "size": 1, "time": 1},
        facts.batch_key("u", 2, "daily-2"): {"ok": False, "msg": "dataset does not exist"}}}))
    assert outcome.failed == [{"vm_uuid": "u", "disk_id": 2, "name": "daily-2", "define": "daily",
                               "why": "dataset does not exist"}]
    assert outcome.made == [{"vm_uuid": "u", "disk_id": 1, "name": "daily-1", "define": "daily", "pruned": []}]
    assert BackupJob().detail(outcome) == "made=1, failed=1; name=daily-1, disk_id=1; daily-2: dataset does not exist"
    # The detail can say anything: the count does not read it.
    monkeypatch.setattr(BackupJob, "detail", lambda self, outcome: "reworded")
    queue.finish("a-1", RunResult("failed", 2, {"backups": {}}, "the run was lost"))
    ended = store.get_task("a-1")
    assert ended["result"]["detail"] == "reworded"
    assert [(f["vm_uuid"], f["disk_id"], f["define"], f["why"]) for f in ended["outcome"]["failed"]] == [
        ("u", 1, "daily", "the run was lost"), ("u", 2, "daily", "the run was lost")]
    assert [entry["outcome"] for entry in store.task_log()] == [ended["outcome"]]
    assert store.failure_counts() == {("u", 1, "daily"): 1, ("u", 2, "daily"): 1}
    other = Store(str(tmp_path))  # another process on the data dir counts the same
    assert other.failure_counts() == {("u", 1, "daily"): 1, ("u", 2, "daily"): 1}

    # Purged with the day they were recorded on (later than a retention), their counts stay, in every process.
    assert store.purge_tasks(now()) == 0  # today's tasks are not before today
    assert store.purge_tasks(now() + datetime.timedelta(days=1)) == 1
    assert store.get_task("a-1") is None and list(store.task_log()) == []
    assert store.failure_counts() == {("u", 1, "daily"): 1, ("u", 2, "daily"): 1}
    assert other.failure_counts() == {("u", 1, "daily"): 1, ("u", 2, "daily"): 1}
    assert Store(str(tmp_path)).failure_counts() == {("u", 1, "daily"): 1, ("u", 2, "daily"): 1}
    # A day that still has a pending job stays whole.
    store.insert_task(dict(task, task_id="a-2"))
    assert store.purge_tasks(now() + datetime.timedelta(days=1)) == 0 and store.get_task("a-2") is not None
