"""Refusals as values: one exception type per kind, mapped to HTTP status codes in one place."""

from __future__ import annotations


class ApiError(Exception):
    """A refusal answered as {"detail": message} with `status`."""

    status = 400

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class NotAuthenticated(ApiError):
    status = 403


class PermissionDenied(ApiError):
    status = 403

    def __init__(self, detail: str = "Permission denied"):
        super().__init__(detail)


class NotFound(ApiError):
    status = 404


class NotAcceptable(ApiError):
    status = 406


class Conflict(ApiError):
    status = 409


class PreconditionFailed(ApiError):
    status = 412


class ExpectationFailed(ApiError):
    status = 417


class Locked(ApiError):
    status = 423


class PreconditionRequired(ApiError):
    status = 428


class PayloadTooLarge(ApiError):
    status = 413


class TooManyRequests(ApiError):
    """Too many failed logins: answered 429 with Retry-After (seconds)."""

    status = 429

    def __init__(self, retry_after: float):
        super().__init__("Too many failed logins; try again in %d seconds." % max(1, round(retry_after)))
        self.retry_after = max(1, int(retry_after + 0.999))


class ValidationFailed(Exception):
    """Bad input, answered as a FAILURE task envelope with HTTP 400: {field: [messages]}."""

    status = 400

    def __init__(self, errors: dict[str, list[str]] | str):
        super().__init__(str(errors))
        self.errors = errors


class LoginFailed(Exception):
    """Wrong credentials: 400 {"detail": ...} on the login route."""


# Messages with one home, used by the service and the tests.
VM_NOT_FOUND = "VM not found"
# A hostname several VMs have now: the seed's message, then why and what to do.
VM_AMBIGUOUS = "VM not found: hostname %s names %d VMs (%s); use the VM's uuid"
BACKUP_NOT_FOUND = "Backup not found"
DEFINITION_NOT_FOUND = "Backup definition not found"
TASK_NOT_FOUND = "Task not found"
DEFINITION_EXISTS = "Backup definition already exists"
BACKUP_EXISTS = "Backup already exists"
TASK_NOT_CANCELABLE = "Task cannot be canceled"
VM_PENDING = "VM has pending tasks"
INVALID_DISK_ID = "Invalid disk_id"
INVALID_TARGET_DISK_ID = "Invalid target_disk_id"
INVALID_BKPNAMES = "Invalid bkpnames"
BACKUP_STATUS_NOT_OK = "VM backup status is not OK"
SIZE_LIMIT = "DC backup size limit reached"
VM_HAS_SNAPSHOTS = "VM has snapshots"
NODE_NOT_OPERATIONAL = "Node is not operational"
VM_NOT_OPERATIONAL = "VM is not operational"
VM_NOT_STOPPED = "VM is not stopped"
VM_LOCKED = "VM is locked or has slave VMs"
VM_NOT_INSTALLED = "VM is not installed"
BRAND_MISMATCH = "VM brand mismatch"
DISK_SIZE_MISMATCH = "Disk size mismatch"
NO_FREE_SPACE = "Not enough free space on target storage"
NO_CREDENTIALS = "Authentication credentials were not provided."
INVALID_TOKEN = "Invalid token."
