"""Alerts by webhook: a JSON POST to each configured URL when a job fails, backups turn LOST, a restore
drill fails, or a definition goes stale (past `vmbackup check`'s critical threshold).

Each request is signed: `X-Vmbackup-Signature: sha256=<hex HMAC-SHA256, with the shared secret, of the
X-Vmbackup-Timestamp value, a dot, and the body>`, `X-Vmbackup-Timestamp` being the Unix seconds of the
attempt: a receiver checks the signature and refuses a timestamp more than a few minutes old, so a captured
alert cannot be replayed later. `X-Vmbackup-Delivery` is the alert's id, the same on every retry, for
receivers to drop duplicates. Sending happens in a thread
of its own with a bounded queue, so no job ever waits for a receiver; a failed attempt is retried
with exponential back-off, and what cannot be delivered is logged.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid

from vmbackup.app import check
from vmbackup.domain.clock import iso, now
from vmbackup.store.store import Store

log = logging.getLogger("vmbackup.alerts")
SIGNATURE, TIMESTAMP, DELIVERY, EVENT = ("X-Vmbackup-Signature", "X-Vmbackup-Timestamp", "X-Vmbackup-Delivery",
                                         "X-Vmbackup-Event")
TASK_FIELDS = ("task_id", "kind", "hostname", "vm_uuid", "disk_id", "bkpname", "define", "node", "username")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature of one attempt: over its timestamp and its body, so neither can be replayed alone."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class Webhooks:
    """Delivers alerts to every URL from one thread; attempts wait in a heap ordered by when they are due."""

    def __init__(self, urls: list[str], secret: bytes, queue_size: int = 1000, attempts: int = 6,
                 backoff: float = 2.0, timeout: float = 10.0):
        if not secret:
            raise ValueError("webhooks need a shared secret to sign with")
        self.urls, self.secret = list(urls), secret
        self.queue_size, self.attempts, self.backoff, self.timeout = queue_size, attempts, backoff, timeout
        self._heap: list[tuple[float, int, str, int, bytes, dict]] = []  # (due, seq, url, attempt, body, alert)
        self._seq = 0
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="webhooks")
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()

    def send(self, alert: dict) -> None:
        """Queue an alert for every URL; never blocks (a full queue drops it, with a log line)."""
        body = json.dumps(alert, sort_keys=True).encode()
        with self._wake:
            for url in self.urls:
                if len(self._heap) >= self.queue_size:
                    log.error("webhook queue full (%d): alert %s %s to %s dropped", self.queue_size,
                              alert["event"], alert["id"], url)
                    continue
                self._push(time.monotonic(), url, 1, body, alert)
            self._wake.notify()

    def _push(self, due: float, url: str, attempt: int, body: bytes, alert: dict) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, url, attempt, body, alert))

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._wake.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stop:
                    return
                _due, _seq, url, attempt, body, alert = heapq.heappop(self._heap)
            error = self._post(url, body, alert)
            if error is None:
                log.info("webhook %s %s delivered to %s", alert["event"], alert["id"], url)
                continue
            if attempt >= self.attempts:
                log.error("webhook %s %s to %s failed %d times, given up: %s", alert["event"], alert["id"], url,
                          attempt, error)
                continue
            delay = self.backoff * 2 ** (attempt - 1)
            log.warning("webhook %s %s to %s failed (%s); attempt %d in %.0f s", alert["event"], alert["id"], url,
                        error, attempt + 1, delay)
            with self._wake:
                self._push(time.monotonic() + delay, url, attempt + 1, body, alert)

    def _post(self, url: str, body: bytes, alert: dict) -> str | None:
        """One attempt; None when the receiver answered 2xx, else what went wrong."""
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "vmbackup-alerts",
                   SIGNATURE: sign(self.secret, stamp, body), TIMESTAMP: stamp,
                   DELIVERY: alert["id"], EVENT: alert["event"]}
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                reply.read()
                return None
        except urllib.error.HTTPError as err:
            return "HTTP %d" % err.code
        except (OSError, ValueError) as err:
            return str(err)


class Alerts:
    """Turns the service's events into alerts, each failure once; watches for definitions going stale."""

    def __init__(self, store: Store, webhooks: Webhooks, thresholds: check.Thresholds | None = None,
                 stale_every: float = 300.0):
        self.store = store
        self.webhooks = webhooks
        self.thresholds = thresholds or check.Thresholds()
        self.stale_every = stale_every
        self._stale: set[tuple] = set()   # definitions alerted in their current stale episode
        self._drills: collections.OrderedDict = collections.OrderedDict()  # failed drill tasks alerted (bounded)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def alert(self, event: str, **fields) -> None:
        self.webhooks.send(dict(fields, event=event, id=str(uuid.uuid4()), time=iso(now())))

    # -- events -----------------------------------------------------------------------------------
    def listen(self, kind: str, data: dict) -> None:
        """An Events listener (called in the job's thread: it only queues)."""
        if kind == "job_ended":
            self._job_ended(data)
        elif kind == "vm_conflict":
            self.alert("vm_conflict", vm_uuid=data.get("vm_uuid"), nodes=list(data.get("nodes") or []))
        elif kind == "drill_failed":
            task = data.get("task") or {}
            if self._first_drill_failure(task.get("task_id") or data.get("task_id")):
                self.alert("drill_failed", **self._task(task), **{k: v for k, v in data.items() if k != "task"})

    def _job_ended(self, data: dict) -> None:
        task = data.get("task") or {}
        if task.get("kind") == "sync" and data.get("lost"):
            self.alert("backups_lost", lost=list(data["lost"]), **self._task(task))
        if data.get("ok"):
            return
        if task.get("kind") == "verify":
            if self._first_drill_failure(task.get("task_id")):
                self.alert("drill_failed", **self._task(task))
            return
        self.alert("job_failed", **self._task(task))

    def _first_drill_failure(self, task_id: str | None) -> bool:
        """A drill may be reported twice (its job's end and a drill_failed event): alert once."""
        if task_id is None:
            return True
        with self._lock:
            if task_id in self._drills:
                return False
            self._drills[task_id] = True
            while len(self._drills) > 10000:
                self._drills.popitem(last=False)
            return True

    @staticmethod
    def _task(task: dict) -> dict:
        result = task.get("result") or {}
        return dict({k: task.get(k) for k in TASK_FIELDS}, status=task.get("status"),
                    message=result.get("message"), detail=result.get("detail"), outcome=task.get("outcome"))

    # -- stale definitions ------------------------------------------------------------------------
    def check_stale(self) -> list[tuple]:
        """Alert each definition past the critical threshold once per stale episode; return those alerted."""
        findings = check.evaluate(self.store, now(), check.Thresholds(self.thresholds.warn, self.thresholds.crit))
        stale = {f.key: f for f in findings if f.intervals > self.thresholds.crit}
        with self._lock:
            new = [key for key in stale if key not in self._stale]
            self._stale = set(stale)
        for key in new:
            f = stale[key]
            self.alert("definition_stale", hostname=f.hostname, vm_uuid=f.vm_uuid, define=f.definition,
                       disk_id=f.disk_id, age=round(f.age), intervals=round(f.intervals, 2),
                       interval=f.interval, detail="; ".join(f.reasons))
        return new

    def start(self) -> None:
        self.webhooks.start()
        threading.Thread(target=self._watch, daemon=True, name="stale-check").start()

    def stop(self) -> None:
        self._stop.set()
        self.webhooks.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.stale_every):
            try:
                self.check_stale()
            except Exception:  # the watch must outlive a bad record
                log.exception("stale check failed")
