"""The OpenAPI description is the route table's: every route Bottle serves is described, with the forms each
parameter accepts, and every described route answers (a live server, with credentials).

A route that does not exist is told from an object that does not exist by the body: Bottle's own 404 says
{"detail": "Not found."} (routes.build_app's json_error), the API's say what was not found ("VM not found").
"""

from __future__ import annotations

import json
import re

import pytest
from api_env import serving

from vmbackup.cli.client import Client
from vmbackup.domain import facts
from vmbackup.http.openapi import spec
from vmbackup.http.routes import build_app

NO_ROUTE = {"detail": "Not found."}
# What a described route is called with: objects that do not exist, so that no call changes anything.
PATH_VALUES = {"hostname_or_uuid": "no-such-vm", "bkpdef": "nodef", "bkpname": "nodef-20000101_000000",
               "task_id": "1e1d1-00000000-0000-0000-0000"}
BODIES = {("put", "/api/sync"): {"node": "no-such-node"}}  # a sync of every node would start a job


def described(document: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}


def served(app) -> set[tuple[str, str]]:
    return {(route.method, re.sub(r"<(\w+)>", r"{\1}", route.rule)) for route in app.routes}


@pytest.mark.parametrize("metrics", [object(), None], ids=["with-metrics", "without-metrics"])
def test_every_bottle_route_is_described(metrics):
    app = build_app(None, None, metrics=metrics)  # registering needs neither a service nor auth
    document = spec(app.config["vmbackup.routes"])
    assert served(app) == described(document)
    assert (("GET", "/api/metrics") in described(document)) == (metrics is not None)
    assert {("PUT", "/api/sync"), ("PUT", "/api/vm/{hostname_or_uuid}/backup/{bkpname}/verify"),
            ("GET", "/api/openapi.json")} <= described(document)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            names = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert names == set(re.findall(r"{(\w+)}", path)), (method, path)
            assert operation["responses"], (method, path)


def test_parameters_are_described_with_the_forms_they_accept():
    paths = spec()["paths"]
    create = paths["/api/vm/{hostname_or_uuid}/define/backup/{bkpdef}"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"node"}
    fields = body["properties"]
    integer, text = fields["compression"]["oneOf"]
    assert integer == {"type": "integer", "enum": [0, 1, 2, 3]}
    assert {"zstd", "lz4", "0", "3"} <= set(text["enum"]) and set(facts.COMPRESSION_NAMES) <= set(text["enum"])
    for name in ("keep_snapshot", "fsfreeze", "active"):
        native, words = fields[name]["oneOf"]
        assert native == {"type": "boolean"}
        for word in ("true", "True", "FALSE", "yes", "off", "1"):
            assert re.search(words["pattern"], word), (name, word)
        assert not re.search(words["pattern"], "maybe")
    assert fields["retention"]["oneOf"][0] == {"type": "integer", "minimum": 0, "maximum": 65536}
    assert re.search(fields["retention"]["oneOf"][1]["pattern"], "30")
    assert fields["bwlimit"]["nullable"] is True
    update = paths["/api/vm/{hostname_or_uuid}/define/backup/{bkpdef}"]["put"]
    assert "keep_snapshot" in update["requestBody"]["content"]["application/json"]["schema"]["properties"]
    # a query string carries text: the GET parameters' text forms only
    listing = {p["name"]: p for p in paths["/api/vm/define/backup"]["get"]["parameters"]}
    assert listing["full"]["schema"]["type"] == "string" and listing["full"]["schema"]["default"] == "false"
    # the objects: a backup has `verified`, a definition `keep_snapshot`
    schemas = spec()["components"]["schemas"]
    assert {"verified", "verify_status", "status", "checksum"} <= set(schemas["Backup"]["properties"])
    assert {"keep_snapshot", "compression", "verified"} <= set(schemas["Definition"]["properties"])
    assert paths["/api/openapi.json"]["get"]["security"] == []
    assert paths["/api/accounts/login"]["post"]["security"] == []


@pytest.fixture(scope="module")
def env(lab):
    with serving(lab, ()) as env:
        yield env


def test_every_described_route_answers(env):
    client = Client(env.url, api_key=env.admin_key)
    reply = Client(env.url).get("openapi.json")  # no credentials needed, as before
    assert reply.status == 200
    document = reply.body
    assert json.loads(json.dumps(spec())) == document  # the server describes every route of the table
    # how "no such route" and "no such method" look, so that they cannot pass for an answer below
    assert client.get("no/such/route").status == 404 and client.get("no/such/route").body == NO_ROUTE
    assert client.request("PATCH", "task").status == 405
    answers = {}
    for method, path in sorted(described(document)):
        url = re.sub(r"{(\w+)}", lambda m: PATH_VALUES[m.group(1)], path)[len("/api/"):]
        data = BODIES.get((method.lower(), path), None if method == "GET" else {})
        response = client.request(method, url, data)
        answers[method, path] = response.status
        assert response.status != 405, (method, path, response.body)
        assert not (response.status == 404 and response.body == NO_ROUTE), (method, path)
        assert response.status < 500, (method, path, response.body)
        assert str(response.status) in document["paths"][path][method.lower()]["responses"], \
            (method, path, response.status, response.body)
    assert answers["PUT", "/api/sync"] == 423  # a node that is not there: no job started
    assert answers["GET", "/api/vm/{hostname_or_uuid}/backup/{bkpname}"] == 404
    assert len(answers) == len(described(document)) >= 24
