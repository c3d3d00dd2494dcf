"""Who may do what, and which VM, disk or node a request names: the checks every use case starts with.

A VM is reached by hostname or uuid; one the user may not see is answered as if it did not exist (404), and so
is a hostname several VMs have (their uuids are named instead, as far as the user may see them).
"""

from __future__ import annotations

from vmbackup.domain import errors, validation
from vmbackup.store.store import Ambiguous, Store


class Access:
    """Permissions, the VM / disk / node of a request and whether it is operational, the query's flags."""

    def __init__(self, store: Store):
        self.store = store

    # -- permissions ----------------------------------------------------------------------------
    @staticmethod
    def require_admin(user: dict) -> None:
        if not user.get("is_admin"):
            raise errors.PermissionDenied()

    @staticmethod
    def may_see(user: dict, vm_uuid: str, hostname: str | None = None) -> bool:
        """Admins see every VM; an owner the VMs whose uuids it was given (a hostname is not an identity:
        another VM may be given that name later)."""
        return bool(user.get("is_admin")) or vm_uuid in set(user.get("vms") or [])

    def vm_for(self, user: dict, hostname_or_uuid: str) -> dict:
        """The VM, or 404 (also for VMs the user may not see, and for a hostname several VMs have)."""
        try:
            vm = self.store.get_vm(hostname_or_uuid)
        except Ambiguous as clash:
            raise self.ambiguous(user, clash.hostname, clash.uuids) from None
        if vm is None or not self.may_see(user, vm["uuid"], vm["hostname"]):
            raise errors.NotFound(errors.VM_NOT_FOUND)
        return vm

    def ambiguous(self, user: dict, hostname: str, uuids: list[str]) -> errors.NotFound:
        """The 404 for a hostname that several VMs have (or had), naming the uuids the user may see."""
        visible = [u for u in uuids if self.may_see(user, u)]
        if not visible:
            return errors.NotFound(errors.VM_NOT_FOUND)
        if len(visible) == 1 and not user.get("is_admin"):
            # An owner who sees one of them is answered as if the others did not exist.
            return errors.NotFound(errors.VM_AMBIGUOUS % (hostname, len(uuids), visible[0]))
        return errors.NotFound(errors.VM_AMBIGUOUS % (hostname, len(visible), ", ".join(visible)))

    # -- nodes and VMs --------------------------------------------------------------------------
    def node_operational(self, name: str) -> bool:
        node = self.store.get_node(name)
        return bool(node and node.get("operational"))

    def check_node(self, name: str) -> None:
        if not self.node_operational(name):
            raise errors.Locked(errors.NODE_NOT_OPERATIONAL)

    @staticmethod
    def check_vm_operational(vm: dict) -> None:
        if vm.get("state") not in ("running", "stopped", "stopping"):
            raise errors.Locked(errors.VM_NOT_OPERATIONAL)

    @staticmethod
    def disk(vm: dict, disk_id, message: str = errors.INVALID_DISK_ID) -> dict:
        try:
            number = validation.to_int(disk_id)
        except ValueError:
            raise errors.PreconditionFailed(message) from None
        for disk in vm.get("disks", []):
            if disk["disk_id"] == number:
                return disk
        raise errors.PreconditionFailed(message)

    @staticmethod
    def disk_id_param(value, default: int | None = 1) -> int | None:
        if value in (None, ""):
            return default
        try:
            return validation.to_int(value)
        except ValueError:
            raise errors.PreconditionFailed(errors.INVALID_DISK_ID) from None

    # -- the query ------------------------------------------------------------------------------
    @staticmethod
    def flag(params: dict, name: str) -> bool:
        """A boolean query parameter (`full`, `extended`): absent or empty is false, anything else must parse."""
        value = params.get(name)
        if value in (None, ""):
            return False
        try:
            return validation.to_bool(value)
        except ValueError:
            raise errors.ValidationFailed({name: ["Must be a valid boolean."]}) from None
