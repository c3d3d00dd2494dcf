"""The awx execution engine: jobs launched as AWX job templates through AWX's REST API (against a
stand-in that speaks AWX's formats and runs the playbooks for real: tests/fixtures/awx_standin.py)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from ansible_run import ENV
from api_env import ADMIN, make_vm, new_env, seed, seed_nodes

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures"))
from awx_standin import StandIn  # noqa: E402

from vmbackup.store import Store  # noqa: E402


def awx_env(lab, token_file_text: str):
    env = new_env(lab)
    standin = StandIn("s3cret-awx-token", env.inventory, ENV)
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
    launch = standin.launches[-1]
    assert standin.templates[launch["template"]]["playbook"] == "playbooks/backup.yml"
    assert launch["extra_vars"]["vm_uuid"] == vm.uuid and "vmbackup_progress_file" not in launch["extra_vars"]
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
    from vmbackup.awx import AwxEngine, AwxError
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
    from vmbackup.awx import AwxEngine, AwxError
    with pytest.raises(AwxError, match="--awx-insecure-http"):
        AwxEngine("http://awx.example.com", "s3cret", str(tmp_path / "runs"))
    with pytest.raises(AwxError, match="https://"):
        AwxEngine("ftp://awx.example.com", "s3cret", str(tmp_path / "runs"))
    assert AwxEngine("https://awx.example.com/", "s3cret", str(tmp_path / "runs")).url == "https://awx.example.com"
