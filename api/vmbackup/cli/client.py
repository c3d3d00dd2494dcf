"""A small HTTP client of the VM backup API (used by the `vmbackup` CLI and the tests)."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    headers: dict
    body: object

    @property
    def result(self):
        return self.body.get("result") if isinstance(self.body, dict) else None

    @property
    def task_id(self) -> str | None:
        return self.body.get("task_id") if isinstance(self.body, dict) else None


class Client:
    """Sends GET parameters in the query string and everything else as a JSON body, as `es` does."""

    def __init__(self, url: str, token: str | None = None, api_key: str | None = None, timeout: float = 60):
        parsed = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        self.scheme, self.netloc = parsed.scheme, parsed.netloc
        self.prefix = parsed.path.rstrip("/")
        if not self.prefix.endswith("/api"):
            self.prefix += "/api"
        self.token, self.api_key, self.timeout = token, api_key, timeout

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.netloc, timeout=self.timeout)

    def request(self, method: str, path: str, data: dict | None = None, headers: dict | None = None) -> Response:
        method = method.upper()
        url = self.prefix + "/" + path.strip("/") + "/"
        body = None
        all_headers = {"Accept": "application/json"}
        if self.token:
            all_headers["Authorization"] = "Token " + self.token
        if self.api_key:
            all_headers["ES-API-KEY"] = self.api_key
        all_headers.update(headers or {})
        if data and method == "GET":
            url += "?" + urllib.parse.urlencode({k: _text(v) for k, v in data.items()})
        elif data is not None:
            body = json.dumps(data)
            all_headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, url, body=body, headers=all_headers)
            reply = conn.getresponse()
            raw = reply.read().decode("utf-8", "replace")
            head = {k.lower(): v for k, v in reply.getheaders()}
        finally:
            conn.close()
        try:
            parsed = json.loads(raw.strip().split("\n")[-1]) if raw.strip() else None
        except ValueError:
            parsed = raw
        status = reply.status
        if head.get("es_stream") or head.get("es-stream"):
            status = int(raw.strip().split("\n")[0]) if raw.strip().split("\n")[0].isdigit() else status
        return Response(status, head, parsed)

    def login(self, username: str, password: str) -> Response:
        response = self.request("POST", "accounts/login", {"username": username, "password": password})
        if response.status == 200:
            self.token = response.body["token"]
        return response

    def get(self, path: str, **data) -> Response:
        return self.request("GET", path, data or None)

    def post(self, path: str, **data) -> Response:
        return self.request("POST", path, data)

    def put(self, path: str, **data) -> Response:
        return self.request("PUT", path, data)

    def delete(self, path: str, **data) -> Response:
        return self.request("DELETE", path, data)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
