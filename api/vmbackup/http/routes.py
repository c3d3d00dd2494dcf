"""HTTP only: URLs, parameters, envelopes, headers and status codes. The rules live in the use cases (`app/`)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable

import bottle

from vmbackup import __version__
from vmbackup.app.auth import Auth, token_of
from vmbackup.app.service import Service
from vmbackup.domain import errors, validation
from vmbackup.domain.facts import TaskStatus
from vmbackup.http.openapi import spec
from vmbackup.http.table import ROUTES, Route

JSON = "application/json"
MAX_DEPTH = 32  # nesting of a request's JSON: the API's bodies are flat; deeper is an attack or a mistake
log = logging.getLogger("vmbackup.api")


def envelope(task_id: str, status: str, result, code: int) -> bottle.HTTPResponse:
    return _json({"task_id": task_id, "status": status, "result": result}, code, {"es_task_id": task_id})


class ListCache:
    """Encoded answers of the big listings, per (call, parameters, who asks).

    An answer is rebuilt before it is given once the records changed (the store's generation): a client
    sees its own writes. Unchanged records make it old only by its ages (definitions show how long ago
    they were verified): after `max_age` seconds it is still given while one background thread rebuilds
    it, so no request pays the whole listing for the clock alone. One builder per key at a time; the
    others wait for its answer instead of building the same one beside it.
    """

    def __init__(self, size: int = 64, max_age: float = 10.0):
        self.size = size
        self.max_age = max_age
        self._entries: dict[tuple, tuple] = {}  # key -> (generation, built at, text)
        self._building: dict[tuple, threading.Lock] = {}
        self._refreshing: set[tuple] = set()
        self._lock = threading.Lock()

    def get(self, generation, key: tuple, compute: Callable[[], object]) -> str:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == generation:
                if time.monotonic() - entry[1] >= self.max_age and key not in self._refreshing:
                    self._refreshing.add(key)
                    threading.Thread(target=self._refresh, args=(generation, key, compute), daemon=True,
                                     name="listing-refresh").start()
                return entry[2]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry[0] == generation:
                    return entry[2]  # built meanwhile by the thread we waited for
            try:
                return self._build(generation, key, compute)
            finally:
                with self._lock:  # keys come from query strings: keep no lock per key once built
                    if self._building.get(key) is building:
                        del self._building[key]

    def _build(self, generation, key: tuple, compute: Callable[[], object]) -> str:
        built = time.monotonic()
        text = json.dumps(compute())
        with self._lock:
            current = self._entries.get(key)
            if current is None or current[1] <= built:
                if current is None and len(self._entries) >= self.size:
                    del self._entries[min(self._entries, key=lambda k: self._entries[k][1])]
                self._entries[key] = (generation, built, text)
        return text

    def _refresh(self, generation, key: tuple, compute: Callable[[], object]) -> None:
        try:
            self._build(generation, key, compute)
        except Exception:  # the next request builds it itself
            log.exception("rebuilding a listing failed")
        finally:
            with self._lock:
                self._refreshing.discard(key)


def envelope_of(task_id: str, result_json: str, code: int = 200) -> bottle.HTTPResponse:
    """A SUCCESS envelope around a result that is JSON already."""
    body = '{"task_id": %s, "status": "SUCCESS", "result": %s}' % (json.dumps(task_id), result_json)
    response = bottle.HTTPResponse(body, status=code, headers={"es_task_id": task_id})
    response.content_type = JSON
    return response


def _json(body, code: int, headers: dict | None = None) -> bottle.HTTPResponse:
    response = bottle.HTTPResponse(json.dumps(body), status=code, headers=headers or {})
    response.content_type = JSON
    return response


def params() -> dict:
    """GET parameters from the query string; others from the JSON body (query string as fallback)."""
    try:
        data = dict(bottle.request.query.decode().items())
    except UnicodeError:
        raise errors.ValidationFailed({"non_field_errors": ["The query string is not valid UTF-8."]}) from None
    if bottle.request.method != "GET":
        body = bottle.request.body.read()
        if body.strip():
            data.update(_json_body(body))
        else:
            try:
                data.update(bottle.request.forms.decode().items())
            except UnicodeError:
                raise errors.ValidationFailed({"non_field_errors": ["The form body is not valid UTF-8."]}) from None
    return data


def _json_body(body: bytes) -> dict:
    try:
        text = body.decode("utf-8")
    except UnicodeError:
        raise errors.ValidationFailed({"non_field_errors": ["The body is not valid UTF-8."]}) from None
    try:
        parsed = json.loads(text)
    except RecursionError:
        parsed = None
    except ValueError as err:
        raise errors.ValidationFailed({"non_field_errors": ["JSON parse error: %s." % err]}) from None
    if parsed is None or _depth(parsed) > MAX_DEPTH:
        raise errors.ValidationFailed({"non_field_errors": ["JSON nested deeper than %d levels." % MAX_DEPTH]})
    if not isinstance(parsed, dict):
        raise errors.ValidationFailed({"non_field_errors": ["Expected a JSON object."]})
    return parsed


def _depth(value, level: int = 1) -> int:
    """How deep a parsed JSON value nests, counted without recursion (and stopping past MAX_DEPTH)."""
    deepest, stack = level, [(value, level)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


ES_HEADERS = {"es-version": "es_version", "es-username": "es_username", "es-task-id": "es_task_id",
              "es-stream": "es_stream"}


def es_header_names(app: Callable) -> Callable:
    """WSGI wrapper: the original API's headers are `es_version`, `es_username`, `es_task_id` (underscores),
    which Bottle would print as `Es-Version`; clients look them up by the original names."""
    def wsgi(environ, start_response):
        def start(status, headers, exc_info=None):
            return start_response(status, [(ES_HEADERS.get(k.lower(), k), v) for k, v in headers], exc_info)
        return app(environ, start)
    return wsgi


def utf8_only(app: Callable) -> Callable:
    """WSGI wrapper: a URL path or query string that is not UTF-8 is answered 400 before any route."""
    def wsgi(environ, start_response):
        # PATH_INFO arrives unquoted, as latin-1 text of the bytes; QUERY_STRING still percent-encoded.
        path = environ.get("PATH_INFO", "")
        query = bottle.urlunquote(environ.get("QUERY_STRING", ""), encoding="latin-1")
        for text, what in ((path, "path"), (query, "query string")):
            try:
                text.encode("latin-1").decode("utf-8")
            except UnicodeError:
                body = json.dumps({"detail": "The URL %s is not valid UTF-8." % what}).encode()
                start_response("400 Bad Request", [("Content-Type", JSON), ("Content-Length", str(len(body)))])
                return [body]
        return app(environ, start_response)
    return wsgi


STREAM_INTERVAL = 3.0


def stream(service: Service, task_id: str, interval: float = STREAM_INTERVAL,
           limit: float = 3600.0) -> bottle.HTTPResponse:
    """The `ES-STREAM: es` answer: 201 headers at once, a space every few seconds while the job runs,
    then the final status code on a line of its own and the status JSON. After `limit` seconds the
    stream ends with the task's current status (201 PENDING), so a waiting client never holds a
    server thread for ever."""
    def body():
        last = start = time.monotonic()
        while True:
            task = service.tasks.get(task_id)
            if task is None or task["status"] != TaskStatus.PENDING or time.monotonic() - start >= limit:
                break
            if time.monotonic() - last >= interval:
                last = time.monotonic()
                yield b" "
            time.sleep(0.2)
        final = status_response(task)
        yield ("%d\n" % final.status_code).encode() + final.body.encode()

    response = bottle.HTTPResponse(body(), status=201, headers={"es_stream": "es", "es_task_id": task_id})
    response.content_type = JSON
    return response


def build_app(service: Service, auth: Auth, stream_limit: float = 3600.0, metrics=None) -> bottle.Bottle:
    """The WSGI application, every route under /api/ with and without a trailing slash; `metrics` (a
    vmbackup.metrics.Metrics) adds GET /api/metrics."""
    app = bottle.Bottle(autojson=False, catchall=True)
    app.config["vmbackup.service"] = service

    def json_error(err: bottle.HTTPError) -> str:
        """Bottle's own refusals (unknown route, bad path encoding, an exception) as JSON, never HTML."""
        bottle.response.content_type = JSON
        if err.status_code >= 500:
            log.error("%s %s failed: %s\n%s", bottle.request.method, bottle.request.path, err.exception,
                      err.traceback or "")
            return json.dumps({"detail": "Internal server error."})
        if err.status_code == 404:
            return json.dumps({"detail": "Not found."})
        if err.status_code == 405:
            return json.dumps({"detail": 'Method "%s" not allowed.' % bottle.request.method})
        return json.dumps({"detail": str(err.body) if isinstance(err.body, str) else err.status_line})

    app.default_error_handler = json_error

    @app.hook("before_request")
    def strip_trailing_slash():
        path = bottle.request.environ["PATH_INFO"]
        if len(path) > 1 and path.endswith("/"):
            bottle.request.environ["PATH_INFO"] = path.rstrip("/")

    def handler(fn: Callable, entry: Route) -> Callable:
        """Authenticate, call with the path's values in its order, and turn refusals into their responses;
        add the es_* headers."""
        def wrapped(**kwargs):
            user = None
            try:
                if not entry.public:
                    user = auth.authenticate(bottle.request.get_header("Authorization"),
                                             bottle.request.get_header("ES-API-KEY"))
                response = fn(user, *(kwargs[name] for name in entry.path_params))
            except errors.ApiError as err:
                response = _json({"detail": err.detail}, err.status)
                if getattr(err, "retry_after", None):
                    response.set_header("Retry-After", str(err.retry_after))
            except errors.ValidationFailed as err:
                response = envelope(service.tasks.new_id(user, "d"), TaskStatus.FAILURE, err.errors, 400)
            except errors.LoginFailed as err:
                response = _json({"detail": str(err)}, 400)
            except bottle.HTTPResponse:
                raise
            except Exception:  # a bug: JSON 500 to the client, the traceback to the log
                log.exception("%s %s failed", bottle.request.method, bottle.request.path)
                response = _json({"detail": "Internal server error."}, 500)
            response.set_header("es_version", __version__)
            response.set_header("es_username", user["username"] if user else "")
            return response
        return wrapped

    def answer(user, result, code: int = 200) -> bottle.HTTPResponse:
        return envelope(service.tasks.new_id(user, "d"), TaskStatus.SUCCESS, result, code)

    def pending(task_id) -> bottle.HTTPResponse:
        if isinstance(task_id, dict):  # done at once (a LOST backup removed from the records)
            return None
        if bottle.request.get_header("ES-STREAM") == "es":
            return stream(service, task_id, limit=stream_limit)
        return envelope(task_id, TaskStatus.PENDING, None, 201)

    # -- accounts ---------------------------------------------------------------------------------
    def login(_user):
        data = params()
        # REMOTE_ADDR itself: X-Forwarded-For is the client's to choose, so it cannot key the throttle.
        result = auth.login(str(data.get("username") or ""), str(data.get("password") or ""),
                            bottle.request.environ.get("REMOTE_ADDR") or "")
        return _json(dict(result, detail="Welcome to vmbackup %s" % __version__), 200)

    def logout(user):
        token = token_of(bottle.request.get_header("Authorization"))
        if token:
            auth.logout(token)
        return _json({"detail": "Bye."}, 200)

    # -- definitions --------------------------------------------------------------------------------
    listings = ListCache()

    def all_definitions(user):
        query = params()
        who = "admin" if user.get("is_admin") else tuple(sorted(user.get("vms") or []))
        key = ("definitions", tuple(sorted(query.items())), who)
        text = listings.get(service.data_version(), key, lambda: service.definitions.list(user, query))
        return envelope_of(service.tasks.new_id(user, "d"), text)

    def vm_definitions(user, vm):
        return answer(user, service.definitions.list(user, params(), vm))

    def get_definition(user, vm, name):
        return answer(user, service.definitions.get(user, vm, name, params()))

    def create_definition(user, vm, name):
        return answer(user, service.definitions.create(user, vm, name, params()), 201)

    def update_definition(user, vm, name):
        return answer(user, service.definitions.update(user, vm, name, params()))

    def delete_definition(user, vm, name):
        service.definitions.delete(user, vm, name, params())
        return answer(user, None)

    # -- backups ------------------------------------------------------------------------------------
    def list_backups(user, vm):
        return answer(user, service.backups.list(user, vm, params()))

    def delete_backups(user, vm):
        outcome = service.backups.delete_many(user, vm, params())
        return pending(outcome) or answer(user, outcome)

    def get_backup(user, vm, name):
        return answer(user, service.backups.get(user, vm, name, params()))

    def create_backup(user, vm, name):
        return pending(service.backups.create(user, vm, name, params()))

    def put_backup(user, vm, name):
        data = params()
        if "note" in data:
            return answer(user, service.backups.set_note(user, vm, name, data))
        return pending(service.backups.restore(user, vm, name, data))

    def delete_backup(user, vm, name):
        outcome = service.backups.delete(user, vm, name, params())
        return pending(outcome) or answer(user, outcome)

    def verify_backup(user, vm, name):
        return pending(service.backups.verify(user, vm, name, params()))

    # -- sync and tasks -----------------------------------------------------------------------------
    def sync_nodes(user):
        data = params()
        node = data.get("node") or None
        fields = validation.Fields(data)
        adopt = fields.boolean("adopt", False)  # admin only, as every sync: import backups of VMs nobody reports
        fields.raise_if_any()
        return pending(service.backups.sync(user, node if isinstance(node, str) else None, adopt=adopt))

    def task_list(user):
        return answer(user, service.tasks.pending_ids(user))

    def task_log(user):
        return answer(user, service.tasks.log(user))

    def task_detail(user, task_id):
        return envelope(task_id, TaskStatus.SUCCESS, service.tasks.info(user, task_id), 200)

    def task_status(user, task_id):
        task = service.tasks.visible(user, task_id)
        return status_response(task)

    def task_done(user, task_id):
        task = service.tasks.visible(user, task_id)
        return _json({"task_id": task_id, "done": task["status"] != TaskStatus.PENDING}, 200, {"es_task_id": task_id})

    def task_cancel(user, task_id):
        service.tasks.cancel(user, task_id)
        return envelope(task_id, TaskStatus.SUCCESS, {"message": "Task canceled"}, 200)

    # -- extensions ---------------------------------------------------------------------------------
    def get_metrics(user):
        response = bottle.HTTPResponse(metrics.render(user), status=200)
        response.content_type = metrics.content_type
        return response

    def openapi(_user):
        return _json(spec(registered), 200)

    # -- the route table: each entry's handler, by name, under its path ----------------------------
    handlers = {fn.__name__: fn for fn in (
        login, logout, all_definitions, vm_definitions, get_definition, create_definition, update_definition,
        delete_definition, list_backups, delete_backups, get_backup, create_backup, put_backup, delete_backup,
        verify_backup, sync_nodes, task_list, task_log, task_detail, task_status, task_done, task_cancel,
        get_metrics, openapi)}
    registered = [r for r in ROUTES if not (r.optional and metrics is None)]  # the one optional route: metrics
    for entry in registered:
        app.route(bottle_path(entry), entry.method, handler(handlers[entry.handler], entry))
    app.config["vmbackup.routes"] = registered
    return app


def bottle_path(entry: Route) -> str:
    """/vm/{hostname_or_uuid}/backup -> /api/vm/<hostname_or_uuid>/backup"""
    return "/api" + re.sub(r"{(\w+)}", r"<\1>", entry.path)


def status_response(task: dict) -> bottle.HTTPResponse:
    if task["status"] == TaskStatus.PENDING:
        return envelope(task["task_id"], TaskStatus.PENDING, None, 201)
    code = 200 if task["status"] == TaskStatus.SUCCESS else 400
    return envelope(task["task_id"], task["status"], task["result"], code)
