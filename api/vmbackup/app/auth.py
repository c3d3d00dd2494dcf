"""Users, passwords (argon2id), tokens that expire, long-lived API keys, and login throttling."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

import argon2

from vmbackup.domain import errors, validation
from vmbackup.store.store import Ambiguous, Store

TOKEN_LIFETIME = 3600
TOKENS_PER_USER = 50  # a login beyond it revokes that user's oldest token
# OWASP's Password Storage Cheat Sheet, argon2id: 19 MiB, 2 iterations, 1 lane (about 70 ms here).
_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
# Names the service itself acts under (tasks it starts are the scheduler's): nobody may log in as one.
RESERVED_USERNAMES = frozenset({"scheduler", "system", "vmbackup"})


def hash_password(password: str) -> str:
    """An argon2id hash (salted, slow), so a stolen store does not give passwords."""
    return _HASHER.hash(password)


def check_password(password: str, stored: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _HASHER.check_needs_rehash(stored)


def secret_hash(secret: str) -> str:
    """Tokens and keys are stored hashed: the store never holds one that works."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Throttle:
    """Failed logins per key (a username, a client address): after `free` failures in a row, each further
    attempt must wait twice as long as the one before (capped), or is refused with 429 and Retry-After."""

    def __init__(self, free: int = 5, first_delay: float = 1.0, max_delay: float = 300.0, max_keys: int = 10000):
        self.free, self.first_delay, self.max_delay, self.max_keys = free, first_delay, max_delay, max_keys
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures in a row, time of the last)
        self._lock = threading.Lock()

    def wait(self, key: str, now: float) -> float:
        """Seconds `key` must still wait before its next attempt (0: it may try now)."""
        with self._lock:
            count, last = self._failures.get(key, (0, 0.0))
        if count < self.free:
            return 0.0
        delay = min(self.first_delay * 2 ** (count - self.free), self.max_delay)
        return max(0.0, last + delay - now)

    def failed(self, key: str, now: float) -> None:
        with self._lock:
            count, _last = self._failures.pop(key, (0, 0.0))
            if len(self._failures) >= self.max_keys:  # forget the oldest: memory stays bounded
                del self._failures[next(iter(self._failures))]
            self._failures[key] = (count + 1, now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class Auth:
    """Who a request is, from `Authorization: Token ...` or `ES-API-KEY`."""

    def __init__(self, store: Store, token_lifetime: int = TOKEN_LIFETIME, throttle: Throttle | None = None,
                 address_throttle: Throttle | None = None, tokens_per_user: int = TOKENS_PER_USER):
        self.store = store
        self.token_lifetime = token_lifetime
        # Failures are counted per (user, address): a user locked out from one address still logs in from
        # another, so nobody keeps the admin out by failing a login now and then. An address has a ceiling of
        # its own over every user it tries (password spraying).
        self.throttle = throttle or Throttle()
        self.address_throttle = address_throttle or Throttle(free=30)
        self.tokens_per_user = tokens_per_user
        # Checked when the user does not exist, so that an unknown name costs as long as a wrong password.
        self._dummy_hash = hash_password(secrets.token_hex(16))

    def add_user(self, username: str, password: str, admin: bool = False, vms: list[str] | None = None) -> str:
        """Create or replace a user; returns its new API key (shown once). Replacing a user (a new password)
        ends every token it had."""
        if not username or len(username) > 150 or not set(username) <= USERNAME_CHARS:
            raise ValueError("user name: 1 to 150 letters, digits, '-', '_' and '.'")
        if username.lower() in RESERVED_USERNAMES:
            raise ValueError("user name: %s is reserved for the service's own jobs (%s); choose another"
                             % (username, ", ".join(sorted(RESERVED_USERNAMES))))
        if len(password) < 8:
            raise ValueError("password: at least 8 characters")
        key = secrets.token_hex(24)
        hashed = hash_password(password)
        owned = [self.vm_uuid(name) for name in vms or []]
        with self.store.lock:
            existing = self.store.get_user(username)
            user_id = existing["id"] if existing else max([u["id"] for u in self.store.users()] + [0]) + 1
            self.store.save_user({"id": user_id, "username": username, "password": hashed, "is_admin": admin,
                                  "vms": owned, "api_key_hash": secret_hash(key)})
            if existing:
                self.store.delete_tokens(lambda t: t.get("username") == username)
        return key

    def vm_uuid(self, name: str) -> str:
        """An owner is given VMs by uuid: a hostname is resolved now (another VM may get it later)."""
        if validation.is_uuid(name):
            return name.lower()
        try:
            vm = self.store.get_vm(name)
        except Ambiguous as clash:
            raise ValueError("--vm %s: %d VMs have that hostname (%s); give the uuid"
                             % (name, len(clash.uuids), ", ".join(clash.uuids))) from None
        if vm is None:
            raise ValueError("--vm %s: no VM has that hostname (run `vmbackup discover` first, or give the uuid)"
                             % name)
        return vm["uuid"]

    def login(self, username: str, password: str, client: str = "") -> dict:
        """A new token for `username`, or LoginFailed; `client`: the address the attempt comes from."""
        now = time.time()
        pair = "%s\0%s" % (username, client)
        wait = max(self.throttle.wait(pair, now), self.address_throttle.wait(client, now))
        if wait > 0:
            raise errors.TooManyRequests(wait)
        user = self.store.get_user(username or "")
        stored = user["password"] if user else self._dummy_hash
        if not check_password(password or "", stored) or user is None:
            self.throttle.failed(pair, now)
            self.address_throttle.failed(client, now)
            raise errors.LoginFailed("Unable to log in with provided credentials.")
        self.throttle.succeeded(pair)
        token = secrets.token_hex(20)
        expires = now + self.token_lifetime
        with self.store.lock:
            self.store.delete_tokens(lambda t: t.get("expires", 0) < now)
            mine = sorted((t for t in self.store.user_tokens(username)), key=lambda t: t.get("expires", 0))
            for old in mine[:max(0, len(mine) - self.tokens_per_user + 1)]:
                self.store.delete_token(old["token_hash"])
            self.store.save_token({"token_hash": secret_hash(token), "username": username, "expires": expires})
            if needs_rehash(user["password"]):
                current = self.store.get_user(username)
                if current and current["password"] == user["password"]:
                    self.store.save_user(dict(current, password=hash_password(password)))
        return {"token": token, "expires": expires}

    def logout(self, token: str) -> None:
        self.store.delete_token(secret_hash(token))

    def authenticate(self, authorization: str | None, api_key: str | None) -> dict:
        """The user a request is made by; raise NotAuthenticated otherwise."""
        if api_key:
            wanted = secret_hash(api_key)
            user = self.store.find_user(lambda u: hmac.compare_digest(u.get("api_key_hash", ""), wanted))
            if user is None:
                raise errors.NotAuthenticated(errors.INVALID_TOKEN)
            return user
        if not authorization:
            raise errors.NotAuthenticated(errors.NO_CREDENTIALS)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "token" or not token.strip():
            raise errors.NotAuthenticated(errors.INVALID_TOKEN)
        record = self.store.get_token(secret_hash(token.strip()))
        if record is None or record["expires"] < time.time():
            raise errors.NotAuthenticated(errors.INVALID_TOKEN)
        user = self.store.get_user(record["username"])
        if user is None:
            raise errors.NotAuthenticated(errors.INVALID_TOKEN)
        return user


def token_of(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("token "):
        return authorization.split(" ", 1)[1].strip()
    return None
