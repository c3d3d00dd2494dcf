"""The OpenAPI 3.0 description of the API, built from the route table (`http/table.py`).

Each parameter is described with every form the API accepts (domain/validation.py): clients send values as
strings (`-disk_id 1` arrives as "1", `-full` as "true" or "True"), so an integer is a JSON integer or a string
of digits, a boolean a JSON boolean or one of validation.TRUE / FALSE in any case, and a compression 0-3 or a
name the collection knows (domain/facts.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from vmbackup import __version__
from vmbackup.domain import facts, validation
from vmbackup.domain.facts import TaskStatus
from vmbackup.http.table import BOOLEAN, COMPRESSION, INTEGER, NAMES, PATH_PARAMS, ROUTES, STRING, Param, Route


def _any_case(word: str) -> str:
    return "".join("[%s%s]" % (c.lower(), c.upper()) if c.isalpha() else c for c in word)


BOOLEAN_TEXT = {"type": "string", "pattern": r"^\s*(%s)\s*$" % "|".join(
    _any_case(w) for w in sorted(validation.TRUE | validation.FALSE)),
    "description": "true: %s; false: %s (any case)" % (", ".join(sorted(validation.TRUE)),
                                                       ", ".join(sorted(validation.FALSE)))}
INTEGER_TEXT = {"type": "string", "pattern": r"^\s*[-+]?[0-9]{1,20}\s*$"}
NULL_TEXT = {"type": "string", "enum": ["", "null", "none"]}


def schema_of(param: Param, in_query: bool) -> dict:
    """The accepted forms of a parameter; in a query string only the text forms."""
    if param.kind == BOOLEAN:
        forms = [{"type": "boolean"}, BOOLEAN_TEXT]
    elif param.kind == INTEGER:
        number = {"type": "integer"}
        if param.low is not None:
            number["minimum"] = param.low
        if param.high is not None:
            number["maximum"] = param.high
        forms = [number, INTEGER_TEXT] + ([NULL_TEXT] if param.nullable else [])
    elif param.kind == COMPRESSION:
        codes = [int(code) for code in facts.API_COMPRESSIONS]
        forms = [{"type": "integer", "enum": codes},
                 {"type": "string", "enum": facts.API_COMPRESSIONS + facts.COMPRESSION_NAMES}]
    elif param.kind == NAMES:
        forms = [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "string", "minLength": 1}]
    else:
        assert param.kind == STRING, param
        forms = [dict({"type": "string"}, **({"maxLength": param.max_length} if param.max_length else {}))]
    if in_query:
        forms = [f for f in forms if f["type"] == "string"]
    schema = forms[0] if len(forms) == 1 else {"oneOf": forms}
    if param.nullable and not in_query:
        schema = dict(schema, nullable=True)
    if param.default is not None:  # in a query string as its text
        default = param.default
        if in_query and not isinstance(default, str):
            default = str(default).lower() if isinstance(default, bool) else str(default)
        schema = dict(schema, default=default)
    return schema


# A job's outcome as data (domain/outcome.py): an additive field of the task log's lines.
ITEMS = {"type": "array", "items": {"type": "object", "properties": {
    k: {} for k in ("vm_uuid", "disk_id", "name", "define", "why", "pruned", "digest", "digest_kind",
                    "target_vm_uuid", "target_hostname", "target_disk_id", "node")}}}
OUTCOME = {"type": "object", "description": "What the job made and what it did not and why (for a sync, also "
           "its lists of pools listed and not, and of backups lost, found and imported)", "properties": dict(
               {"made": ITEMS, "failed": ITEMS},
               **{k: {"type": "array", "items": {"type": "string"}} for k in
                  ("listed", "unlisted", "lost", "found", "imported", "skipped")})}

NULLABLE_STRING = {"type": "string", "nullable": True}
NULLABLE_INTEGER = {"type": "integer", "nullable": True}
COMPRESSION_VALUE = {"oneOf": [{"type": "integer"}, {"type": "string"}]}
SCHEMAS = {
    "Definition": {"type": "object", "properties": {
        "hostname": {"type": "string"}, "vm_uuid": {"type": "string"}, "name": {"type": "string"},
        "disk_id": {"type": "integer"}, "type": {"type": "integer", "enum": sorted(facts.TYPES)},
        "node": {"type": "string"}, "zpool": {"type": "string"}, "desc": {"type": "string"},
        "bwlimit": NULLABLE_INTEGER, "active": {"type": "boolean"}, "schedule": {"type": "string"},
        "retention": {"type": "integer"}, "compression": COMPRESSION_VALUE, "fsfreeze": {"type": "boolean"},
        "keep_snapshot": {"type": "boolean"},
        "verified": dict(NULLABLE_STRING, description="When a drill last proved a backup of it (extension)"),
        "verified_age": dict(NULLABLE_INTEGER, description="Seconds since `verified`"),
        "backups": {"type": "integer", "description": "Only when extended"}}},
    "Backup": {"type": "object", "properties": {
        "hostname": {"type": "string", "description": "The hostname it was made under"},
        "vm_uuid": {"type": "string"}, "vm": dict(NULLABLE_STRING, description="The VM's current hostname"),
        "define": {"type": "string"}, "name": {"type": "string"}, "disk_id": {"type": "integer"},
        "type": {"type": "integer", "enum": sorted(facts.TYPES)}, "node": {"type": "string"},
        "zpool": {"type": "string"}, "created": {"type": "string"},
        "status": {"type": "integer", "enum": sorted(facts.STATUSES),
                   "description": ", ".join("%d %s" % item for item in sorted(facts.STATUSES.items()))},
        "size": NULLABLE_INTEGER, "time": {"type": "number", "nullable": True}, "file_path": NULLABLE_STRING,
        "note": NULLABLE_STRING,
        "verified": dict(NULLABLE_STRING, description="When a restore drill last proved it (extension)"),
        "verify_status": dict(NULLABLE_STRING, description="passed or failed: the last drill (extension)"),
        "checksum": dict(NULLABLE_STRING, description="File backups only")}},
}
REF = {name: {"$ref": "#/components/schemas/" + name} for name in SCHEMAS}
RESULTS = {
    "definitions": {"oneOf": [{"type": "array", "items": {"type": "string"}},
                              {"type": "array", "items": REF["Definition"]}]},
    "definition": REF["Definition"],
    "backups": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "array", "items": REF["Backup"]}]},
    "backup": REF["Backup"],
    "message": {"type": "object", "properties": {"message": {"type": "string"}}, "nullable": True},
    "null": {"nullable": True},
    "task_ids": {"type": "array", "items": {"type": "string"}},
    "task_log": {"type": "array", "items": {"type": "object", "properties": dict(
        {k: {} for k in ("time", "task", "status", "username", "msg", "detail", "object_name", "task_type")},
        outcome=OUTCOME)}},
    "task_info": {"type": "object", "properties": {"outcome": dict(OUTCOME, nullable=True)}},
    "job_result": {"type": "object", "nullable": True, "properties": {
        "returncode": {"type": "integer"}, "message": {"type": "string"}, "detail": {}}},
}

STATUSES = [status.value for status in TaskStatus]
DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
LOGIN = {"type": "object", "properties": {"token": {"type": "string"}, "expires": {"type": "number"},
                                          "detail": {"type": "string"}}, "required": ["token", "expires", "detail"]}
DONE = {"type": "object", "properties": {"task_id": {"type": "string"}, "done": {"type": "boolean"}},
        "required": ["task_id", "done"]}
# Answers that are neither the task envelope nor a refusal ({"detail"}).
SHAPES = {("/metrics", 200): ("text/plain", {"type": "string"}),
          ("/openapi.json", 200): ("application/json", {"type": "object"}),
          ("/accounts/login", 200): ("application/json", LOGIN),
          ("/accounts/login", 400): ("application/json", DETAIL),
          ("/accounts/logout", 200): ("application/json", DETAIL),
          ("/task/{task_id}/done", 200): ("application/json", DONE)}
REFUSALS = (403, 404, 406, 409, 412, 413, 417, 423, 428, 429)


def envelope(status: str, result: dict) -> dict:
    return {"type": "object", "properties": {"task_id": {"type": "string"}, "status": {"type": "string",
            "enum": [status]}, "result": result}, "required": ["task_id", "status", "result"]}


def _response(route: Route, code: int) -> tuple[str, dict]:
    if (route.path, code) in SHAPES:
        return SHAPES[route.path, code]
    if code in REFUSALS:
        return "application/json", DETAIL
    if code == 201 and route.method != "POST" or code == 201 and route.result is None:  # a job started
        return "application/json", envelope(TaskStatus.PENDING.value, {"nullable": True})
    if code == 400:  # field -> messages, non_field_errors, or (a job's status) what failed
        return "application/json", envelope(TaskStatus.FAILURE.value, {})
    if route.path == "/task/{task_id}/status":
        return "application/json", envelope(TaskStatus.SUCCESS.value, RESULTS["job_result"])
    return "application/json", envelope(TaskStatus.SUCCESS.value, RESULTS[route.result] if route.result else {})


def operation(route: Route) -> dict:
    in_query = route.method == "GET"
    op: dict = {"summary": route.summary, "operationId": "%s_%s" % (route.method.lower(), route.handler),
                "parameters": [{"name": name, "in": "path", "required": True, "description": PATH_PARAMS[name],
                                "schema": {"type": "string"}} for name in route.path_params],
                "responses": {}}
    if route.public:
        op["security"] = []
    if in_query:
        op["parameters"] += [{"name": p.name, "in": "query", "required": p.required, "description": p.description,
                              "schema": schema_of(p, True)} for p in route.params]
    elif route.params:
        body = {"type": "object", "properties": {p.name: dict(schema_of(p, False), description=p.description)
                                                 for p in route.params}}
        required = [p.name for p in route.params if p.required]
        if required:
            body["required"] = required
        op["requestBody"] = {"content": {"application/json": {"schema": body}}}
    for code, description in sorted(route.responses.items()):
        media, schema = _response(route, code)
        op["responses"][str(code)] = {"description": description, "content": {media: {"schema": schema}}}
    return op


def spec(routes: Iterable[Route] = ROUTES) -> dict:
    """The document for the given routes (those an application registered; by default every route)."""
    paths: dict = {}
    for route in routes:
        paths.setdefault("/api" + route.path, {})[route.method.lower()] = operation(route)
    return {"openapi": "3.0.3",
            "info": {"title": "vmbackup VM backup API (Danube Cloud compatible)", "version": __version__},
            "components": {"schemas": SCHEMAS, "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                          "description": "Token <token from /api/accounts/login/>"},
                "apikey": {"type": "apiKey", "in": "header", "name": "ES-API-KEY"}}},
            "security": [{"token": []}, {"apikey": []}], "paths": paths}
