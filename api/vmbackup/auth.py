"""Users, passwords (salted scrypt), tokens that expire, and long-lived API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from vmbackup import errors
from vmbackup.store import Store

TOKEN_LIFETIME = 3600
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$<salt hex>$<hash hex>`: slow and salted, so a stolen store does not give passwords."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return "scrypt$%s$%s" % (salt.hex(), digest.hex())


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, salt, _digest = stored.split("$")
    except ValueError:
        return False
    return scheme == "scrypt" and hmac.compare_digest(hash_password(password, bytes.fromhex(salt)), stored)


def secret_hash(secret: str) -> str:
    """Tokens and keys are stored hashed: the store never holds one that works."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Auth:
    """Who a request is, from `Authorization: Token ...` or `ES-API-KEY`."""

    def __init__(self, store: Store, token_lifetime: int = TOKEN_LIFETIME):
        self.store = store
        self.token_lifetime = token_lifetime

    def add_user(self, username: str, password: str, admin: bool = False, vms: list[str] | None = None) -> str:
        """Create or replace a user; returns its new API key (shown once)."""
        if not username or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError("user name: letters, digits, '-', '_' and '.' only")
        if len(password) < 8:
            raise ValueError("password: at least 8 characters")
        key = secrets.token_hex(24)
        existing = self.store.get_user(username)
        users = self.store.users()
        user_id = existing["id"] if existing else max([u["id"] for u in users] + [0]) + 1
        self.store.save_user({"id": user_id, "username": username, "password": hash_password(password),
                              "is_admin": admin, "vms": list(vms or []), "api_key_hash": secret_hash(key)})
        return key

    def login(self, username: str, password: str) -> dict:
        user = self.store.get_user(username or "")
        if user is None or not check_password(password or "", user["password"]):
            raise errors.LoginFailed("Unable to log in with provided credentials.")
        token = secrets.token_hex(20)
        expires = time.time() + self.token_lifetime
        self.store.save_token({"token_hash": secret_hash(token), "username": username, "expires": expires})
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
