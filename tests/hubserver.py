"""A loopback stand-in for the Hugging Face Hub: just the HTTP endpoints the real
``huggingface_hub`` client calls to create a model repo, commit a folder to it and download
files back. Stdlib only (``http.server`` in a thread on 127.0.0.1, ephemeral port).

What the client sends (read from huggingface_hub 2.x: ``hf_api.py``, ``_commit_api.py``,
``lfs.py``, ``file_download.py``) and what this server answers:

    POST /api/repos/create                       {"name", "organization", "visibility"} → {"url"}; 409 if it exists
    GET  /api/models/{repo}[/revision/{rev}]     repo_info (create_repo's fallback after 401/403; snapshot_download)
    GET  /api/models/{repo}/tree/{rev}[/{path}]  the file listing snapshot_download reads (one page)
    POST /api/validate-yaml                      README.md front matter check before a commit
    POST /api/models/{repo}/preupload/{rev}      per file: uploadMode "lfs" (weights, > 1 MB) or "regular"
    POST /{repo}.git/info/lfs/objects/batch      git-lfs batch API: an upload href (+ verify) per object
    PUT  /lfs/{sha256}                           the LFS object body (sha256 and size checked)
    POST /lfs/{sha256}/verify                    {"oid", "size"}
    POST /api/models/{repo}/commit/{rev}         NDJSON: header, file (base64), lfsFile (oid), deletedFile
    HEAD/GET /{repo}/resolve/{rev}/{path}        X-Repo-Commit, ETag / X-Linked-Etag, Content-Length
    GET  /api/agent-harnesses                    the client's once-a-day agent registry: an empty one

Xet storage (the client's default upload path when ``hf_xet`` is installed) is not served:
tests set ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True`` so the client takes the
preupload → LFS → commit path above.

Errors carry the Hub's ``X-Error-Code`` headers (RepoNotFound, RevisionNotFound, EntryNotFound)
so the client raises its typed errors. ``fail`` injects failures per route (``{"commit": 500}``);
``token`` makes every write require ``Authorization: Bearer <token>`` (401 otherwise).
Every request is recorded in ``requests`` (method, path, headers) for assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".png")
LFS_MIN_SIZE = 1_000_000  # bytes; larger files go to LFS whatever their suffix

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES = [  # (name, method, regex over the unquoted path)
    ("agent_harnesses", "GET", re.compile(r"^/api/agent-harnesses$")),
    ("create", "POST", re.compile(r"^/api/repos/create$")),
    ("validate_yaml", "POST", re.compile(r"^/api/validate-yaml$")),
    ("preupload", "POST", re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$")),
    ("commit", "POST", re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$")),
    ("repo_info", "GET", re.compile(rf"^/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?$")),
    ("tree", "GET", re.compile(rf"^/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$")),
    ("lfs_batch", "POST", re.compile(rf"^/{REPO}\.git/info/lfs/objects/batch$")),
    ("lfs_upload", "PUT", re.compile(r"^/lfs/(?P<oid>[0-9a-f]{64})$")),
    ("lfs_verify", "POST", re.compile(r"^/lfs/(?P<oid>[0-9a-f]{64})/verify$")),
    ("resolve", "HEAD", re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
    ("resolve", "GET", re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
]
WRITES = {"create", "validate_yaml", "preupload", "commit", "lfs_batch"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)     # path in repo → content
    lfs: set[str] = field(default_factory=set)                # paths stored as LFS objects
    commits: list[dict] = field(default_factory=list)         # {"oid", "summary", "files": {path: bytes}, "lfs"}

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]   # names lower-cased


class HubServer:
    """``with HubServer() as hub:`` → ``hub.url`` is the endpoint to give the client."""

    def __init__(self, token: str | None = None, fail: dict[str, int] | None = None):
        self.token = token
        self.fail = dict(fail or {})
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}   # sha256 hex → content
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hubserver", daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def calls(self, name: str) -> list[Recorded]:
        """The recorded requests that matched route ``name``."""
        return [r for r in self.requests if _route(r.method, r.path)[0] == name]


def _route(method: str, path: str):
    for name, m, rx in ROUTES:
        match = rx.match(path)
        if m == method and match:
            return name, match.groupdict()
    return None, {}


def _front_matter(text: str):
    """The YAML mapping between the leading ``---`` lines of a model card, or raise ValueError."""
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    if end < 0:
        raise ValueError("front matter is not closed by '---'")
    data = yaml.safe_load(text[4:end])
    if data is not None and not isinstance(data, dict):
        raise ValueError("front matter is not a YAML mapping")
    return data or {}


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        # -- plumbing ---------------------------------------------------------------------------
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes | dict | list | None = b"", headers: dict | None = None, *, head=False):
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            body = body or b""
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
            headers = {"X-Error-Message": message, **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, {"error": message}, headers, head=self.command == "HEAD")

        def _dispatch(self):
            path = unquote(urlsplit(self.path).path)
            with hub.lock:
                hub.requests.append(Recorded(self.command, path, {k.lower(): v for k, v in self.headers.items()}))
            name, args = _route(self.command, path)
            body = self._body() if self.command in ("POST", "PUT") else b""
            if name is None:
                return self._error(404, f"no route for {self.command} {path}")
            if name in hub.fail:
                return self._error(hub.fail[name], f"injected failure on {name}")
            if name in WRITES and hub.token is not None:
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._error(401, "Invalid credentials in Authorization header")
            try:
                getattr(self, "do_" + name)(body, **args)
            except Exception as e:  # a bug in this server must show up as a 500, not a hang
                self._error(500, f"test hub server error: {type(e).__name__}: {e}")

        do_GET = do_POST = do_PUT = do_HEAD = _dispatch

        def _repo(self, repo: str, rev: str | None = None) -> Repo | None:
            r = hub.repos.get(repo)
            if r is None or (r.private and self.headers.get("Authorization") != f"Bearer {hub.token}"):
                self._error(404, "Repository not found", "RepoNotFound")
                return None
            if rev not in (None, "main") and rev not in {c["oid"] for c in r.commits}:
                self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                return None
            return r

        # -- routes -----------------------------------------------------------------------------
        def do_create(self, body):
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            with hub.lock:
                if repo_id in hub.repos:
                    return self._send(409, {"error": "You already created this model repo",
                                            "url": f"{hub.url}/{repo_id}"})
                hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
            self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def do_agent_harnesses(self, body):
            self._send(200, {"standardEnvVars": [], "harnesses": {}})

        def do_repo_info(self, body, repo, rev=None):
            r = self._repo(repo, rev)
            if r:
                self._send(200, {"id": repo, "sha": r.sha, "private": r.private,
                                 "siblings": [{"rfilename": p} for p in sorted(r.files)]})

        def do_tree(self, body, repo, rev, path=None):
            r = self._repo(repo, rev)
            if not r:
                return
            commit = next((c for c in r.commits if c["oid"] in (rev, r.sha if rev == "main" else None)),
                          {"files": {}, "lfs": set()})
            prefix = (path.strip("/") + "/") if path else ""
            entries = []
            for p, data in sorted(commit["files"].items()):
                if not p.startswith(prefix):
                    continue
                entry = {"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)}
                if p in commit["lfs"]:
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            self._send(200, entries)

        def do_validate_yaml(self, body):
            try:
                _front_matter(json.loads(body)["content"])
            except (ValueError, yaml.YAMLError) as e:
                return self._send(400, {"errors": [{"message": str(e)}]})
            self._send(200, {"errors": [], "warnings": []})

        def do_preupload(self, body, repo, rev):
            r = self._repo(repo, rev)
            if not r:
                return
            files = []
            for f in json.loads(body)["files"]:
                lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > LFS_MIN_SIZE
                old = r.files.get(f["path"])
                oid = None if old is None else (
                    hashlib.sha256(old).hexdigest() if f["path"] in r.lfs else git_blob_sha1(old))
                files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                              "shouldIgnore": False, "oid": oid})
            self._send(200, {"files": files, "commitOid": r.sha})

        def do_lfs_batch(self, body, repo):
            if not self._repo(repo):
                return
            objects = []
            for o in json.loads(body)["objects"]:
                entry = {"oid": o["oid"], "size": o["size"]}
                if o["oid"] not in hub.lfs_objects:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs/{o['oid']}"},
                                        "verify": {"href": f"{hub.url}/lfs/{o['oid']}/verify"}}
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects},
                       {"Content-Type": "application/vnd.git-lfs+json"})

        def do_lfs_upload(self, body, oid):
            if hashlib.sha256(body).hexdigest() != oid:
                return self._error(400, "sha256 of the uploaded body does not match the oid")
            with hub.lock:
                hub.lfs_objects[oid] = body
            self._send(200)

        def do_lfs_verify(self, body, oid):
            o = json.loads(body)
            if o["oid"] not in hub.lfs_objects or len(hub.lfs_objects[o["oid"]]) != o["size"]:
                return self._error(404, "LFS object not found")
            self._send(200, {})

        def do_commit(self, body, repo, rev):
            r = self._repo(repo, rev)
            if not r:
                return
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            files, lfs = dict(r.files), set(r.lfs)
            for item in lines:
                key, v = item["key"], item["value"]
                if key == "file":
                    files[v["path"]] = base64.b64decode(v["content"])
                    lfs.discard(v["path"])
                elif key == "lfsFile":
                    if v["oid"] not in hub.lfs_objects:
                        return self._error(422, f"LFS object {v['oid']} was not uploaded")
                    files[v["path"]] = hub.lfs_objects[v["oid"]]
                    lfs.add(v["path"])
                elif key == "deletedFile":
                    files.pop(v["path"], None)
                    lfs.discard(v["path"])
            if "README.md" in files:
                try:
                    _front_matter(files["README.md"].decode())
                except (ValueError, yaml.YAMLError) as e:
                    return self._error(400, f"invalid README.md metadata: {e}")
            oid = hashlib.sha1((r.sha + json.dumps(sorted(files)) + header["summary"]).encode()
                               + b"".join(files[p] for p in sorted(files))).hexdigest()
            with hub.lock:
                r.files, r.lfs = files, lfs
                r.commits.append({"oid": oid, "summary": header["summary"], "files": files, "lfs": lfs})
            self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": None})

        def do_resolve(self, body, repo, rev, path):
            r = self._repo(repo, rev)
            if not r:
                return
            sha = r.sha if rev == "main" else rev
            commit = next((c for c in r.commits if c["oid"] == sha), {"files": {}, "lfs": set()})
            if path not in commit["files"]:
                return self._error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
            data = commit["files"][path]
            headers = {"X-Repo-Commit": sha, "Content-Type": "application/octet-stream"}
            if path in commit["lfs"]:
                headers |= {"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": len(data),
                            "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            else:
                headers["ETag"] = f'"{git_blob_sha1(data)}"'
            self._send(200, data, headers, head=self.command == "HEAD")

    return Handler
