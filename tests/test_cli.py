"""The `vmbackup` command in the `es` syntax, round-tripping the seed's examples against a live server."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest
from api_env import ADMIN, BIN, make_vm, new_env, seed
from conftest import destroy

from vmbackup.cli import es as es_client
from vmbackup.store.store import Store

VERBS = ["get", "create", "set", "delete", "login", "logout", "serve", "user", "discover"]
# The labs are a development package of their own (labs/vmbackup_lab), with a command of their own.
LAB_VERBS = ["lab", "netlab", "ozlab"]


@pytest.fixture(scope="module")
def server(lab, tmp_path_factory):
    env = new_env(lab)
    store = Store(env.data_dir)
    for name, roles, pool in (("tc", ["compute"], lab.compute_pool), ("tb", ["backup"], lab.backup_pool)):
        store.upsert_node({"name": name, "roles": roles, "operational": True, "pools": {pool: {"free": 10**10}}})
    env.vms = {"web": make_vm(lab, "web"), "gone": make_vm(lab, "gone")}
    for vm in env.vms.values():
        seed(store, lab, vm)
    del store
    env.admin_key = env.add_user(*ADMIN, admin=True)
    env.serve_args = ["--no-discover", "--no-scheduler"]
    env.start()
    env.home = str(tmp_path_factory.mktemp("home"))
    yield env
    env.stop()
    shutil.rmtree(env.data_dir, ignore_errors=True)


def es(server, *argv, env: dict | None = None, stdin: str = "") -> tuple[int, dict | str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ES_", "VMBACKUP_URL"))}
    environ.update(XDG_CONFIG_HOME=server.home, VMBACKUP_URL=server.url, **(env or {}))
    proc = subprocess.run([os.path.join(BIN, "vmbackup"), *argv], capture_output=True, text=True, env=environ,
                          input=stdin, timeout=300)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        return proc.returncode, proc.stdout + proc.stderr


def test_seed_examples_round_trip(server, lab):
    host = server.vms["web"].hostname
    assert es(server, "get", "/vm/%s/define/backup" % host)[0] == 1  # not logged in: 403
    code, out = es(server, "login", "-username", "admin", "-password", ADMIN[1])
    assert code == 0 and out["status"] == 200 and out["text"]["token"]

    code, out = es(server, "create", "/vm/%s/define/backup/daily" % host, "-disk_id", "1", "-schedule", "0 4 * * *",
                   "-retention", "30", "-node", "tb", "-zpool", lab.backup_pool)
    assert code == 0 and out["status"] == 201 and out["method"] == "POST"
    assert out["url"].endswith("/api/vm/%s/define/backup/daily/" % host)
    result = out["text"]["result"]
    assert (result["name"], result["schedule"], result["retention"], result["active"], result["bwlimit"]) == \
        ("daily", "0 4 * * *", 30, True, None)

    code, out = es(server, "get", "/vm/%s/define/backup" % host)
    assert code == 0 and out["text"]["status"] == "SUCCESS" and out["text"]["result"] == ["daily"]

    code, out = es(server, "create", "/vm/%s/backup/daily" % host, "-disk", "1", "--wait", "--quiet")
    assert code == 0 and out["status"] == 200, out
    assert out["text"]["result"]["message"] == "Backup successfully created"
    bkpname = out["text"]["result"]["detail"].split(",")[0].split("=")[1]

    code, out = es(server, "get", "/vm/%s/backup" % host, "-full")
    backups = out["text"]["result"]
    assert code == 0 and [b["name"] for b in backups] == [bkpname] and backups[0]["status"] == 1
    assert {"name", "created", "hostname", "disk_id", "note", "node", "size", "time", "define"} <= set(backups[0])

    code, out = es(server, "set", "/vm/%s/backup/%s" % (host, bkpname), "-note", "before upgrade")
    assert code == 0 and out["text"]["result"]["note"] == "before upgrade"

    code, table = es(server, "get", "/vm/%s/backup" % host, "-full", "--table")
    assert code == 0 and bkpname in table and "before upgrade" in table and table.splitlines()[0].startswith("hostname")

    code, out = es(server, "delete", "/vm/%s/backup/%s" % (host, bkpname), "--wait", "--quiet")
    assert code == 0 and out["text"]["result"]["message"] == "Backup successfully deleted"
    assert es(server, "get", "/vm/%s/backup" % host)[1]["text"]["result"] == []

    code, out = es(server, "logout")
    assert code == 0 and es(server, "get", "/vm/%s/backup" % host)[0] == 1


def test_api_key_from_the_environment(server):
    code, out = es(server, "get", "/task", env={"ES_API_KEY": server.admin_key})
    assert code == 0 and out["status"] == 200


def test_wait_exits_non_zero_when_the_job_fails(server, lab):
    vm = server.vms["gone"]
    key = {"ES_API_KEY": server.admin_key}
    assert es(server, "create", "/vm/%s/define/backup/daily" % vm.hostname, "-node", "tb", "-zpool",
              lab.backup_pool, env=key)[0] == 0
    destroy(vm.disk(lab.compute_pool, 0))  # the disk vanished behind the records' back
    code, out = es(server, "create", "/vm/%s/backup/daily" % vm.hostname, "--wait", "--quiet", env=key)
    assert code == 1 and out["status"] == 400 and out["text"]["status"] == "FAILURE"
    assert out["text"]["result"]["message"] == "Backup failed" and out["text"]["result"]["detail"]
    assert es(server, "get", "/vm/%s/backup" % vm.hostname, env=key)[1]["text"]["result"] == []


def test_usage_errors_explain_themselves(server):
    code, out = es(server, "fetch", "/vm")
    assert code == 2 and "invalid choice: 'fetch'" in out
    code, out = es(server, "get", "vm/x")
    assert code == 2 and "needs a path such as /vm/<hostname>/backup" in out


def test_es_stream_answers_with_the_final_status(server):
    """`ES-STREAM: es` streams the wait: 201 headers, spaces, then the final code and status JSON."""
    import http.client
    host = server.vms["web"].hostname
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.request("POST", "/api/vm/%s/backup/daily/" % host, body="{}",
                 headers={"ES-API-KEY": server.admin_key, "ES-STREAM": "es", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 201 and response.getheader("es_stream") == "es"
    body = response.read().decode()
    code, _, status = body.strip().partition("\n")
    assert code == "200" and json.loads(status)["result"]["message"] == "Backup successfully created"


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_verb_prints_its_own_help_and_exits_0(verb, flag, tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ES_", "VMBACKUP_"))}
    environ["XDG_CONFIG_HOME"] = str(tmp_path)  # --help neither reads nor writes the token file
    proc = subprocess.run([os.path.join(BIN, "vmbackup"), verb, flag], capture_output=True, text=True,
                          env=environ, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("usage: vmbackup %s" % verb) and proc.stderr == "", proc.stdout + proc.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("verb", LAB_VERBS)
def test_the_labs_are_vmbackup_lab_subcommands_not_the_products(verb):
    proc = subprocess.run([os.path.join(BIN, "vmbackup-lab"), verb, "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: vmbackup-lab %s" % verb), proc.stdout + proc.stderr
    proc = subprocess.run([os.path.join(BIN, "vmbackup"), verb, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice: '%s'" % verb in proc.stderr, proc.stdout + proc.stderr


def test_help_after_a_path_is_still_that_verbs_help():
    proc = subprocess.run([os.path.join(BIN, "vmbackup"), "get", "/vm/x/backup", "-full", "--url",
                           "http://127.0.0.1:1/api", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: vmbackup get /PATH"), proc.stdout + proc.stderr


def test_the_token_file_is_0600_in_a_0700_folder_whatever_they_were(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    es_client.save_config({"url": "http://127.0.0.1:8000/api", "token": "first"})
    path = es_client.config_path()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700

    os.chmod(path, 0o644)  # as an older version, or an operator's copy, left them
    os.chmod(os.path.dirname(path), 0o755)
    es_client.save_config({"url": "http://127.0.0.1:8000/api", "token": "second"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert es_client.load_config()["token"] == "second"
    assert os.listdir(os.path.dirname(path)) == ["es.json"]  # no temporary file left behind


def test_the_token_file_is_0600_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    old = os.umask(0)
    try:
        es_client.save_config({"token": "t"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(es_client.config_path()).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(es_client.config_path())).st_mode) == 0o700


def test_record_commands_start_no_thread_and_place_no_run(tmp_path, monkeypatch, capsys):
    """`vmbackup user` and `definitions` only touch records: they build the application from its Config but start
    no thread (no launcher, scheduler or discovery) and make no CPU group for runs (no cgroup written)."""
    import io
    import threading

    from vmbackup.app.application import Application
    from vmbackup.app.config import Config
    from vmbackup.cli.main import main
    from vmbackup.engine import cpugroup

    def no_placement(nice):
        raise AssertionError("a record command placed the runs in a CPU group")

    monkeypatch.setattr(cpugroup, "for_runs", no_placement)
    data = str(tmp_path / "data")
    before = set(threading.enumerate())
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-enough-password\n"))
    assert main(["user", "add", "ops", "--admin", "--data-dir", data]) == 0
    assert main(["user", "list", "--data-dir", data]) == 0
    assert main(["definitions", "export", "--data-dir", data]) == 0
    assert "ops\tadmin" in capsys.readouterr().out
    assert set(threading.enumerate()) <= before, threading.enumerate()
    # The defaults live once, in Config: the command line shows them, the application runs with them.
    application = Application(Config(data_dir=data))
    assert application.config.job_nice == Config.default("job_nice") == 10
    assert application.scheduler.interval == Config.default("schedule_interval")
    assert set(threading.enumerate()) <= before
