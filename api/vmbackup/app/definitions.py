"""Backup definitions: what is backed up where, when and how long it is kept; listed, read, created, changed
and deleted with their checks in the order API.md gives them."""

from __future__ import annotations

from vmbackup.app.access import Access
from vmbackup.domain import errors, facts, validation
from vmbackup.domain.clock import iso, now, parse
from vmbackup.store.store import Store

DEFINITION_FIELDS = ["hostname", "vm_uuid", "name", "disk_id", "type", "node", "zpool", "desc", "bwlimit", "active",
                     "schedule", "retention", "compression", "fsfreeze", "keep_snapshot"]
DEFINITION_ORDER_ALL = ["name", "disk_id", "hostname", "created"]
DEFINITION_ORDER_VM = ["name", "disk_id", "created"]


class Definitions:
    """The definition use cases: view, list, get, create, update, delete."""

    def __init__(self, store: Store, access: Access):
        self.store = store
        self.access = access

    def view(self, definition: dict, extended: bool) -> dict:
        view = {k: definition.get(k) for k in DEFINITION_FIELDS}
        view["keep_snapshot"] = definition.get("keep_snapshot", True)  # additive: older records keep the snapshot
        # Additive: when a drill last proved a backup of this definition restorable, and how long ago.
        view["verified"] = definition.get("verified")
        view["verified_age"] = int((now() - parse(view["verified"])).total_seconds()) if view["verified"] else None
        if extended:
            view["backups"] = sum(1 for b in self.store.backups(vm_uuid=definition["vm_uuid"])
                                  if b["define"] == definition["name"] and b["disk_id"] == definition["disk_id"])
        return view

    def list(self, user: dict, params: dict, vm_name: str | None = None) -> list:
        access = self.access
        extended = access.flag(params, "extended")
        full = access.flag(params, "full") or extended
        if vm_name is None:
            keys = validation.order_by(params.get("order_by"), DEFINITION_ORDER_ALL, "hostname,-created")
            found = [d for d in self.store.definitions() if access.may_see(user, d["vm_uuid"], d["hostname"])]
        else:
            vm = access.vm_for(user, vm_name)
            keys = validation.order_by(params.get("order_by"), DEFINITION_ORDER_VM, "-created")
            found = self.store.definitions(vm["uuid"])
            if params.get("disk_id") not in (None, ""):
                disk = access.disk(vm, params["disk_id"])
                found = [d for d in found if d["disk_id"] == disk["disk_id"]]
        found = validation.sort(found, keys)
        if not full:
            return [d["name"] for d in found]
        return [self.view(d, extended) for d in found]

    def get(self, user: dict, vm_name: str, name: str, params: dict) -> dict:
        vm = self.access.vm_for(user, vm_name)
        disk = self.access.disk(vm, params.get("disk_id", 1) if params.get("disk_id") not in (None, "") else 1)
        definition = self.store.get_definition(vm["uuid"], disk["disk_id"], name)
        if definition is None:
            raise errors.NotFound(errors.DEFINITION_NOT_FOUND)
        return self.view(definition, self.access.flag(params, "extended"))

    def _writable_vm(self, user: dict, vm_name: str, data: dict) -> tuple[dict, dict]:
        """Checks shared by POST/PUT/DELETE of a definition: admin, VM, node, VM state, disk."""
        access = self.access
        access.require_admin(user)
        vm = access.vm_for(user, vm_name)
        access.check_node(vm["node"])
        access.check_vm_operational(vm)
        disk_id = data.get("disk_id", 1) if data.get("disk_id") not in (None, "") else 1
        return vm, access.disk(vm, disk_id)

    def create(self, user: dict, vm_name: str, name: str, data: dict) -> dict:
        vm, disk = self._writable_vm(user, vm_name, data)
        validation.check_definition_name(name)
        if self.store.get_definition(vm["uuid"], disk["disk_id"], name):
            raise errors.NotAcceptable(errors.DEFINITION_EXISTS)
        fields = validation.Fields(data)
        preset = validation.predefined_defaults(name)
        definition = {
            "hostname": vm["hostname"], "vm_uuid": vm["uuid"], "name": name, "disk_id": disk["disk_id"],
            "type": fields.integer("type", 1, low=1, high=2),
            "node": fields.string("node", required=True),
            "zpool": fields.string("zpool", facts.layout.DEFAULT_POOL),
            "schedule": fields.string("schedule", preset[0] if preset else None, required=preset is None),
            "retention": fields.integer("retention", preset[1] if preset else None, required=preset is None,
                                        low=0, high=65536),
            "active": fields.boolean("active", True),
            "compression": self._compression(fields, 0),
            "bwlimit": fields.integer("bwlimit", None, low=0, nullable=True) or None,
            "desc": fields.string("desc", "", max_length=128),
            "fsfreeze": fields.boolean("fsfreeze", False),
            "keep_snapshot": fields.boolean("keep_snapshot", True),
            "created": iso(now()),
        }
        definition["last_due"] = definition["created"]  # the scheduler's first run is the next due time
        self._check(fields, definition)
        fields.raise_if_any()
        self.store.save_definition(definition)
        return self.view(definition, False)

    def _check(self, fields: validation.Fields, definition: dict) -> None:
        """The rules of a definition's fields; raises 423 when the backup node's pools are not known yet
        (a pool can only be accepted once the node has said it has it)."""
        if definition["schedule"] is not None and not validation.valid_schedule(definition["schedule"]):
            fields.fail("schedule", "Invalid cron format: use 5 fields in UTC, e.g. 30 4 * * 6.")
        validation.check_desc(fields, definition["desc"])
        if definition["zpool"] is not None and not validation.is_pool_name(definition["zpool"]):
            fields.fail("zpool", "Enter a valid pool name: a letter, then letters, digits or '_.:-'.")
        if definition["node"] and "node" not in fields.errors:
            node = self.store.get_node(definition["node"])
            if node is None or "backup" not in node.get("roles", []):
                fields.fail("node", "Object with name=%s does not exist or is not a backup node." % definition["node"])
            elif "zpool" not in fields.errors and definition["zpool"]:
                if not isinstance(node.get("pools"), dict):
                    raise errors.Locked(errors.NODE_NOT_OPERATIONAL)
                if definition["zpool"] not in node["pools"]:
                    fields.fail("zpool", "Storage %s does not exist on node %s." % (definition["zpool"], node["name"]))

    @staticmethod
    def _compression(fields: validation.Fields, default):
        """0-3 as in the original API, or (an extension) the names the collection knows, e.g. zstd."""
        if not fields.has("compression"):
            return default
        try:
            return facts.compression(fields.data["compression"])
        except ValueError:
            fields.fail("compression", "Select a valid choice: %s."
                        % ", ".join(facts.API_COMPRESSIONS + facts.COMPRESSION_NAMES))
            return default

    def update(self, user: dict, vm_name: str, name: str, data: dict) -> dict:
        vm, disk = self._writable_vm(user, vm_name, data)
        # Read, change and write under the store's lock: the scheduler writes `last_due` and `last_drill` of the
        # same record (under the lock too); a copy read before and written after it would undo them.
        with self.store.lock:
            return self._update(vm, disk, name, data)

    def _update(self, vm: dict, disk: dict, name: str, data: dict) -> dict:
        definition = self.store.get_definition(vm["uuid"], disk["disk_id"], name)
        if definition is None:
            raise errors.NotFound(errors.DEFINITION_NOT_FOUND)
        fields = validation.Fields(data)
        if fields.has("type") and fields.integer("type") != definition["type"]:
            fields.fail("type", "The backup type cannot be changed.")
        changes = {
            "schedule": fields.string("schedule", definition["schedule"]),
            "retention": fields.integer("retention", definition["retention"], low=0, high=65536),
            "active": fields.boolean("active", definition["active"]),
            "compression": self._compression(fields, definition["compression"]),
            "bwlimit": (fields.integer("bwlimit", None, low=0, nullable=True) or None) if fields.has("bwlimit")
            else definition["bwlimit"],
            "desc": fields.string("desc", definition["desc"], max_length=128),
            "node": fields.string("node", definition["node"]),
            "zpool": fields.string("zpool", definition["zpool"]),
            "fsfreeze": fields.boolean("fsfreeze", definition["fsfreeze"]),
            "keep_snapshot": fields.boolean("keep_snapshot", definition.get("keep_snapshot", True)),
        }
        updated = dict(definition, **changes)
        if updated["schedule"] != definition["schedule"]:
            updated["last_due"] = iso(now())  # the new schedule counts from now, with no catch-up
        self._check(fields, updated)
        fields.raise_if_any()
        self.store.save_definition(updated)
        return self.view(updated, False)

    def delete(self, user: dict, vm_name: str, name: str, data: dict) -> None:
        vm, disk = self._writable_vm(user, vm_name, data)
        if self.store.get_definition(vm["uuid"], disk["disk_id"], name) is None:
            raise errors.NotFound(errors.DEFINITION_NOT_FOUND)
        self.store.delete_definition(vm["uuid"], disk["disk_id"], name)
