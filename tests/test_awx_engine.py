"""The awx execution engine: jobs launched as AWX job templates through AWX's REST API, against a stand-in
that applies AWX's launch rules, steps through AWX's job lifecycle and runs the playbooks for real
(tests/fixtures/awx_standin.py)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from ansible_run import ENV
from api_env import ADMIN, make_vm, new_env, seed, seed_nodes, write_inventory

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures"))
from awx_standin import StandIn  # noqa: E402

from vmbackup.app.application import Application  # noqa: E402
from vmbackup.app.config import Config  # noqa: E402
from vmbackup.app.scheduler import Scheduler
from vmbackup.app.tasks import SCHEDULER  # noqa: E402
from vmbackup.store.store import Store  # noqa: E402

TOKEN = "s3cret-awx-token"
LIFECYCLE = ["new", "pending", "waiting", "running"]


def awx_env(lab, token_file_text: str):
    env = new_env(lab)
    standin = StandIn(TOKEN, env.inventory, ENV)
    token_file = os.path.join(env.data_dir, "awx-token")
    with open(token_file, "w") as handle:
        handle.write(token_file_text)
    store = Store(env.data_dir)
    seed_nodes(store, lab)
    env.vms = {"a": make_vm(lab, "awx")}
    seed(store, lab, env.vms["a"])
    del store
    env.add_user(*ADMIN, admin=True)
    env.serve_args = ["--no-discover", "--no-scheduler", "--engine", "awx", "--awx-insecure-http",
                      "--awx-url", standin.url, "--awx-token-file", token_file]
    env.start()
    return env, standin


@pytest.fixture
def awx(lab):
    env, standin = awx_env(lab, "s3cret-awx-token\n")
    yield env, standin
    env.stop()
    standin.stop()
    shutil.rmtree(env.data_dir, ignore_errors=True)


def test_a_backup_runs_as_an_awx_job(awx):
    env, standin = awx
    client, vm = env.client(), env.vms["a"]
    assert client.post("vm/%s/define/backup/awx" % vm.hostname, node="tb", zpool=env.lab.backup_pool,
                       schedule="0 4 * * *", retention=3).status == 201
    started = client.post("vm/%s/backup/awx" % vm.hostname)
    assert started.status == 201 and started.task_id.count("-") == 4  # the original's task id format
    done = env.wait(client, started.task_id)
    assert done["code"] == 200 and done["result"]["message"] == "Backup successfully created", done
    info = client.get("task/%s" % started.task_id).result
    assert info["awx_job"] in standin.jobs and standin.jobs[info["awx_job"]]["status"] == "successful"
    assert standin.statuses[info["awx_job"]] == LIFECYCLE + ["successful"]
    launch = standin.launches[-1]
    assert standin.templates[launch["template"]]["name"] == "vmbackup: back up a VM disk" and launch["code"] == 201
    assert launch["extra_vars"]["vm_uuid"] == vm.uuid
    assert not {"vmbackup_progress_file", "progress_file"} & set(launch["extra_vars"])  # no file on AWX's node
    backups = client.get("vm/%s/backup" % vm.hostname, define="awx", full=True).result
    assert [b["status"] for b in backups] == [1] and backups[0]["size"] > 0


def test_a_refused_launch_fails_the_task_with_awxs_reason(lab):
    env, standin = awx_env(lab, "not-the-token\n")
    try:
        client, vm = env.client(), env.vms["a"]
        assert client.post("vm/%s/define/backup/awxbad" % vm.hostname, node="tb", zpool=env.lab.backup_pool,
                           schedule="0 4 * * *", retention=3).status == 201
        started = client.post("vm/%s/backup/awxbad" % vm.hostname)
        done = env.wait(client, started.task_id, timeout=60)
        assert done["code"] == 400 and "AWX" in done["result"]["detail"], done
        assert client.get("vm/%s/backup" % vm.hostname, define="awxbad").result == []  # nothing half-made
    finally:
        env.stop()
        standin.stop()
        shutil.rmtree(env.data_dir, ignore_errors=True)


# -- the token goes to AWX only -------------------------------------------------------------------------------
class Redirector:
    """An HTTP server on 127.0.0.1 that answers every GET with a redirect to `target`, and records the
    Authorization headers it is sent."""

    def __init__(self, target: str | None = None):
        """`target` "self": redirect to this very server."""
        import http.server
        import threading
        seen = self.seen = []
        me = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def do_GET(self):
                seen.append((self.path, self.headers.get("Authorization")))
                if self.path.startswith("/final") or target is None:
                    body = b'{"count": 1, "results": [{"id": 7, "name": "t"}]}'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(302)
                self.send_header("Location", (me.url if target == "self" else target) + "/final" + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_a_redirect_to_another_host_is_refused_and_the_token_never_leaves(tmp_path):
    from vmbackup.engine.awx import AwxEngine, AwxError
    elsewhere = Redirector()
    awx = Redirector(target=elsewhere.url.replace("127.0.0.1", "localhost"))
    try:
        engine = AwxEngine(awx.url, "s3cret", str(tmp_path / "runs"), {"backup.yml": "t"}, insecure_http=True)
        with pytest.raises(AwxError, match="redirected .* to http://localhost:[0-9]+: refused"):
            engine.template_id("backup.yml")
        assert elsewhere.seen == [] and awx.seen[0][1] == "Bearer s3cret"
        other_port = Redirector(target=Redirector(target=None).url)
        engine = AwxEngine(other_port.url, "s3cret", str(tmp_path / "runs2"), {"backup.yml": "t"},
                           insecure_http=True)
        with pytest.raises(AwxError, match="refused"):
            engine.template_id("backup.yml")  # another port is another origin
        itself = Redirector(target="self")  # a redirect within AWX is followed
        engine = AwxEngine(itself.url, "s3cret", str(tmp_path / "runs3"), {"backup.yml": "t"}, insecure_http=True)
        assert engine.template_id("backup.yml") == 7 and [a for _p, a in itself.seen] == ["Bearer s3cret"] * 2
        other_port.close()
        itself.close()
    finally:
        awx.close()
        elsewhere.close()


def test_awx_over_http_needs_the_operator_to_say_so(tmp_path):
    from vmbackup.engine.awx import AwxEngine, AwxError
    with pytest.raises(AwxError, match="--awx-insecure-http"):
        AwxEngine("http://awx.example.com", "s3cret", str(tmp_path / "runs"))
    with pytest.raises(AwxError, match="https://"):
        AwxEngine("ftp://awx.example.com", "s3cret", str(tmp_path / "runs"))
    assert AwxEngine("https://awx.example.com/", "s3cret", str(tmp_path / "runs")).url == "https://awx.example.com"


# -- the stand-in refuses what AWX refuses ---------------------------------------------------------------------
def awx_call(standin: StandIn, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(standin.url + path, method=method, data=json.dumps(body).encode()
                                     if body is not None else None,
                                     headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def template_id(standin: StandIn, name: str) -> int:
    return standin.template(name)["id"]


def test_the_stand_in_refuses_the_launches_the_engine_made_before_issue_19(tmp_path):
    """What main's engine sent for a delete (bkpname a list) and a batch (to the backup template)."""
    standin = StandIn(TOKEN, str(tmp_path / "hosts.yml"), ENV)
    try:
        uuid = "0b1f7a4e-3c2d-4e5f-8a9b-0c1d2e3f4a5b"
        code, answer = awx_call(standin, "POST", "/api/v2/job_templates/%d/launch/" % template_id(
            standin, "vmbackup: delete backups"), {"extra_vars": {
                "node": "tb", "bkpname": ["d-20261201_040000", "d-20261202_040000"], "vm_uuid": uuid, "disk_id": 1}})
        assert code == 400 and answer == {"variables_needed_to_start": [
            "Value ['d-20261201_040000', 'd-20261202_040000'] for 'bkpname' expected to be a string."]}
        code, answer = awx_call(standin, "POST", "/api/v2/job_templates/%d/launch/" % template_id(
            standin, "vmbackup: back up a VM disk"), {"extra_vars": {
                "node": "tb", "backups": [{"vm_uuid": uuid, "bkpdef": "d", "disk_id": d} for d in (1, 2)]}})
        assert code == 400 and answer == {"variables_needed_to_start": ["'bkpdef' value missing"]}
        code, answer = awx_call(standin, "POST", "/api/v2/job_templates/%d/launch/" % template_id(
            standin, "vmbackup: restore a backup"), {"extra_vars": {"node": "tb", "bkpname": "d-20261201_040000"}})
        assert code == 400 and answer == {"variables_needed_to_start": ["'target_disk_id' value missing"]}
        assert standin.jobs == {}  # nothing started
    finally:
        standin.stop()


def test_the_stand_in_pages_as_awx_does(tmp_path):
    standin = StandIn(TOKEN, str(tmp_path / "hosts.yml"), ENV)
    try:
        code, first = awx_call(standin, "GET", "/api/v2/job_templates/?page_size=2")
        assert code == 200 and first["count"] == len(standin.templates) and len(first["results"]) == 2
        assert first["next"] == "/api/v2/job_templates/?page=2&page_size=2" and first["previous"] is None
        code, second = awx_call(standin, "GET", first["next"])
        assert second["previous"] == "/api/v2/job_templates/?page=1&page_size=2"
        assert {t["id"] for t in second["results"]}.isdisjoint(t["id"] for t in first["results"])
        assert len(awx_call(standin, "GET", "/api/v2/job_templates/?page_size=1000")[1]["results"]) == \
            len(standin.templates)  # capped at 200, not refused
        assert awx_call(standin, "GET", "/api/v2/jobs/1/cancel/")[0] == 404
    finally:
        standin.stop()


# -- every kind of job, in-process (the service's own calls, the engine, the stand-in) ---------------------------
@pytest.fixture
def awx_app(lab):
    """make(**stand-in options) -> (the service with --engine awx, in-process; its stand-in AWX)."""
    made = []

    def make(**options):
        data_dir = tempfile.mkdtemp(prefix="vmbackup-awx-", dir="/var/tmp")
        inventory = os.path.join(data_dir, "hosts.yml")
        write_inventory(inventory, lab)
        standin = StandIn(TOKEN, inventory, ENV, **options)
        app = Application(Config(data_dir=data_dir, inventory=inventory, engine="awx", awx_url=standin.url,
                                 awx_token=TOKEN, awx_insecure_http=True))
        app.runner.poll = 0.2
        seed_nodes(app.store, lab)
        made.append((app, standin))
        return app, standin

    yield make
    for app, standin in made:
        for task in app.store.pending_tasks():
            app.service.tasks.wait(task["task_id"], timeout=120)
        standin.stop()
        shutil.rmtree(app.data_dir, ignore_errors=True)


def define(app, lab, vm, name: str, **extra) -> None:
    app.service.definitions.create(SCHEDULER, vm.hostname, name, dict(
        {"node": "tb", "zpool": lab.backup_pool, "schedule": "0 * * * *", "retention": 0}, **extra))


def done(app, task_id: str, timeout: float = 180) -> dict:
    task = app.service.tasks.wait(task_id, timeout=timeout)
    assert task["status"] != "PENDING", "task %s still pending after %ds" % (task_id, timeout)
    return task


def launched(standin: StandIn) -> dict:
    """The last launch: its template's name and the extra_vars it was sent."""
    last = standin.launches[-1]
    return {"template": standin.templates[last["template"]]["name"], "code": last["code"],
            "extra_vars": last["extra_vars"]}


def names(app, vm, define_name: str) -> list[str]:
    return sorted(b["name"] for b in app.store.backups(vm_uuid=vm.uuid) if b["define"] == define_name)


def test_every_kind_of_job_the_api_starts_passes_awxs_launch_rules_and_runs(awx_app, lab):
    app, standin = awx_app()
    service = app.service
    vms = [make_vm(lab, "awxkind%d" % n) for n in range(2)]
    for vm in vms:
        seed(app.store, lab, vm)
        define(app, lab, vm, "hourly")
        stored = app.store.get_definition(vm.uuid, 1, "hourly")
        app.store.save_definition(dict(stored, last_due="2026-11-28T09:30:00Z"))

    # A scheduled batch of two disks on one backup node goes to the batch template, with `backups`.
    (batch,) = Scheduler(service, app.data_dir).tick(datetime.datetime(2026, 11, 28, 10, 0, 5,
                                                                       tzinfo=datetime.timezone.utc))
    task = done(app, batch)
    assert task["status"] == "SUCCESS" and "made=2, failed=0" in task["result"]["detail"], task["result"]
    sent = launched(standin)
    assert sent["template"] == "vmbackup: back up a batch of VM disks" and sent["code"] == 201
    assert sorted(i["vm_uuid"] for i in sent["extra_vars"]["backups"]) == sorted(vm.uuid for vm in vms)

    # One disk: the backup template, whose survey requires node and bkpdef.
    vm, other = vms
    define(app, lab, other, "files", type=2, compression="zstd")
    for _ in range(4):
        task = done(app, service.backups.create(SCHEDULER, other.hostname, "files", {}))
        assert task["status"] == "SUCCESS", task["result"]
    sent = launched(standin)
    assert sent["template"] == "vmbackup: back up a VM disk" and sent["extra_vars"]["compression"] == "zstd"

    (made,) = names(app, vm, "hourly")
    task = done(app, service.backups.verify(SCHEDULER, vm.hostname, made, {}))
    assert task["status"] == "SUCCESS" and launched(standin)["template"] == "vmbackup: verify a backup", task
    task = done(app, service.backups.restore(SCHEDULER, vm.hostname, made, {
        "target_hostname_or_uuid": vm.hostname, "target_disk_id": 1, "force": True}))
    assert task["status"] == "SUCCESS", task["result"]
    sent = launched(standin)
    assert sent["template"] == "vmbackup: restore a backup" and sent["extra_vars"]["target_disk_id"] == 1
    assert sent["extra_vars"]["force"] is True

    # Delete one, then several: the survey's text question gets the names comma-separated.
    files = names(app, other, "files")
    task = done(app, service.backups.delete(SCHEDULER, other.hostname, files[0], {}))
    assert task["status"] == "SUCCESS" and launched(standin)["extra_vars"]["bkpname"] == files[0], task["result"]
    task = done(app, service.backups.delete_many(SCHEDULER, other.hostname, {"bkpnames": files[1:]}))
    sent = launched(standin)
    assert task["status"] == "SUCCESS" and names(app, other, "files") == [], task["result"]
    assert sent["template"] == "vmbackup: delete backups" and sent["extra_vars"]["bkpname"] == ",".join(files[1:])

    task = done(app, service.backups.sync(SCHEDULER))
    assert task["status"] == "SUCCESS" and launched(standin)["template"] == "vmbackup: list the backups of the nodes"

    assert [launch["code"] for launch in standin.launches] == [201] * len(standin.launches)
    for job_id, statuses in standin.statuses.items():
        assert statuses == LIFECYCLE + ["successful"], (job_id, statuses)


def test_progress_while_the_job_runs_and_every_event_over_many_pages(awx_app, lab):
    app, standin = awx_app(max_page_size=10)  # a site's MAX_PAGE_SIZE below what the engine asks for
    vm = make_vm(lab, "awxslow", data_mb=12)
    seed(app.store, lab, vm)
    define(app, lab, vm, "slow", bwlimit=1_000_000)
    task_id = app.service.backups.create(SCHEDULER, vm.hostname, "slow", {})
    steps, statuses = [], set()
    while app.store.get_task(task_id)["status"] == "PENDING":
        info = app.service.tasks.info(SCHEDULER, task_id)
        if info["status"] == "PENDING" and (info.get("progress") or {}).get("step"):
            steps.append(info["progress"]["step"])
            statuses.add(standin.jobs[info["progress"]["awx_job"]]["status"])
        time.sleep(0.3)
    task = app.store.get_task(task_id)
    assert task["status"] == "SUCCESS", task["result"]
    assert len(set(steps)) >= 3 and "running" in statuses, (steps, statuses)  # followed while it ran
    job = standin.jobs[task["awx_job"]]
    assert len(job["events"]) > 25
    read = app.runner.events(task_id)
    assert [e["counter"] for e in read] == sorted(e["counter"] for e in job["events"])
    assert any("page=2" in path for path in standin.event_requests)  # `next` links followed


def test_a_job_canceled_in_awx_ends_canceled_and_cannot_be_canceled_twice(awx_app, lab):
    app, standin = awx_app()
    vm = make_vm(lab, "awxcancel", data_mb=12)
    seed(app.store, lab, vm)
    define(app, lab, vm, "slow", bwlimit=500_000)
    task_id = app.service.backups.create(SCHEDULER, vm.hostname, "slow", {})
    deadline = time.monotonic() + 60
    while not (app.store.get_task(task_id).get("awx_job") in standin.jobs
               and standin.jobs[app.store.get_task(task_id)["awx_job"]]["status"] == "running"):
        assert time.monotonic() < deadline, "the AWX job never ran"
        time.sleep(0.2)
    app.service.tasks.cancel(SCHEDULER, task_id)
    task = done(app, task_id)
    job_id = task["awx_job"]
    assert task["status"] == "FAILURE" and standin.statuses[job_id][-1] == "canceled", task["result"]
    assert app.store.backups(vm_uuid=vm.uuid) == []  # the half-made backup is not recorded
    assert app.runner.cancel(task_id) is False  # AWX's cancel/ says can_cancel false
    request = urllib.request.Request("%s/api/v2/jobs/%d/cancel/" % (standin.url, job_id), method="POST",
                                     headers={"Authorization": "Bearer " + TOKEN})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 405 and json.loads(refused.value.read())["detail"]


def test_a_job_awx_cannot_run_ends_in_error_with_awxs_explanation(awx_app, lab):
    app, standin = awx_app(playbooks={"vmbackup: back up a VM disk": "playbooks/gone.yml"})
    vm = make_vm(lab, "awxerror")
    seed(app.store, lab, vm)
    define(app, lab, vm, "daily")
    task = done(app, app.service.backups.create(SCHEDULER, vm.hostname, "daily", {}))
    assert task["status"] == "FAILURE", task
    assert "could not run (status error)" in task["result"]["detail"] and "gone.yml" in task["result"]["detail"]
    assert standin.statuses[task["awx_job"]] == ["new", "pending", "waiting", "error"]
    assert app.store.backups(vm_uuid=vm.uuid) == []


def test_a_launch_whose_variables_awx_ignored_fails_and_says_what_to_change(awx_app, lab):
    app, standin = awx_app(ask_variables={"vmbackup: back up a VM disk": False})
    vm = make_vm(lab, "awxignored")
    seed(app.store, lab, vm)
    define(app, lab, vm, "daily", fsfreeze=False)
    task = done(app, app.service.backups.create(SCHEDULER, vm.hostname, "daily", {}))
    detail = task["result"]["detail"]
    assert task["status"] == "FAILURE" and "fsfreeze" in detail and "protect" in detail, task
    assert "'vmbackup: back up a VM disk'" in detail and "Prompt on launch" in detail, detail
    (job,) = standin.jobs.values()
    assert standin.statuses[job["id"]][-1] == "canceled"  # it would have run without its variables
    assert app.store.backups(vm_uuid=vm.uuid) == []


def test_the_engine_waits_for_awxs_events_after_the_status_but_not_forever(awx_app, lab):
    # AWX saves a job's last events after its status: here 3 s after, with the failed task's message.
    app, standin = awx_app(event_lag=3, playbooks={"vmbackup: back up a VM disk": "tests/fixtures/awx_fails.yml"})
    vm = make_vm(lab, "awxlate")
    seed(app.store, lab, vm)
    define(app, lab, vm, "daily")
    task = done(app, app.service.backups.create(SCHEDULER, vm.hostname, "daily", {}))
    job = standin.jobs[task["awx_job"]]
    assert task["status"] == "FAILURE" and job["event_processing_finished"], task["result"]  # it waited
    assert "Reach the backup node: the backup node is on fire" in task["result"]["detail"]
    app.runner.events_wait = 0.2  # a bound shorter than AWX's delay: the task ends without the message
    task = done(app, app.service.backups.create(SCHEDULER, vm.hostname, "daily", {}))
    job = standin.jobs[task["awx_job"]]
    assert task["status"] == "FAILURE" and not job["event_processing_finished"], task["result"]
    assert "on fire" not in task["result"]["detail"]


def test_a_job_is_followed_again_after_the_service_restarts(lab):
    env, standin = awx_env(lab, TOKEN + "\n")
    try:
        client = env.client()
        vm = make_vm(lab, "awxrestart", data_mb=12)
        store = Store(env.data_dir)
        seed(store, lab, vm)
        del store
        assert client.post("vm/%s/define/backup/slow" % vm.hostname, node="tb", zpool=env.lab.backup_pool,
                           schedule="0 4 * * *", retention=3, bwlimit=1_000_000).status == 201
        started = client.post("vm/%s/backup/slow" % vm.hostname)
        deadline = time.monotonic() + 60
        while not any(j["status"] == "running" for j in standin.jobs.values()):
            assert time.monotonic() < deadline, "the AWX job never ran"
            time.sleep(0.2)
        env.stop(signal.SIGKILL)  # mid-job: AWX carries on
        (job,) = standin.jobs.values()
        assert job["status"] == "running"
        env.start()
        finished = env.wait(env.client(), started.task_id)
        assert finished["code"] == 200 and finished["result"]["message"] == "Backup successfully created", finished
        assert len(standin.launches) == 1 and job["status"] == "successful"  # followed, not launched again
        backups = env.client().get("vm/%s/backup" % vm.hostname, define="slow", full=True).result
        assert [b["status"] for b in backups] == [1] and backups[0]["size"] > 0
    finally:
        env.stop()
        standin.stop()
        shutil.rmtree(env.data_dir, ignore_errors=True)
