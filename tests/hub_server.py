"""A local stand-in for the Hugging Face Hub: the part of its HTTP API that `huggingface_hub` calls to create a repo,
read a revision's files and card metadata, make a branch and push one commit (preupload, LFS batch + upload, NDJSON
commit). The real client talks to it over HTTP with `HF_ENDPOINT` pointed here, so what is tested is the request
sequence the library really sends. Every request is logged and every commit recorded (files, sizes, upload modes);
`fail_next` injects errors (e.g. a transient 503 on the commit endpoint) and `tokens` decides who may write.
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

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
LFS_SUFFIXES = (".safetensors", ".bin", ".png", ".pt", ".gz")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub's threshold for text files


@dataclass
class Stored:
    size: int
    content: bytes  # kept for LFS files too, so tests can read back exactly what was pushed
    lfs: bool

    @property
    def oid(self) -> str:  # what the Hub's preupload answers: sha256 for LFS files, the git blob sha1 otherwise
        if self.lfs:
            return hashlib.sha256(self.content).hexdigest()
        return hashlib.sha1(b"blob %d\0" % self.size + self.content).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    snapshots: dict[str, dict[str, Stored]] = field(default_factory=dict)  # commit sha -> files


class FakeHub:
    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = tokens if tokens is not None else {"hf_test_write": "write"}  # token -> "write" | "read"
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[dict] = []  # {method, path, status}
        self.commits: list[dict] = []  # every accepted commit
        self._failures: list[list] = []  # [endpoint, status, remaining]
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, endpoint: str, status: int, times: int = 1) -> None:
        """The next `times` requests to `endpoint` (commit, preupload, lfs-batch, create, info) answer `status`."""
        self._failures.append([endpoint, status, times])

    def files(self, repo_id: str, revision: str = "main") -> dict[str, Stored]:
        repo = self.repos[repo_id]
        return repo.snapshots[repo.branches[revision]]

    def seed(self, repo_id: str, files: dict[str, bytes]) -> None:
        """A repository that already holds a model (pushed by someone else)."""
        self._create(repo_id, private=False)
        self._apply(repo_id, "main", {p: self._stored(p, c) for p, c in files.items()}, [], "seed")

    # ----------------------------------------------------------------------------------------------- state changes

    def _stored(self, path: str, content: bytes) -> Stored:
        return Stored(len(content), content, path.endswith(LFS_SUFFIXES) or len(content) >= LFS_MIN_SIZE)

    def _create(self, repo_id: str, private: bool) -> None:
        self.repos[repo_id] = Repo(private)
        sha = hashlib.sha1(repo_id.encode()).hexdigest()  # the Hub's first commit adds .gitattributes
        attributes = self._stored(".gitattributes", b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
        self.repos[repo_id].snapshots[sha] = {".gitattributes": attributes}
        self.repos[repo_id].branches["main"] = sha

    def _apply(self, repo_id, branch, added: dict[str, Stored], deleted: list[str], summary: str) -> str:
        repo = self.repos[repo_id]
        parent = repo.branches[branch]
        def gone(p):
            return any(p == d or p.startswith(d.rstrip("/") + "/") for d in deleted)
        files = {p: f for p, f in repo.snapshots[parent].items() if not gone(p)}
        files.update(added)
        sha = hashlib.sha1(f"{parent}{summary}{sorted((p, f.oid) for p, f in files.items())}".encode()).hexdigest()
        repo.snapshots[sha], repo.branches[branch] = files, sha
        self.commits.append({"repo": repo_id, "revision": branch, "summary": summary, "sha": sha, "deleted": deleted,
                             "files": {p: f.size for p, f in added.items()},
                             "lfs": sorted(p for p, f in added.items() if f.lfs)})
        return sha


def _front_matter(files: dict[str, Stored]) -> dict | None:
    readme = files.get("README.md")
    match = re.match(r"^---\n(.*?)\n---", readme.content.decode(), re.S) if readme else None
    return yaml.safe_load(match.group(1)) if match else None


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the hub keeps its own log
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while (size := int(self.rfile.readline().strip(), 16)) > 0:
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload=None, headers: dict | None = None) -> None:
            data = json.dumps(payload if payload is not None else {}).encode()
            self.send_response(status)
            headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
            hub.requests.append({"method": self.command, "path": urlsplit(self.path).path, "status": status})

        def _error(self, status: int, message: str, code: str | None = None) -> None:
            headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
            self._send(status, {"error": message}, headers)

        def _injected(self, endpoint: str) -> bool:
            for failure in hub._failures:
                if failure[0] == endpoint and failure[2] > 0:
                    failure[2] -= 1
                    self._error(failure[1], f"injected {failure[1]}")
                    return True
            return False

        def _may(self, access: str, repo_id: str | None = None) -> bool:
            """Answer 401/403/404 as the Hub does, or True when the caller may go on."""
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            role = hub.tokens.get(token)
            if token and role is None:
                self._error(401, "Invalid credentials in Authorization header")
                return False
            if access == "write" and role != "write":
                self._error(401 if role is None else 403, "You don't have the rights to write to this repository")
                return False
            repo = hub.repos.get(repo_id) if repo_id else None
            if repo_id and (repo is None or (repo.private and role is None)):
                self._error(404, "Repository not found", "RepoNotFound")
                return False
            return True

        def do_GET(self):
            path = unquote(urlsplit(self.path).path)
            if path == "/api/whoami-v2":
                return self._send(200, {"name": "tester", "type": "user"}) if self._may("read") else None
            m = re.fullmatch(rf"/api/models/{REPO}(?:/revision/(?P<rev>.+))?", path)
            if not m or self._injected("info") or not self._may("read", m["repo"]):
                return None if m else self._error(404, "not found")
            repo, rev = hub.repos[m["repo"]], m["rev"] or "main"
            if rev not in repo.branches:
                return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            files = repo.snapshots[repo.branches[rev]]
            self._send(200, {"id": m["repo"], "sha": repo.branches[rev], "private": repo.private,
                             "siblings": [{"rfilename": p} for p in sorted(files)], "cardData": _front_matter(files)})

        def do_PUT(self):
            m = re.fullmatch(r"/lfs-upload/(?P<oid>[0-9a-f]{64})", urlsplit(self.path).path)
            data = self._body()
            if not m or hashlib.sha256(data).hexdigest() != m["oid"]:
                return self._error(400, "LFS object does not match its oid")
            hub.lfs[m["oid"]] = data
            self._send(200)

        def do_POST(self):
            path, body = unquote(urlsplit(self.path).path), self._body()
            if path == "/api/repos/create":
                return self._create(json.loads(body))
            if path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body))
            routes = {"preupload": rf"/api/models/{REPO}/preupload/(?P<rev>.+)",
                      "commit": rf"/api/models/{REPO}/commit/(?P<rev>.+)",
                      "branch": rf"/api/models/{REPO}/branch/(?P<rev>.+)",
                      "lfs-batch": rf"/{REPO}\.git/info/lfs/objects/batch"}
            for endpoint, pattern in routes.items():
                if m := re.fullmatch(pattern, path):
                    if self._injected(endpoint) or not self._may("write", m["repo"]):
                        return None
                    return getattr(self, "_" + endpoint.replace("-", "_"))(m["repo"], m.groupdict().get("rev"), body)
            self._error(404, "not found")

        def _create(self, payload):
            repo_id = f"{payload['organization']}/{payload['name']}"
            if self._injected("create") or not self._may("write"):
                return None
            if repo_id in hub.repos:  # the Hub names the existing repository in its 409
                return self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"},
                                  {"X-Error-Message": "You already created this model repo"})
            with hub._lock:
                hub._create(repo_id, payload.get("visibility") == "private" or bool(payload.get("private")))
            self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _validate_yaml(self, payload):
            try:
                match = re.match(r"^---\n(.*?)\n---", payload["content"], re.S)
                yaml.safe_load(match.group(1)) if match else None
            except yaml.YAMLError as e:
                return self._send(400, {"errors": [{"message": str(e)}]})
            self._send(200, {"errors": [], "warnings": []})

        def _branch(self, repo_id, branch, body):
            repo = hub.repos[repo_id]
            if branch in repo.branches:
                return self._error(409, "Reference already exists")
            repo.branches[branch] = repo.branches["main"]
            self._send(200)

        def _preupload(self, repo_id, rev, body):
            repo = hub.repos[repo_id]
            current = repo.snapshots[repo.branches[rev]] if rev in repo.branches else {}
            answer = []
            for f in json.loads(body)["files"]:
                sample = base64.b64decode(f["sample"])
                lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE or b"\0" in sample
                existing = current.get(f["path"])
                answer.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                               "oid": existing.oid if existing else None})
            self._send(200, {"files": answer})

        def _lfs_batch(self, repo_id, rev, body):
            objects = []
            for obj in json.loads(body)["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in hub.lfs:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}"}}
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects})

        def _commit(self, repo_id, rev, body):
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = lines[0]["value"]
            repo = hub.repos[repo_id]
            if rev not in repo.branches:
                return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            if header.get("parentCommit") not in (None, repo.branches[rev]):
                return self._error(412, "A commit has happened since. Please refresh and try again.")
            added, deleted = {}, []
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    content = base64.b64decode(value["content"])
                    added[value["path"]] = Stored(len(content), content, False)
                elif key == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        return self._error(422, f"LFS object {value['oid']} was never uploaded")
                    content = hub.lfs[value["oid"]]
                    added[value["path"]] = Stored(len(content), content, True)
                elif key in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
            with hub._lock:
                sha = hub._apply(repo_id, rev, added, deleted, header["summary"])
            self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha})

    return Handler
