"""The `es` syntax of the original command-line client: `vmbackup get /vm/<host>/backup -full`.

    vmbackup login [-username NAME] [-password PASS]     (the token is kept in ~/.config/vmbackup/)
    vmbackup get|create|set|delete /PATH [-param value ...] [--wait] [--table] [--url URL]
    vmbackup logout

A `-param` with no value means true. Output is what `es` printed: {"url", "status", "method", "text"}.
ES_API_KEY (an API key) or a stored token authenticates; VMBACKUP_URL (or ES_API_URL) names the server.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import tempfile
import time

from vmbackup.cli.client import Client, Response
from vmbackup.domain.facts import TaskStatus

VERBS = {"get": "GET", "create": "POST", "set": "PUT", "delete": "DELETE"}
DEFAULT_URL = "http://127.0.0.1:8000/api"
FLAGS = {"--wait", "--table", "--quiet"}
HELP_FLAGS = {"-h", "--help"}
_PATH = [("/PATH", "an API path, e.g. /vm/web01.lab/backup (the /api prefix and the last / are added)"),
         ("-param value", "a parameter of the request; -param alone means true; repeat -bkpnames for a list")]
_WAIT = [("--wait", "follow the job to its end (a progress line on stderr); exit 1 if it fails"),
         ("--quiet", "with --wait, no progress line")]
_COMMON = [("--url URL", "the API (default: VMBACKUP_URL, ES_API_URL, the URL logged in to, else %s)" % DEFAULT_URL),
           ("-h, --help", "show this help")]


def _help(usage: str, about: str, options: list[tuple[str, str]]) -> str:
    lines = ["usage: vmbackup " + usage, "", about, ""]
    lines += ["  %-16s %s" % option for option in options + _COMMON]
    return "\n".join(lines)


# Each verb's help, printed by `vmbackup <verb> --help`.
HELP = {
    "login": _help("login [-username NAME] [-password PASS] [--url URL]",
                   "Log in; the token is kept in ~/.config/vmbackup/es.json (mode 0600). Without -password, the\n"
                   "password is asked for, or read from stdin when that is not a terminal.",
                   [("-username NAME", "the user"),
                    ("-password PASS", "the password; every user of this machine sees it in the process list "
                     "(ps) and it lands in shell history: leave it out to be asked")]),
    "logout": _help("logout [--url URL]", "Log out and forget the kept token.", []),
    "get": _help("get /PATH [-param value ...] [--table] [--url URL]",
                 "GET and print what es printed, {\"url\", \"status\", \"method\", \"text\"}, e.g.\n"
                 "  vmbackup get /vm/web01.lab/backup -full",
                 _PATH + [("--table", "print a list result as a table")]),
    "create": _help("create /PATH [-param value ...] [--wait [--quiet]] [--url URL]",
                    "POST: define a backup, or start one, e.g. vmbackup create /vm/web01.lab/backup/daily --wait",
                    _PATH + _WAIT),
    "set": _help("set /PATH [-param value ...] [--wait [--quiet]] [--url URL]",
                 "PUT: change a definition or a backup's note, or restore a backup, e.g.\n  vmbackup set "
                 "/vm/web01.lab/backup/daily-20261128_040000 -target_hostname_or_uuid web01.lab -target_disk_id 1",
                 _PATH + _WAIT),
    "delete": _help("delete /PATH [-param value ...] [--wait [--quiet]] [--url URL]",
                    "DELETE a definition or backups, e.g. vmbackup delete /vm/web01.lab/backup/daily-20261128_040000",
                    _PATH + _WAIT),
}


class UsageError(Exception):
    pass


def config_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "vmbackup", "es.json")


def load_config() -> dict:
    try:
        with open(config_path()) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def save_config(data: dict) -> None:
    """Write the config, which holds a token: the file 0600 and its folder 0700, whatever they were before."""
    path = config_path()
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)  # makedirs leaves an existing folder's mode alone
    # A new file of our own (mkstemp makes it 0600) replaces the old one, so an old file's mode never carries over.
    fd, part = tempfile.mkstemp(dir=folder, prefix=".es.json.")
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            json.dump(data, handle)
        os.replace(part, path)
    except BaseException:
        os.unlink(part)
        raise


def parse(argv: list[str]) -> tuple[str, str, dict, dict]:
    """(verb, path, params, options) from es-style arguments."""
    options: dict = {"url": None}
    words = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in FLAGS:
            options[word[2:]] = True
        elif word == "--url":
            if i + 1 >= len(argv):
                raise UsageError("--url needs a value, e.g. --url http://127.0.0.1:8000/api")
            options["url"] = argv[i + 1]
            i += 1
        elif word.startswith("--url="):
            options["url"] = word.split("=", 1)[1]
        else:
            words.append(word)
        i += 1
    if not words:
        raise UsageError("missing command: one of login, logout, " + ", ".join(VERBS))
    verb = words[0]
    if verb in ("login", "logout"):
        return verb, "", _params(words[1:]), options
    if verb not in VERBS:
        raise UsageError("unknown command '%s': use one of login, logout, %s" % (verb, ", ".join(VERBS)))
    if len(words) < 2 or not words[1].startswith("/"):
        raise UsageError("%s needs a path such as /vm/<hostname>/backup" % verb)
    return verb, words[1], _params(words[2:]), options


def _params(words: list[str]) -> dict:
    params = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-") or len(word) < 2:
            raise UsageError("expected -parameter, got '%s'" % word)
        name = word.lstrip("-")
        if i + 1 < len(words) and not (words[i + 1].startswith("-") and not _is_number(words[i + 1])):
            value = words[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        if name in params:  # repeated: a list (e.g. -bkpnames a -bkpnames b)
            params[name] = params[name] if isinstance(params[name], list) else [params[name]]
            params[name].append(value)
        else:
            params[name] = value
    if isinstance(params.get("bkpnames"), str):
        params["bkpnames"] = [n for n in params["bkpnames"].replace(",", " ").split() if n]
    return params


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def make_client(url: str | None) -> Client:
    config = load_config()
    url = url or os.environ.get("VMBACKUP_URL") or os.environ.get("ES_API_URL") or config.get("url") or DEFAULT_URL
    key = os.environ.get("ES_API_KEY")
    token = None if key else (config.get("token") if config.get("url") in (None, url) else None)
    return Client(url, token=token, api_key=key)


def show(response: Response, method: str, path: str, client: Client, table: bool) -> None:
    if table and isinstance(response.result, list):
        print_table(response.result)
        return
    url = "%s://%s%s/%s/" % (client.scheme, client.netloc, client.prefix, path.strip("/"))
    print(json.dumps({"url": url, "status": response.status, "method": method, "text": response.body}, indent=2))


def print_table(rows: list) -> None:
    if not rows:
        return
    if not isinstance(rows[0], dict):
        for row in rows:
            print(row)
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_cell(row.get(c)).ljust(widths[c]) for c in columns))


def _cell(value) -> str:
    return "-" if value is None else str(value)


def follow(client: Client, task_id: str, quiet: bool = False) -> Response:
    """Poll a job to its end, drawing a progress line on stderr; return the final status."""
    spinner = "|/-\\"
    turn = 0
    while True:
        status = client.get("task/%s/status" % task_id)
        if status.status != 201:
            if not quiet:
                sys.stderr.write("\r" + " " * 78 + "\r")
            return status
        if not quiet:
            info = client.get("task/%s" % task_id).result or {}
            progress = info.get("progress") or {}
            line = "%s %s" % (spinner[turn % 4], progress.get("step") or "waiting")
            if progress.get("bytes") is not None:
                sent, total = progress["bytes"], progress.get("total")
                if total:
                    done = min(1.0, sent / total)
                    line += " [%-20s] %3d%% %s/%s" % ("#" * int(done * 20), done * 100, _size(sent), _size(total))
                else:
                    line += " %s" % _size(sent)
            sys.stderr.write("\r" + line[:78].ljust(78))
            sys.stderr.flush()
        turn += 1
        time.sleep(1)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (count, unit)
        count /= 1024
    return str(count)


def help_text(argv: list[str]) -> str:
    """The help of the verb in argv, or the general usage."""
    words = [w for i, w in enumerate(argv) if not w.startswith("-") and (i == 0 or argv[i - 1] != "--url")]
    return HELP.get(words[0] if words else "", __doc__)


def main(argv: list[str]) -> int:
    if HELP_FLAGS & set(argv):
        print(help_text(argv).strip("\n"))
        return 0
    try:
        verb, path, params, options = parse(argv)
    except UsageError as err:
        print("vmbackup: %s\n\n%s" % (err, __doc__), file=sys.stderr)
        return 2
    client = make_client(options["url"])
    if verb == "login":
        username = params.get("username") or input("Username: ")
        password = params.get("password") or (getpass.getpass() if sys.stdin.isatty() else sys.stdin.readline().strip())
        response = client.login(username, password)
        if response.status == 200:
            url = "%s://%s%s" % (client.scheme, client.netloc, client.prefix)
            save_config({"url": url, "token": response.body["token"], "username": username})
        show(response, "POST", "/accounts/login", client, False)
        return 0 if response.status == 200 else 1
    if verb == "logout":
        response = client.get("accounts/logout")
        config = load_config()
        config.pop("token", None)
        save_config(config)
        show(response, "GET", "/accounts/logout", client, False)
        return 0 if response.status == 200 else 1
    method = VERBS[verb]
    response = client.request(method, path, params)
    if options.get("wait") and response.status == 201 and response.body.get("status") == TaskStatus.PENDING:
        response = follow(client, response.task_id, options.get("quiet", False))
    show(response, method, path, client, options.get("table", False))
    return 0 if response.status < 400 else 1
