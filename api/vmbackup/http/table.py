"""The route table: every route of the API declared once, with what it takes and what it answers.

`routes.build_app` registers a Bottle route for each entry (its handler named by `handler`), and
`openapi.spec` describes the same entries: a route cannot be served without being described, or
described without being served (tests/test_openapi.py walks both).

Paths are under /api, in OpenAPI's form (`/vm/{hostname_or_uuid}/backup`); `routes.bottle_path` turns them
into Bottle's (`/api/vm/<hostname_or_uuid>/backup`). A `data` parameter comes from the query string of a
GET and from the JSON body (or a form, or the query string) of any other method, as `routes.params` reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vmbackup.domain import facts

# Kinds of parameter; each kind is one set of accepted forms (openapi.schema_of says which).
STRING, INTEGER, BOOLEAN, NAMES, COMPRESSION = "string", "integer", "boolean", "names", "compression"


@dataclass(frozen=True)
class Param:
    name: str
    kind: str = STRING
    required: bool = False
    description: str = ""
    default: object = None
    low: int | None = None
    high: int | None = None
    max_length: int | None = None
    nullable: bool = False  # "", "null" and "none" (or JSON null) mean no value: validation.Fields.integer


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST, PUT, DELETE
    path: str  # under /api, OpenAPI form
    handler: str  # the name of its handler in routes.build_app
    summary: str
    params: tuple[Param, ...] = ()  # the data parameters; the path's own are PATH_PARAMS
    responses: dict[int, str] = field(default_factory=dict)
    result: str | None = None  # name of the schema (openapi.RESULTS) of a SUCCESS envelope's `result`
    public: bool = False  # answered without credentials
    optional: bool = False  # registered only when the application has what it needs (metrics)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path


PATH_PARAMS = {
    "hostname_or_uuid": "VM hostname or uuid (in backup URLs: the one the backup was made under)",
    "bkpdef": "Backup definition name",
    "bkpname": "Backup name (POST: the backup definition name)",
    "task_id": "Task id",
}

DISK = Param("disk_id", INTEGER, description="Disk number/ID", default=1)
FULL = Param("full", BOOLEAN, description="Objects instead of names", default=False)
EXTENDED = Param("extended", BOOLEAN, description="Objects, with the number of backups of each definition",
                 default=False)
COMPRESSIONS = ", ".join("%s %s" % (code, facts.layout.API_COMPRESSION[code]) for code in facts.API_COMPRESSIONS)


def order_by(fields: str, default: str) -> Param:
    return Param("order_by", description="Sort fields, comma-separated, '-' for descending: %s (412 otherwise)"
                 % fields, default=default)


def definition_fields(create: bool) -> tuple[Param, ...]:
    """POST requires node, schedule and retention (schedule and retention not for the predefined names
    hourly, daily, weekly, monthly); PUT changes what it is given."""
    return (
        DISK,
        Param("type", INTEGER, description="1 dataset, 2 file; not changeable after creation", default=1 if create
              else None, low=1, high=2),
        Param("node", required=create, description="Backup node name"),
        Param("zpool", description="Pool on the backup node", default=facts.layout.DEFAULT_POOL if create else None),
        Param("schedule", description="Cron schedule in UTC, 5 fields (required unless a predefined name)"),
        Param("retention", INTEGER, description="Backups to keep, 0 keeps all (required unless a predefined name)",
              low=0, high=65536),
        Param("active", BOOLEAN, description="Schedule enabled", default=True if create else None),
        Param("compression", COMPRESSION, default=0 if create else None,
              description="File backups: %s; or (extension) a name: %s"
              % (COMPRESSIONS, ", ".join(facts.COMPRESSION_NAMES))),
        Param("bwlimit", INTEGER, description="Bytes per second; 0 or null: unlimited", low=0, nullable=True),
        Param("desc", description="Description, none of <>%$&;'\"", default="" if create else None, max_length=128),
        Param("fsfreeze", BOOLEAN, description="Freeze the guest's filesystems through its QEMU guest agent",
              default=False if create else None),
        Param("keep_snapshot", BOOLEAN, default=True if create else None,
              description="Keep the sent snapshot on the compute node between backups; false keeps only a "
              "bookmark where its ZFS has bookmarks (extension)"),
    )


DEFINITION_WRITE = {400: "FAILURE", 403: "Forbidden", 404: "VM not found / Backup definition not found",
                    412: "Invalid disk_id", 423: "Node is not operational / VM is not operational"}

ROUTES: tuple[Route, ...] = (
    # -- accounts
    Route("POST", "/accounts/login", "login", "Log in",
          (Param("username", required=True), Param("password", required=True)),
          {200: "token", 400: "wrong credentials", 413: "body too large",
           429: "too many failed logins (Retry-After says when to try again)"}, public=True),
    Route("GET", "/accounts/logout", "logout", "Log out (ends the token)", (), {200: "bye", 403: "Forbidden"}),
    # -- definitions
    Route("GET", "/vm/define/backup", "all_definitions", "List all backup definitions",
          (FULL, EXTENDED, order_by("name, disk_id, hostname, created", "hostname,-created")),
          {200: "SUCCESS", 400: "FAILURE (a parameter of the wrong type)", 403: "Forbidden",
           412: "Invalid order_by"}, result="definitions"),
    Route("GET", "/vm/{hostname_or_uuid}/define/backup", "vm_definitions", "List VM backup definitions",
          (FULL, Param("disk_id", INTEGER, description="Filter by disk number/ID"), EXTENDED,
           order_by("name, disk_id, created", "-created")),
          {200: "SUCCESS", 400: "FAILURE", 403: "Forbidden", 404: "VM not found",
           412: "Invalid disk_id / Invalid order_by"}, result="definitions"),
    Route("GET", "/vm/{hostname_or_uuid}/define/backup/{bkpdef}", "get_definition", "Show a backup definition",
          (DISK, Param("extended", BOOLEAN, description="Include the number of backups", default=False)),
          {200: "SUCCESS", 400: "FAILURE", 403: "Forbidden", 404: "VM not found / Backup definition not found",
           412: "Invalid disk_id"}, result="definition"),
    Route("POST", "/vm/{hostname_or_uuid}/define/backup/{bkpdef}", "create_definition",
          "Create a backup definition (predefined names: hourly, daily, weekly, monthly)", definition_fields(True),
          {201: "SUCCESS", 400: "FAILURE", 403: "Forbidden", 404: "VM not found",
           406: "Backup definition already exists", 412: "Invalid disk_id",
           423: "Node is not operational / VM is not operational"}, result="definition"),
    Route("PUT", "/vm/{hostname_or_uuid}/define/backup/{bkpdef}", "update_definition", "Update a backup definition",
          definition_fields(False), {200: "SUCCESS", **DEFINITION_WRITE}, result="definition"),
    Route("DELETE", "/vm/{hostname_or_uuid}/define/backup/{bkpdef}", "delete_definition",
          "Delete a backup definition (its backups stay)", (DISK,), {200: "SUCCESS", **DEFINITION_WRITE},
          result="null"),
    # -- backups
    Route("GET", "/vm/{hostname_or_uuid}/backup", "list_backups", "List VM backups",
          (FULL, Param("disk_id", INTEGER, description="Filter by original disk number/ID"),
           Param("define", description="Filter by backup definition"),
           order_by("name, disk_id, size, time, created", "-created")),
          {200: "SUCCESS", 400: "FAILURE", 403: "Forbidden", 404: "VM not found (a hostname several VMs had)",
           412: "Invalid disk_id / Invalid order_by"}, result="backups"),
    Route("DELETE", "/vm/{hostname_or_uuid}/backup", "delete_backups", "Delete several backups",
          (Param("bkpnames", NAMES, required=True, description="Backup names: a list, or one string of names "
                 "separated by commas or spaces"),
           Param("disk_id", INTEGER, description="Only backups of this original disk")),
          {200: "SUCCESS (only LOST backups: removed from the records)", 201: "PENDING", 403: "Forbidden",
           404: "Backup not found", 412: "Invalid bkpnames / Invalid disk_id", 417: "VM backup status is not OK",
           423: "Node is not operational / VM is not operational"}, result="message"),
    Route("GET", "/vm/{hostname_or_uuid}/backup/{bkpname}", "get_backup", "Show a backup",
          (Param("disk_id", INTEGER, description="Original disk number/ID", default=1),),
          {200: "SUCCESS", 403: "Forbidden", 404: "Backup not found", 412: "Invalid disk_id"}, result="backup"),
    Route("POST", "/vm/{hostname_or_uuid}/backup/{bkpname}", "create_backup",
          "Create a backup ({bkpname} is the definition)",
          (DISK, Param("note", description="Backup comment", max_length=128)),
          {201: "PENDING", 400: "FAILURE", 403: "Forbidden", 404: "VM not found / Backup definition not found",
           406: "Backup already exists", 409: "VM has pending tasks", 412: "Invalid disk_id",
           417: "DC backup size limit reached", 423: "Node is not operational / VM is not operational",
           428: "VM is not installed"}),
    Route("PUT", "/vm/{hostname_or_uuid}/backup/{bkpname}", "put_backup",
          "Restore a backup, or with `note` only update its note",
          (Param("disk_id", INTEGER, description="Original disk number/ID", default=1),
           Param("target_hostname_or_uuid", required=True, description="Target VM (restore)"),
           Param("target_disk_id", INTEGER, required=True, description="Target disk (restore)"),
           Param("force", BOOLEAN, description="Drop the target disk's snapshots (restore)", default=True),
           Param("note", description="New note: given, the call updates the note and restores nothing",
                 max_length=128)),
          {200: "SUCCESS (note)", 201: "PENDING", 400: "FAILURE", 403: "Forbidden",
           404: "Backup not found / VM not found", 409: "VM has pending tasks",
           412: "Invalid disk_id / Invalid target_disk_id", 417: "VM backup status is not OK / VM has snapshots",
           423: "Node is not operational / VM is not operational / VM is not stopped / VM is locked or has slave VMs",
           428: "VM brand mismatch / Disk size mismatch / Not enough free space on target storage"}, result="backup"),
    Route("DELETE", "/vm/{hostname_or_uuid}/backup/{bkpname}", "delete_backup", "Delete a backup",
          (Param("disk_id", INTEGER, description="Original disk number/ID", default=1),),
          {200: "SUCCESS (a LOST backup: removed from the records)", 201: "PENDING", 400: "FAILURE",
           403: "Forbidden", 404: "Backup not found", 412: "Invalid disk_id", 417: "VM backup status is not OK",
           423: "Node is not operational"}, result="message"),
    Route("PUT", "/vm/{hostname_or_uuid}/backup/{bkpname}/verify", "verify_backup",
          "Start a restore drill of a backup on its backup node (extension; never touches the VM)",
          (Param("disk_id", INTEGER, description="Original disk number/ID", default=1),),
          {201: "PENDING", 400: "FAILURE", 403: "Forbidden", 404: "Backup not found", 412: "Invalid disk_id",
           417: "VM backup status is not OK", 423: "Node is not operational"}),
    # -- sync with the nodes
    Route("PUT", "/sync", "sync_nodes", "Compare the records with the backup nodes (extension; admin)",
          (Param("node", description="Only this backup node (default: every operational one)"),
           Param("adopt", BOOLEAN, description="Also import the backups of VMs no compute node reports",
                 default=False)),
          {201: "PENDING", 400: "FAILURE", 403: "Forbidden", 423: "Node is not operational"}),
    # -- tasks
    Route("GET", "/task", "task_list", "Pending task ids", (), {200: "SUCCESS", 403: "Forbidden"},
          result="task_ids"),
    Route("GET", "/task/log", "task_log", "Log of finished jobs", (), {200: "SUCCESS", 403: "Forbidden"},
          result="task_log"),
    Route("GET", "/task/{task_id}", "task_detail", "What a task is (while it runs: its step and bytes sent)", (),
          {200: "SUCCESS", 403: "Forbidden", 404: "Task not found"}, result="task_info"),
    Route("GET", "/task/{task_id}/status", "task_status", "A task's status", (),
          {200: "SUCCESS", 201: "PENDING", 400: "FAILURE", 403: "Forbidden", 404: "Task not found"},
          result="job_result"),
    Route("GET", "/task/{task_id}/done", "task_done", "Whether a task ended", (),
          {200: "done", 403: "Forbidden", 404: "Task not found"}),
    Route("PUT", "/task/{task_id}/cancel", "task_cancel", "Cancel a running job", (),
          {200: "SUCCESS", 403: "Forbidden", 404: "Task not found", 406: "Task cannot be canceled"},
          result="message"),
    # -- extensions: monitoring, this description
    Route("GET", "/metrics", "get_metrics", "Metrics for Prometheus (an owner gets its own VMs' series only)", (),
          {200: "Prometheus text exposition format", 403: "Forbidden"}, optional=True),
    Route("GET", "/openapi.json", "openapi", "This description (OpenAPI 3.0)", (), {200: "OpenAPI document"},
          public=True),
)
