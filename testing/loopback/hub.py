"""A loopback Hugging Face Hub that speaks the endpoints ``huggingface_hub`` uses to create and push a repo.

Point the real client at it with ``HF_ENDPOINT=hub.endpoint``. It implements repo creation
(``POST /api/repos/create``), repo info (``GET /api/{type}s/{id}[/revision/{rev}]``), the preupload check
(``POST /api/{type}s/{id}/preupload/{rev}``, every file answered ``regular`` so its bytes travel inline)
and the NDJSON commit (``POST /api/{type}s/{id}/commit/{rev}``). With ``lfs_suffixes`` those files are
answered ``lfs`` instead and travel by the basic LFS protocol (batch API, then a PUT), which the client
uses when ``HF_HUB_DISABLE_XET=1`` (Xet storage is not emulated). It records every call and the files of
each commit, and can be told to answer errors (``fail``) to test retries and error messages.
Repo ids are one namespace across types here, so a dataset push onto a model id answers 409.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml

from testing.loopback.http import JsonHandler, LoopbackServer

_REPO = r"(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", "create", re.compile(r"^/api/repos/create$")),
    ("POST", "preupload", re.compile(rf"^/api/{_REPO}/preupload/(?P<rev>[^/]+)$")),
    ("POST", "commit", re.compile(rf"^/api/{_REPO}/commit/(?P<rev>[^/]+)$")),
    ("GET", "info", re.compile(rf"^/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")),
    ("POST", "validate-yaml", re.compile(r"^/api/validate-yaml$")),
    ("POST", "lfs-batch",
     re.compile(r"^/(?:(?P<type>dataset|space)s/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")),
    ("PUT", "lfs-upload", re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$")),
]


def _route(method: str, path: str) -> tuple[str, re.Match[str] | None]:
    for route_method, name, pattern in ROUTES:
        match = pattern.match(path)
        if match and method == route_method:
            return name, match
    return "unknown", None


@dataclass
class Repo:
    type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)


@dataclass
class Call:
    method: str
    path: str
    endpoint: str  # create | preupload | commit | info | validate-yaml | lfs-batch | lfs-upload | unknown
    authorized: bool
    status: int = 200


class LoopbackHub:
    """Context manager: ``with LoopbackHub(token="hf_x") as hub: hub.endpoint`` → ``http://127.0.0.1:PORT``."""

    def __init__(self, token: str | None = None, user: str = "tester", lfs_suffixes: tuple[str, ...] = ()) -> None:
        self.token = token
        self.user = user
        self.lfs_suffixes = lfs_suffixes
        self.lfs_objects: dict[str, bytes] = {}
        self.calls: list[Call] = []
        self.repos: dict[str, Repo] = {}
        self._failures: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._http: LoopbackServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._http is not None, "server not started"
        return self._http.url

    def fail(self, endpoint: str, status: int, times: int = 1, message: str = "loopback failure",
             headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` calls to ``endpoint`` (create, preupload, commit, info) with ``status``."""
        with self._lock:
            self._failures.append({"endpoint": endpoint, "status": status, "times": times, "message": message,
                                   "headers": headers or {}})

    def add_repo(self, repo_id: str, repo_type: str = "dataset", files: dict[str, bytes] | None = None) -> Repo:
        self.repos[repo_id] = Repo(repo_type, False, dict(files or {}))
        return self.repos[repo_id]

    def calls_to(self, endpoint: str) -> list[Call]:
        return [c for c in self.calls if c.endpoint == endpoint]

    # ------------------------------------------------------------------ handlers

    def _planned_failure(self, endpoint: str) -> dict[str, Any] | None:
        with self._lock:
            for failure in self._failures:
                if failure["endpoint"] == endpoint and failure["times"] > 0:
                    failure["times"] -= 1
                    return failure
        return None

    def _create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        repo_type = body.get("type") or "model"
        existing = self.repos.get(repo_id)
        if existing is not None:
            kind = "" if existing.type == repo_type else f" as a {existing.type} repo"
            return 409, {"error": f"You already created this repo{kind}", "url": self._url(repo_id, existing.type)}, {}
        private = bool(body.get("private")) or body.get("visibility") == "private"
        self.repos[repo_id] = Repo(repo_type, private)
        return 200, {"url": self._url(repo_id, repo_type), "name": repo_id}, {}

    def _url(self, repo_id: str, repo_type: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo_id}"

    def _repo(self, match: re.Match[str]) -> Repo | None:
        repo = self.repos.get(match["repo"])
        return repo if repo is not None and repo.type == match["type"] else None

    def _validate_yaml(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Like the Hub: the README's front matter must be a YAML mapping; dataset ``configs`` need names and files."""
        content = body.get("content", "")
        found = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if not found:
            return 200, {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]}, {}
        try:
            meta = yaml.safe_load(found.group(1))
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"invalid YAML: {str(exc).splitlines()[0]}"}]}, {}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a YAML mapping"}]}, {}
        for config in meta.get("configs") or []:
            if not isinstance(config, dict) or "config_name" not in config or "data_files" not in config:
                message = f"configs entry {config!r} needs config_name and data_files"
                return 400, {"errors": [{"message": message}]}, {}
        return 200, {"warnings": []}, {}

    def _lfs_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        objects = []
        for obj in body.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _lfs_upload(self, match: re.Match[str], raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        if hashlib.sha256(raw).hexdigest() != match["oid"]:
            return 400, {"error": "content does not match its sha256"}, {}
        self.lfs_objects[match["oid"]] = raw
        return 200, {}, {}

    def _info(self, match: re.Match[str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        repo = self._repo(match)
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        sha = repo.commits[-1] if repo.commits else "0" * 40
        return 200, {"id": match["repo"], "sha": sha, "private": repo.private,
                     "siblings": [{"rfilename": name} for name in sorted(repo.files)]}, {}

    def _preupload(self, match: re.Match[str], body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self._repo(match) is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        files = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(self.lfs_suffixes) else "regular",
                  "shouldIgnore": False, "oid": None} for f in body.get("files", [])]
        return 200, {"files": files, "commitOid": None}, {}

    def _commit(self, match: re.Match[str], raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        repo = self._repo(match)
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        lines = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
        added: dict[str, bytes] = {}
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return 400, {"error": f"LFS object {value['oid']} of {value['path']} was never uploaded"}, {}
                added[value["path"]] = self.lfs_objects[value["oid"]]
            elif line["key"] in ("deletedFile", "deletedFolder"):
                repo.files = {k: v for k, v in repo.files.items()
                              if k != value["path"] and not k.startswith(value["path"].rstrip("/") + "/")}
            elif line["key"] != "header":
                return 400, {"error": f"unsupported commit operation {line['key']!r}"}, {}
        repo.files.update(added)
        oid = hashlib.sha1(raw).hexdigest()
        repo.commits.append(oid)
        return 200, {"commitUrl": f"{self._url(match['repo'], repo.type)}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": None}, {}

    def handle(self, method: str, path: str, auth: str | None, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        path = path.split("?", 1)[0]
        name, match = _route(method, path)
        # The upload URL handed out by the LFS batch answer is pre-signed, like S3's: no token there.
        authorized = self.token is None or auth == f"Bearer {self.token}" or name == "lfs-upload"
        call = Call(method, path, name, authorized)
        with self._lock:
            self.calls.append(call)
        failure = self._planned_failure(name)
        if failure:
            status, body, headers = failure["status"], {"error": failure["message"]}, failure["headers"]
        elif match is None:
            status, body, headers = 404, {"error": f"loopback hub: no route for {method} {path}"}, {}
        elif not authorized:
            status, body, headers = 401, {"error": "Invalid credentials in Authorization header"}, {}
        elif name == "create":
            status, body, headers = self._create(json.loads(raw or b"{}"))
        elif name == "validate-yaml":
            status, body, headers = self._validate_yaml(json.loads(raw or b"{}"))
        elif name == "lfs-batch":
            status, body, headers = self._lfs_batch(json.loads(raw or b"{}"))
        elif name == "lfs-upload":
            status, body, headers = self._lfs_upload(match, raw)
        elif name == "info":
            status, body, headers = self._info(match)
        elif name == "preupload":
            status, body, headers = self._preupload(match, json.loads(raw or b"{}"))
        else:
            status, body, headers = self._commit(match, raw)
        call.status = status
        return status, body, headers

    def __enter__(self) -> LoopbackHub:
        hub = self

        class Handler(JsonHandler):
            def _serve(self) -> None:
                raw = self.read_body()
                status, body, headers = hub.handle(self.command, self.path, self.headers.get("Authorization"), raw)
                if "error" in body and status >= 400:
                    headers = {"X-Error-Message": body["error"], **headers}
                self.send_json(status, body, headers)

            do_GET = do_POST = do_PUT = _serve

        self._http = LoopbackServer(Handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.stop()
