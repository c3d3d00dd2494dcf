"""The OpenAPI description of every route: one table of routes, parameters and responses."""

from __future__ import annotations

from vmbackup import __version__

B, INT, S, A = "boolean", "integer", "string", "array"
VM = ("hostname_or_uuid", "path", S, True, "VM hostname or uuid (for backups: the original one)")
DEF = ("bkpdef", "path", S, True, "Backup definition name")
BKP = ("bkpname", "path", S, True, "Backup name")
TASK = ("task_id", "path", S, True, "Task id")
DISK = ("disk_id", "data", INT, False, "Disk number/ID (default: 1)")
DEFINITION_DATA = [
    DISK, ("type", "data", INT, False, "1 dataset, 2 file (default: 1)"),
    ("node", "data", S, True, "Backup node name"), ("zpool", "data", S, False, "Pool on the backup node (zones)"),
    ("schedule", "data", S, True, "Cron schedule in UTC"), ("retention", "data", INT, True, "Backups to keep"),
    ("active", "data", B, False, "Schedule enabled (true)"), ("compression", "data", INT, False, "0-3 (0)"),
    ("bwlimit", "data", INT, False, "Bytes per second (null: unlimited)"), ("desc", "data", S, False, "Description"),
    ("fsfreeze", "data", B, False, "Freeze guest filesystems (false)"),
    ("keep_snapshot", "data", B, False, "Keep the sent snapshot on the compute node between backups (true); false "
     "keeps only a bookmark where its ZFS has bookmarks (extension)")]
LIST = [("full", "data", B, False, "Objects instead of names"), ("order_by", "data", S, False, "Sort fields")]

# path, method, summary, parameters, {status: description}
ROUTES = [
    ("/accounts/login", "post", "Log in", [("username", "data", S, True, ""), ("password", "data", S, True, "")],
     {200: "token", 400: "wrong credentials", 413: "body too large",
      429: "too many failed logins (Retry-After says when to try again)"}),
    ("/accounts/logout", "get", "Log out", [], {200: "bye", 403: "Forbidden"}),
    ("/vm/define/backup", "get", "List all backup definitions",
     LIST + [("extended", "data", B, False, "Include backup counts")],
     {200: "SUCCESS", 400: "FAILURE (a parameter of the wrong type)", 403: "Forbidden",
      412: "Invalid order_by"}),
    ("/vm/{hostname_or_uuid}/define/backup", "get", "List VM backup definitions",
     [VM, DISK] + LIST + [("extended", "data", B, False, "")],
     {200: "SUCCESS", 400: "FAILURE", 403: "Forbidden", 404: "VM not found", 412: "Invalid disk_id"}),
    ("/vm/{hostname_or_uuid}/define/backup/{bkpdef}", "get", "Show a backup definition",
     [VM, DEF, DISK, ("extended", "data", B, False, "")],
     {200: "SUCCESS", 400: "FAILURE", 403: "Forbidden", 404: "VM not found / Backup definition not found",
      412: "Invalid disk_id"}),
    ("/vm/{hostname_or_uuid}/define/backup/{bkpdef}", "post", "Create a backup definition", [VM, DEF] + DEFINITION_DATA,
     {201: "SUCCESS", 400: "FAILURE", 403: "Forbidden", 404: "VM not found", 406: "Backup definition already exists",
      412: "Invalid disk_id", 423: "Node is not operational / VM is not operational"}),
    ("/vm/{hostname_or_uuid}/define/backup/{bkpdef}", "put", "Update a backup definition", [VM, DEF] + DEFINITION_DATA,
     {200: "SUCCESS", 400: "FAILURE", 403: "Forbidden", 404: "VM not found / Backup definition not found",
      412: "Invalid disk_id", 423: "Node is not operational / VM is not operational"}),
    ("/vm/{hostname_or_uuid}/define/backup/{bkpdef}", "delete", "Delete a backup definition", [VM, DEF, DISK],
     {200: "SUCCESS", 400: "FAILURE", 403: "Forbidden", 404: "VM not found / Backup definition not found",
      412: "Invalid disk_id", 423: "Node is not operational / VM is not operational"}),
    ("/vm/{hostname_or_uuid}/backup", "get", "List VM backups",
     [VM, DISK, ("define", "data", S, False, "Filter by definition")] + LIST,
     {200: "SUCCESS", 400: "FAILURE", 403: "Forbidden", 404: "VM not found (a hostname several VMs had)",
      412: "Invalid disk_id / Invalid order_by"}),
    ("/vm/{hostname_or_uuid}/backup", "delete", "Delete several backups",
     [VM, ("bkpnames", "data", A, True, "Backup names")],
     {200: "SUCCESS", 201: "PENDING", 403: "Forbidden", 404: "Backup not found", 412: "Invalid bkpnames",
      417: "VM backup status is not OK", 423: "Node is not operational / VM is not operational"}),
    ("/vm/{hostname_or_uuid}/backup/{bkpname}", "get", "Show a backup", [VM, BKP, DISK],
     {200: "SUCCESS", 403: "Forbidden", 404: "Backup not found", 412: "Invalid disk_id"}),
    ("/vm/{hostname_or_uuid}/backup/{bkpname}", "post", "Create a backup ({bkpname} is the definition)",
     [VM, BKP, DISK, ("note", "data", S, False, "Backup comment")],
     {201: "PENDING", 400: "FAILURE", 403: "Forbidden", 404: "VM not found / Backup definition not found",
      406: "Backup already exists", 409: "VM has pending tasks", 412: "Invalid disk_id",
      417: "DC backup size limit reached", 423: "Node is not operational / VM is not operational",
      428: "VM is not installed"}),
    ("/vm/{hostname_or_uuid}/backup/{bkpname}", "put", "Restore a backup, or with `note` update its note",
     [VM, BKP, DISK, ("target_hostname_or_uuid", "data", S, True, "Target VM"),
      ("target_disk_id", "data", INT, True, "Target disk"), ("force", "data", B, False, "Drop snapshots (true)"),
      ("note", "data", S, False, "New note (no restore)")],
     {200: "SUCCESS (note)", 201: "PENDING", 400: "FAILURE", 403: "Forbidden", 404: "Backup not found / VM not found",
      409: "VM has pending tasks", 412: "Invalid disk_id / Invalid target_disk_id",
      417: "VM backup status is not OK / VM has snapshots",
      423: "Node is not operational / VM is not operational / VM is not stopped / VM is locked or has slave VMs",
      428: "VM brand mismatch / Disk size mismatch / Not enough free space on target storage"}),
    ("/vm/{hostname_or_uuid}/backup/{bkpname}", "delete", "Delete a backup", [VM, BKP, DISK],
     {200: "SUCCESS", 201: "PENDING", 400: "FAILURE", 403: "Forbidden", 404: "Backup not found",
      412: "Invalid disk_id", 417: "VM backup status is not OK", 423: "Node is not operational"}),
    ("/task", "get", "Pending task ids", [], {200: "SUCCESS", 403: "Forbidden"}),
    ("/task/log", "get", "Log of finished jobs", [], {200: "SUCCESS", 403: "Forbidden"}),
    ("/task/{task_id}", "get", "What a task is", [TASK], {200: "SUCCESS", 403: "Forbidden", 404: "Task not found"}),
    ("/task/{task_id}/status", "get", "A task's status", [TASK],
     {200: "SUCCESS", 201: "PENDING", 400: "FAILURE", 403: "Forbidden", 404: "Task not found"}),
    ("/task/{task_id}/done", "get", "Whether a task ended", [TASK],
     {200: "done", 403: "Forbidden", 404: "Task not found"}),
    ("/task/{task_id}/cancel", "put", "Cancel a running job", [TASK],
     {200: "SUCCESS", 403: "Forbidden", 404: "Task not found", 406: "Task cannot be canceled"}),
    ("/metrics", "get", "Metrics for Prometheus (an owner gets its own VMs' series only)", [],
     {200: "Prometheus text exposition format", 403: "Forbidden"}),
]

ENVELOPE = {"type": "object", "properties": {"task_id": {"type": S}, "status": {"type": S,
            "enum": ["SUCCESS", "FAILURE", "PENDING"]}, "result": {}}, "required": ["task_id", "status", "result"]}
DETAIL = {"type": "object", "properties": {"detail": {"type": S}}, "required": ["detail"]}
LOGIN = {"type": "object", "properties": {"token": {"type": S}, "expires": {"type": "number"}, "detail": {"type": S}},
         "required": ["token", "expires", "detail"]}
DONE = {"type": "object", "properties": {"task_id": {"type": S}, "done": {"type": B}}, "required": ["task_id", "done"]}
# Responses that are not the task envelope: refusals ({"detail"}), and a few routes of their own.
TEXT = {"type": S}
SHAPES = {("/metrics", 200): TEXT,
          ("/accounts/login", 200): LOGIN, ("/accounts/login", 400): DETAIL, ("/accounts/logout", 200): DETAIL,
          ("/task/{task_id}/done", 200): DONE}
MEDIA = {("/metrics", 200): "text/plain"}  # every other answer is JSON
REFUSALS = (403, 404, 406, 409, 412, 413, 417, 423, 428, 429)


def _operation(path: str, method: str, summary: str, params: list, responses: dict) -> dict:
    location = "query" if method == "get" else None
    op = {"summary": summary, "operationId": "%s %s" % (method, summary), "parameters": [], "responses": {}}
    body = {}
    required = []
    for name, where, kind, req, desc in params:
        schema = {"type": kind} if kind != A else {"type": A, "items": {"type": S}}
        if where == "path" or location:
            op["parameters"].append({"name": name, "in": where if where == "path" else "query",
                                     "required": req if where == "path" else False, "description": desc,
                                     "schema": {"type": S} if where != "path" and kind != S else schema})
        else:
            body[name] = dict(schema, description=desc)
            if req:
                required.append(name)
    if body:
        op["requestBody"] = {"content": {"application/json": {"schema": {
            "type": "object", "properties": body, "required": required} if required else {
            "type": "object", "properties": body}}}}
    for code, desc in responses.items():
        shape = SHAPES.get((path, code)) or (DETAIL if code in REFUSALS else ENVELOPE)
        media = MEDIA.get((path, code), "application/json")
        op["responses"][str(code)] = {"description": desc, "content": {media: {"schema": shape}}}
    return op


def spec() -> dict:
    paths: dict = {}
    for path, method, summary, params, responses in ROUTES:
        paths.setdefault("/api" + path, {})[method] = _operation(path, method, summary, params, responses)
    return {"openapi": "3.0.3",
            "info": {"title": "vmbackup VM backup API (Danube Cloud compatible)", "version": __version__},
            "components": {"securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                          "description": "Token <token from /api/accounts/login/>"},
                "apikey": {"type": "apiKey", "in": "header", "name": "ES-API-KEY"}}},
            "security": [{"token": []}, {"apikey": []}], "paths": paths}
