"""The `awx` execution engine: a job runs as an AWX (Ansible Automation Platform) job template, launched
through AWX's REST API, instead of a local ansible-runner process. The same playbooks; each job goes to the
template api/vmbackup/engine/awx_templates.py describes for it, with the extra vars that description allows. AWX's job
id is recorded on the task (and in the run's folder, so a restarted service follows the job again).

What it uses of AWX's API (awx/api/urls, awx/api/views/__init__.py, awx/api/serializers.py, pagination.py):
  GET  /api/v2/job_templates/?name=<name>         -> {"count", "results": [{"id", "name", ...}]}
  POST /api/v2/job_templates/<id>/launch/         {"extra_vars": {...}} -> 201 {"job", "ignored_fields", ...}
                                                  or 400 {"variables_needed_to_start": [...], ...}
  GET  /api/v2/jobs/<id>/                         -> {"status", "artifacts", "job_explanation",
                                                      "event_processing_finished", ...}
  GET  /api/v2/jobs/<id>/job_events/?order_by=counter&counter__gt=<n>&page_size=200
                                                  -> {"count", "next" (a relative URL), "results": [...]}
  GET  /api/v2/jobs/<id>/cancel/                  -> {"can_cancel"}
  POST /api/v2/jobs/<id>/cancel/                  -> 202, or 405 {"detail"} once the job has finished
with `Authorization: Bearer <token>` (an OAuth2 personal access token). A job's status goes new, pending,
waiting, running, then successful, failed, error (it could not run) or canceled; AWX saves its events apart from
its status, so the last events and the `set_stats` artifacts (the run's result) are read once
`event_processing_finished` is true.
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

from vmbackup.engine import awx_templates
from vmbackup.engine.runner import RunResult, failures, purge_runs

log = logging.getLogger("vmbackup.awx")
RUNNING = {"new", "pending", "waiting", "running"}
STATUS = {"successful": "successful", "failed": "failed", "error": "failed", "canceled": "canceled"}
EVENTS_PAGE = 200  # AWX's MAX_PAGE_SIZE


def template_names() -> dict[str, str]:
    """template key (the playbook file name the API's job names) -> job template name, as awx/job_templates.yml
    creates them in AWX."""
    return {t.key: t.name for t in awx_templates.TEMPLATES}


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
                 poll: float = 1.0, timeout: float = 30.0, insecure_http: bool = False, events_wait: float = 60.0):
        """`templates`: template key -> AWX name or id, over awx/job_templates.yml's names (--awx-template);
        `events_wait`: how long to wait, once a job has ended, for AWX to have saved its events."""
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
        self.events_wait = events_wait
        self._ids: dict[str, int] = {}
        self._seen: dict[str, list[dict]] = {}  # each followed job's events read so far, by counter
        self._reading: dict[str, threading.Lock] = {}  # one reader of a job's events at a time
        self._lock = threading.Lock()
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

    def template_id(self, key: str) -> int:
        wanted = self.templates.get(key)
        if isinstance(wanted, int):
            return wanted
        if wanted is None:
            raise AwxError("no AWX job template is known for %s (awx/job_templates.yml, --awx-template)" % key)
        if key not in self._ids:
            code, found = self._call("GET", "/api/v2/job_templates/?" + urllib.parse.urlencode({"name": wanted}))
            results = found.get("results") or []
            if code != 200 or len(results) != 1:
                raise AwxError("AWX job template %r: %s" % (wanted, found.get("detail") or "not found"))
            self._ids[key] = int(results[0]["id"])
        return self._ids[key]

    # -- the engine interface -------------------------------------------------------------------
    def data_dir(self, ident: str) -> str:
        return os.path.join(self.runs_dir, ident)

    def progress_file(self, ident: str, item: int | None = None) -> str:
        return ""  # the run is on an AWX execution node: no local progress file (the launch leaves it out)

    def start(self, ident: str, playbook: str, extravars: dict, on_done: Callable[[RunResult], None]) -> dict:
        """Launch the job template of this job with its extra vars; returns {"awx_job": id} for the task."""
        try:
            template = awx_templates.template_for(playbook, extravars)
            extra_vars = awx_templates.launch_vars(template, extravars)
        except awx_templates.LaunchError as err:
            raise AwxError(str(err)) from None
        name = self.templates.get(template.key, template.name)
        template_id = self.template_id(template.key)
        code, job = self._call("POST", "/api/v2/job_templates/%d/launch/" % template_id, {"extra_vars": extra_vars})
        job_id = job.get("job") or job.get("id")
        if code != 201 or not isinstance(job_id, int):
            raise AwxError("AWX refused the launch of job template %r (%d): %s"
                           % (name, code, json.dumps(job)[:500]))
        if job.get("ignored_fields"):
            # The job would run without them (no force, fsfreeze, protect...): stop it, and say what to change.
            self._call("POST", "/api/v2/jobs/%d/cancel/" % job_id)
            raise AwxError("AWX job template %r ignored %s of the launch (job %d canceled): turn on 'Prompt on "
                           "launch' for Variables (ask_variables_on_launch) in the template, and keep its survey "
                           "as awx/surveys/ has it" % (name, json.dumps(job["ignored_fields"])[:300], job_id))
        os.makedirs(self.data_dir(ident), mode=0o700, exist_ok=True)
        with open(os.path.join(self.data_dir(ident), "awx.json"), "w") as handle:
            json.dump({"job": job_id, "template": template_id, "template_name": name, "playbook": playbook}, handle)
        self._follow(ident, on_done)
        return {"awx_job": job_id}

    def started(self, ident: str) -> bool:
        return self.job_id(ident) is not None

    def reattach(self, ident: str, on_done: Callable[[RunResult], None]) -> None:
        """Follow a job launched before the service restarted (its id is in the run's folder)."""
        self._follow(ident, on_done)

    def _follow(self, ident: str, on_done: Callable[[RunResult], None]) -> None:
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
        """Cancel as AWX does: only when its cancel/ says can_cancel; 202 is done, 405 means it has ended."""
        job_id = self.job_id(ident)
        if job_id is None:
            return False
        code, answer = self._call("GET", "/api/v2/jobs/%d/cancel/" % job_id)
        if code != 200 or not answer.get("can_cancel"):
            return False
        code, answer = self._call("POST", "/api/v2/jobs/%d/cancel/" % job_id)
        if code == 405:
            log.info("AWX job %d had ended before its cancel: %s", job_id, answer.get("detail"))
        return code == 202

    def events(self, ident: str) -> list[dict]:
        """The job's events so far, in order: only those after the last one read are asked for, page by page."""
        job_id = self.job_id(ident)
        if job_id is None:
            return []
        with self._lock:
            reading = self._reading.setdefault(ident, threading.Lock())
        with reading:
            seen = self._seen.setdefault(ident, [])
            last = seen[-1]["counter"] if seen else 0
            path = "/api/v2/jobs/%d/job_events/?%s" % (job_id, urllib.parse.urlencode(
                {"order_by": "counter", "counter__gt": last, "page_size": EVENTS_PAGE}))
            while path:
                code, page = self._call("GET", path)
                if code != 200:
                    break
                seen.extend(e for e in page.get("results") or [] if isinstance(e.get("counter"), int))
                path = self._relative(page.get("next"))
            return list(seen)

    def _relative(self, link: str | None) -> str | None:
        """AWX's `next` is a path (or, behind some proxies, a full URL of AWX itself)."""
        if not link:
            return None
        return urllib.parse.urlsplit(link)._replace(scheme="", netloc="").geturl()

    def progress(self, ident: str) -> dict:
        """The job's status in AWX and the task it is at, from the events saved so far."""
        step = None
        try:
            events = self.events(ident)
        except AwxError:
            events = list(self._seen.get(ident, []))
        for event in events:
            if event.get("event") in ("playbook_on_task_start", "runner_on_start"):
                step = (event.get("event_data") or {}).get("task") or event.get("task") or step
        return {"step": step, "awx_job": self.job_id(ident)}

    def result(self, ident: str) -> RunResult:
        """The run's result, from a job that has ended: waits (up to events_wait) until AWX has saved its events,
        for the failed tasks' messages are in the last of them."""
        deadline = time.monotonic() + self.events_wait
        job = self.job(ident) or {}
        while not job.get("event_processing_finished") and time.monotonic() < deadline:
            time.sleep(min(self.poll, 0.5))
            job = self.job(ident) or job
        status = STATUS.get(job.get("status"), "failed")
        artifacts = job.get("artifacts") if isinstance(job.get("artifacts"), dict) else {}
        result = artifacts.get("vmbackup_result") if isinstance(artifacts.get("vmbackup_result"), dict) else {}
        errors = []
        if status != "successful":
            # Read them all again: AWX's callback workers may save an event after one with a higher counter.
            with self._lock:
                self._seen.pop(ident, None)
            errors = failures(self.events(ident))
            if job.get("job_explanation"):
                errors.append(str(job["job_explanation"]))
            if job.get("status") == "error":
                errors.insert(0, "AWX job %s could not run (status error)" % job.get("id"))
        if not job.get("event_processing_finished"):
            log.warning("AWX job of %s: events still not saved after %ss; its result may be short", ident,
                        self.events_wait)
        return RunResult(status, 0 if status == "successful" else 1, result,
                         "; ".join(errors) or ("" if status == "successful" else "AWX job %s" % job.get("status")))

    def _watch(self, ident: str, on_done: Callable[[RunResult], None]) -> None:
        while self.running(ident):
            try:
                self.events(ident)  # read as they come: progress, and fewer to read at the end
            except AwxError:
                pass
            time.sleep(self.poll)
        try:
            run = self.result(ident)
        finally:
            with self._lock:
                self._seen.pop(ident, None)
                self._reading.pop(ident, None)
        on_done(run)

    def remove(self, ident: str) -> None:
        shutil.rmtree(self.data_dir(ident), ignore_errors=True)

    def purge(self, older_than: float, keep: Callable[[str], bool]) -> list[str]:
        return purge_runs(self.runs_dir, older_than, keep)
