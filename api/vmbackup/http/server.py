"""Serving the application with waitress (threads), not Bottle's test server: the WSGI middlewares and `serve`."""

from __future__ import annotations

import ipaddress
import json
import logging
import time

import waitress.server
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from vmbackup.app.application import Application
from vmbackup.app.config import Config
from vmbackup.http.routes import build_app, es_header_names, utf8_only

log = logging.getLogger("vmbackup")


def wsgi(application: Application):
    """The application's WSGI app: the routes, inside the middlewares (proxies, header names, UTF-8, body limit)."""
    config = application.config
    app = build_app(application.service, application.auth, stream_limit=config.stream_limit,
                    metrics=application.metrics)
    return limit_body(utf8_only(es_header_names(forwarded_for(app, frozenset(config.trusted_proxies)))),
                      config.body_limit)


def forwarded_for(app, proxies: frozenset[str]):
    """WSGI middleware: a request from one of `proxies` is the client's that its last X-Forwarded-For entry
    names (what that proxy appended; entries before it are the client's to choose). Login throttling is keyed
    by REMOTE_ADDR: behind a proxy, without this, every client would share the proxy's address."""
    def wsgi(environ, start_response):
        if proxies and environ.get("REMOTE_ADDR") in proxies:
            last = (environ.get("HTTP_X_FORWARDED_FOR") or "").split(",")[-1].strip()
            try:
                environ["REMOTE_ADDR"] = str(ipaddress.ip_address(last))
            except ValueError:
                pass
        return app(environ, start_response)
    return wsgi


def limit_body(app, limit: int):
    """WSGI wrapper: a body declared larger than `limit` is answered 413 before any of it is read.
    (waitress refuses larger chunked bodies itself while reading, see serve.)"""
    def wsgi(environ, start_response):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length > limit or length < 0:
            code = "413 Request Entity Too Large" if length > limit else "400 Bad Request"
            detail = ("Request body too large: at most %d bytes." % limit if length > limit
                      else "Invalid Content-Length header.")
            body = json.dumps({"detail": detail}).encode()
            start_response(code, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  ("Connection", "close")])
            return [body]
        return app(environ, start_response)
    return wsgi


def _json_errors_channel():
    """waitress's own refusals (a body over its limit, a malformed request) as JSON, not text."""

    class JSONErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            body = json.dumps({"detail": "%s: %s" % (error.reason, error.body)}).encode()
            self.status = "%d %s" % (error.code, error.reason)
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JSONErrorChannel(HTTPChannel):
        error_task_class = JSONErrorTask

    return JSONErrorChannel


def serve(config: Config) -> None:
    """`vmbackup serve`: the application, its background work, and waitress on `config.listen` until stopped."""
    host, _, port = config.listen.rpartition(":")
    application = Application(config)
    if config.metrics_listen:
        application.serve_metrics(config.metrics_listen)
    application.start_background()
    log.info("vmbackup API on http://%s:%s/api/ (data in %s)", host or "127.0.0.1", port, application.data_dir)
    # waitress answers a declared or chunked body over its limit with 413 while reading the headers or
    # the chunks (JSON through our channel); limit_body covers the app under any other WSGI server.
    server = waitress.server.create_server(wsgi(application), host=host or "127.0.0.1", port=int(port),
                                           threads=config.threads, ident="vmbackup",
                                           max_request_body_size=config.body_limit + 1)
    server.channel_class = _json_errors_channel()
    started = time.monotonic()
    try:
        server.run()
    finally:
        log.info("vmbackup API stopped after %.0f s", time.monotonic() - started)
