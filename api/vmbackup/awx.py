"""The `awx` execution engine: a job runs as an AWX (Ansible Automation Platform) job template, launched
through AWX's REST API, instead of a local ansible-runner process. The same playbooks and variables;
AWX's job id is recorded on the task, while the task id keeps the original API's format.

What it uses of AWX's API (awx/api/urls, awx/api/views/__init__.py, awx/api/serializers.py):
  GET  /api/v2/job_templates/?name=<name>         -> {"count", "results": [{"id", "name", ...}]}
  POST /api/v2/job_templates/<id>/launch/         {"extra_vars": {...}} -> 201 {"job": <id>, "id": <id>, ...}
  GET  /api/v2/jobs/<id>/                         -> {"id", "status", "failed", "artifacts", "job_explanation"}
  GET  /api/v2/jobs/<id>/job_events/?order_by=counter&page_size=200  -> {"count", "next", "results": [...]}
  POST /api/v2/jobs/<id>/cancel/                  -> 202 (405 when the job cannot be canceled)
with `Authorization: Bearer <token>` (an OAuth2 personal access token). The run's result is the
playbook's `set_stats` data, which AWX keeps in the job's `artifacts`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

import yaml

from vmbackup import paths
from vmbackup.runner import RunResult, failures, purge_runs

log = logging.getLogger("vmbackup.awx")
RUNNING = {"new", "pending", "waiting", "running"}
STATUS = {"successful": "successful", "failed": "failed", "error": "failed", "canceled": "canceled"}


def template_names(path: str = os.path.join(paths.PROJECT, "awx", "job_templates.yml")) -> dict[str, str]:
    """playbook file name -> job template name, as awx/job_templates.yml creates them in AWX."""
    try:
        with open(path) as handle:
            plays = yaml.safe_load(handle) or []
    except OSError:
        return {}
    names: dict[str, str] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("playbook"), str) and isinstance(node.get("name"), str):
                names[os.path.basename(node["playbook"])] = node["name"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(plays)
    return names


class AwxError(RuntimeError):
    pass


class SameOrigin(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to AWX itself (scheme, host and port): the Bearer token goes with every request,
    and a redirect elsewhere would hand it to whoever answers there."""

    def __init__(self, origin: tuple[str, str]):
        self.origin = origin

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        if (target.scheme, target.netloc) != self.origin:
            raise AwxError("AWX redirected %s to %s://%s: refused, the token goes to AWX only"
                           % (req.full_url, target.scheme, target.netloc))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class AwxEngine:
    """Runs each job as an AWX job; the same interface as the local Runner."""

    def __init__(self, url: str, token: str, runs_dir: str, templates: dict[str, str | int] | None = None,
                 poll: float = 1.0, timeout: float = 30.0, insecure_http: bool = False):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise AwxError("--awx-url %s: give https://<host>[:port]" % url)
        if parts.scheme == "http" and not insecure_http:
            raise AwxError("--awx-url %s: the AWX token would cross the network in clear; use https://, or say "
                           "--awx-insecure-http (a test AWX on this machine)" % url)
        self._opener = urllib.request.build_opener(SameOrigin((parts.scheme, parts.netloc)))
        self.url = url.rstrip("/")
        self.token = token
        self.runs_dir = runs_dir
        self.templates = dict(template_names(), **(templates or {}))
        self.poll = poll
        self.timeout = timeout
        self._ids: dict[str, int] = {}
        os.makedirs(runs_dir, mode=0o700, exist_ok=True)

    # -- AWX's API ------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": "Bearer " + self.token, "Content-Type": "application/json",
            "Accept": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout) as reply:
                text = reply.read().decode() or "{}"
                return reply.status, json.loads(text)
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                return err.code, json.loads(text or "{}")
            except ValueError:
                return err.code, {"detail": text[:500]}
        except (OSError, ValueError) as err:
            raise AwxError("AWX at %s: %s" % (self.url, err)) from None

    def template_id(self, playbook: str) -> int:
        wanted = self.templates.get(playbook)
        if isinstance(wanted, int):
            return wanted
        if wanted is None:
            raise AwxError("no AWX job template is known for %s (awx/job_templates.yml, --awx-template)" % playbook)
        if playbook not in self._ids:
            code, found = self._call("GET", "/api/v2/job_templates/?" + urllib.parse.urlencode({"name": wanted}))
            results = found.get("results") or []
            if code != 200 or len(results) != 1:
                raise AwxError("AWX job template %r: %s" % (wanted, found.get("detail") or "not found"))
            self._ids[playbook] = int(results[0]["id"])
        return self._ids[playbook]

    # -- the engine interface -------------------------------------------------------------------
    def data_dir(self, ident: str) -> str:
        return os.path.join(self.runs_dir, ident)

    def progress_file(self, ident: str, item: int | None = None) -> str:
        return ""  # the run is on an AWX execution node: no local progress file (the playbooks omit it)

    def start(self, ident: str, playbook: str, extravars: dict, on_done: Callable[[RunResult], None]) -> dict:
        """Launch the job template of `playbook` with `extravars`; returns {"awx_job": id} for the task."""
        template = self.template_id(playbook)
        extravars = {k: v for k, v in extravars.items() if k != "vmbackup_progress_file"}
        code, job = self._call("POST", "/api/v2/job_templates/%d/launch/" % template, {"extra_vars": extravars})
        if code != 201 or not isinstance(job.get("job") or job.get("id"), int):
            raise AwxError("AWX refused the launch of %s (%d): %s" % (playbook, code, json.dumps(job)[:500]))
        job_id = int(job.get("job") or job["id"])
        os.makedirs(self.data_dir(ident), mode=0o700, exist_ok=True)
        with open(os.path.join(self.data_dir(ident), "awx.json"), "w") as handle:
            json.dump({"job": job_id, "template": template, "playbook": playbook}, handle)
        threading.Thread(target=self._watch, args=(ident, on_done), daemon=True, name="awx-" + ident).start()
        return {"awx_job": job_id}

    def started(self, ident: str) -> bool:
        return self.job_id(ident) is not None

    def reattach(self, ident: str, on_done: Callable[[RunResult], None]) -> None:
        threading.Thread(target=self._watch, args=(ident, on_done), daemon=True, name="awx-" + ident).start()

    def job_id(self, ident: str) -> int | None:
        try:
            with open(os.path.join(self.data_dir(ident), "awx.json")) as handle:
                return int(json.load(handle)["job"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def job(self, ident: str) -> dict | None:
        job_id = self.job_id(ident)
        if job_id is None:
            return None
        code, job = self._call("GET", "/api/v2/jobs/%d/" % job_id)
        return job if code == 200 else None

    def running(self, ident: str) -> bool:
        try:
            job = self.job(ident)
        except AwxError:
            return True  # AWX cannot be asked: the job may well still run
        return bool(job) and job.get("status") in RUNNING

    def cancel(self, ident: str) -> bool:
        job_id = self.job_id(ident)
        if job_id is None:
            return False
        code, _ = self._call("POST", "/api/v2/jobs/%d/cancel/" % job_id)
        return code == 202

    def events(self, ident: str) -> list[dict]:
        job_id = self.job_id(ident)
        if job_id is None:
            return []
        events, path = [], "/api/v2/jobs/%d/job_events/?order_by=counter&page_size=200" % job_id
        while path:
            code, page = self._call("GET", path)
            if code != 200:
                break
            events.extend(page.get("results") or [])
            following = page.get("next")
            path = urllib.parse.urlsplit(following)._replace(scheme="", netloc="").geturl() if following else None
        return events

    def progress(self, ident: str) -> dict:
        step = None
        for event in self.events(ident):
            if event.get("event") in ("playbook_on_task_start", "runner_on_start"):
                step = (event.get("event_data") or {}).get("task") or event.get("task") or step
        return {"step": step, "awx_job": self.job_id(ident)}

    def result(self, ident: str) -> RunResult:
        job = self.job(ident) or {}
        status = STATUS.get(job.get("status"), "failed")
        artifacts = job.get("artifacts") if isinstance(job.get("artifacts"), dict) else {}
        result = artifacts.get("vmbackup_result") if isinstance(artifacts.get("vmbackup_result"), dict) else {}
        errors = []
        if status != "successful":
            errors = failures(self.events(ident))
            if job.get("job_explanation"):
                errors.append(str(job["job_explanation"]))
        return RunResult(status, 0 if status == "successful" else 1, result,
                         "; ".join(errors) or ("" if status == "successful" else "AWX job %s" % job.get("status")))

    def _watch(self, ident: str, on_done: Callable[[RunResult], None]) -> None:
        while self.running(ident):
            time.sleep(self.poll)
        on_done(self.result(ident))

    def remove(self, ident: str) -> None:
        shutil.rmtree(self.data_dir(ident), ignore_errors=True)

    def purge(self, older_than: float, keep: Callable[[str], bool]) -> list[str]:
        return purge_runs(self.runs_dir, older_than, keep)
