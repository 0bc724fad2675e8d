"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, so that the real `huggingface_hub` client code
(`create_repo`, `upload_folder` with regular and LFS files, `model_info`, `list_repo_tree`, `hf_hub_download`,
`snapshot_download`, `ModelCard.validate`) and diffusers' loading by repo id run end to end in tests.

It serves only what those calls use, with the Hub's semantics where the tests depend on them: a commit is applied
whole or not at all, files are addressed by revision (branch or commit sha), LFS objects live apart from the
commits that name them, and missing repos, revisions and files answer 404 with the Hub's `X-Error-Code`.
`drop_next(...)` makes the server cut the connection in the middle of a chosen request, to test interrupted
uploads. Point the client at it with `HF_ENDPOINT` (read when huggingface_hub is imported) and
`HF_HUB_DISABLE_XET=1` (plain LFS uploads).
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import parse_qs, unquote, urlparse

import yaml

LFS_PATTERNS = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt|gif|mp4|png)$")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass
class Repo:
    private: bool = False
    commits: List[tuple] = field(default_factory=list)  # (sha, {path: content or ("lfs", oid)}), oldest first

    @property
    def head(self):
        return self.commits[-1]

    def files_at(self, revision: str) -> Optional[Dict[str, object]]:
        if revision == "main":
            return self.head[1]
        for sha, files in self.commits:
            if sha == revision:
                return files
        return None

    def sha_of(self, revision: str) -> Optional[str]:
        return self.head[0] if revision == "main" else next((s for s, _ in self.commits if s == revision), None)


class LocalHub:
    """`with LocalHub() as hub:` serves at `hub.endpoint` until the block ends; `hub.repos` holds the state."""

    def __init__(self, user: str = "tester"):
        self.user = user
        self.repos: Dict[str, Repo] = {}
        self.lfs: Dict[str, bytes] = {}
        self.requests: List[str] = []
        self.errors: List[str] = []
        self._drops: List[tuple] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def drop_next(self, method: str, path_pattern: str, times: int = 1) -> None:
        """Cut the connection, after reading half the body, of the next `times` requests whose method is `method`
        and whose path matches `path_pattern` (a regex), without answering."""
        self._drops.append((method, re.compile(path_pattern), times))

    def files(self, repo_id: str, revision: str = "main") -> Dict[str, bytes]:
        """The repo's files at `revision`, LFS files resolved to their content."""
        files = self.repos[repo_id].files_at(revision)
        return {path: self.lfs[c[1]] if isinstance(c, tuple) else c for path, c in files.items()}

    def _should_drop(self, method: str, path: str) -> bool:
        with self._lock:
            for i, (m, pattern, times) in enumerate(self._drops):
                if m == method and pattern.search(path):
                    self._drops[i] = (m, pattern, times - 1)
                    if times - 1 == 0:
                        del self._drops[i]
                    return True
        return False

    def _commit(self, repo: Repo, files: Dict[str, object]) -> str:
        digest = hashlib.sha1(
            repr(
                (
                    repo.head[0] if repo.commits else "",
                    sorted((p, c if isinstance(c, tuple) else git_blob_sha(c)) for p, c in files.items()),
                )
            ).encode()
        ).hexdigest()
        repo.commits.append((digest, files))
        return digest

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            # -- plumbing --------------------------------------------------------------------------------------
            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(length)

            def _send(self, status: int, body=b"", headers: Optional[dict] = None, head: bool = False):
                if not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, str(value))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, status: int, code: Optional[str], message: str, head: bool = False):
                self._send(status, {"error": message}, {"X-Error-Code": code} if code else {}, head=head)

            def _dispatch(self, method: str):
                url = urlparse(self.path)
                path, query = unquote(url.path), parse_qs(url.query)
                hub.requests.append(f"{method} {path}")
                if hub._should_drop(method, path):
                    length = int(self.headers.get("Content-Length") or 0)
                    self.rfile.read(length // 2)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                for pattern, handler in ROUTES:
                    match = re.fullmatch(pattern, path)
                    if match and handler.__name__.split("_")[0] == method.lower():
                        try:
                            return handler(self, query, **match.groupdict())
                        except Exception as error:  # a server bug: answer 500 and keep it for the test to show
                            hub.errors.append(f"{method} {path}: {error!r}")
                            return self._error(500, None, repr(error), head=method == "HEAD")
                self._error(404, None, f"no route for {method} {path}")

            def do_GET(self):
                self._dispatch("GET")

            def do_HEAD(self):
                self._dispatch("HEAD")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            # -- routes ----------------------------------------------------------------------------------------
            def _repo(self, repo_id: str, head: bool = False) -> Optional[Repo]:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
                return repo

            def _files_at(self, repo_id: str, revision: str, head: bool = False):
                """(repo, its files at `revision`), or None after answering 404 as the Hub does."""
                repo = self._repo(repo_id, head=head)
                if repo is None:
                    return None
                files = repo.files_at(revision)
                if files is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
                return repo, files

            def post_create(self, query):
                payload = json.loads(self._body())
                repo_id = f"{payload.get('organization') or hub.user}/{payload['name']}"
                if repo_id in hub.repos:  # the Hub's answer names the existing repo, which exist_ok=True returns
                    return self._send(
                        409, {"error": "You already created this model repo", "url": f"{hub.endpoint}/{repo_id}"}
                    )
                repo = hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
                hub._commit(repo, {".gitattributes": GITATTRIBUTES})
                self._send(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})

            def post_validate_yaml(self, query):
                content = json.loads(self._body()).get("content", "")
                match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)  # the card's YAML front matter
                try:
                    if match is None:
                        raise ValueError("the card has no YAML metadata block")
                    metadata = yaml.safe_load(match.group(1)) or {}
                    if not isinstance(metadata, dict):
                        raise ValueError("the metadata must be a mapping")
                except Exception as error:  # the Hub answers 400 with the reason
                    return self._send(400, {"error": f"Invalid YAML metadata: {error}"})
                self._send(200, {"errors": [], "warnings": []})

            def get_info(self, query, repo_id, revision="main"):
                found = self._files_at(repo_id, revision)
                if found is None:
                    return
                repo, files = found
                self._send(
                    200,
                    {
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": repo.sha_of(revision),
                        "private": repo.private,
                        "siblings": [{"rfilename": p} for p in sorted(files)],
                    },
                )

            def get_tree(self, query, repo_id, revision, prefix=""):
                found = self._files_at(repo_id, revision)
                if found is None:
                    return
                files = found[1]
                prefix = (prefix or "").strip("/")
                entries, folders = [], set()
                for path in sorted(files):
                    if prefix and not path.startswith(prefix + "/"):
                        continue
                    parts = path[len(prefix) + 1 if prefix else 0 :].split("/")
                    if len(parts) > 1 and query.get("recursive", ["false"])[0] != "true":
                        folders.add(f"{prefix}/{parts[0]}" if prefix else parts[0])
                        continue
                    for depth in range(1, len(parts)):
                        folders.add("/".join(([prefix] if prefix else []) + parts[:depth]))
                    content = files[path]
                    if isinstance(content, tuple):
                        oid, size = content[1], len(hub.lfs[content[1]])
                        pointer = lfs_pointer(oid, size)
                        entries.append(
                            {
                                "type": "file",
                                "path": path,
                                "size": size,
                                "oid": git_blob_sha(pointer),
                                "lfs": {"oid": oid, "size": size, "pointerSize": len(pointer)},
                            }
                        )
                    else:
                        entries.append(
                            {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha(content)}
                        )
                entries += [
                    {"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
                    for f in sorted(folders)
                ]
                self._send(200, entries)

            def _resolve(self, repo_id, revision, path, head):
                found = self._files_at(repo_id, revision, head=head)
                if found is None:
                    return
                repo, files = found
                if path not in files:
                    return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}", head=head)
                content = files[path]
                headers = {"X-Repo-Commit": repo.sha_of(revision)}
                if isinstance(content, tuple):
                    oid = content[1]
                    content = hub.lfs[oid]
                    headers.update({"ETag": f'"{oid}"', "X-Linked-Etag": f'"{oid}"', "X-Linked-Size": len(content)})
                else:
                    headers["ETag"] = f'"{git_blob_sha(content)}"'
                self._send(200, content, headers, head=head)

            def get_resolve(self, query, repo_id, revision, path):
                self._resolve(repo_id, revision, path, head=False)

            def head_resolve(self, query, repo_id, revision, path):
                self._resolve(repo_id, revision, path, head=True)

            def post_preupload(self, query, repo_id, revision):
                if self._repo(repo_id) is None:
                    return
                files = json.loads(self._body())["files"]
                modes = [
                    {
                        "path": f["path"],
                        "uploadMode": "lfs" if LFS_PATTERNS.match(f["path"]) or f["size"] > 10_000_000 else "regular",
                        "shouldIgnore": False,
                    }
                    for f in files
                ]
                self._send(200, {"files": modes, "commitOid": self._repo(repo_id).head[0]})

            def post_lfs_batch(self, query, repo_id):
                if self._repo(repo_id) is None:
                    return
                objects = []
                for obj in json.loads(self._body())["objects"]:
                    entry = {"oid": obj["oid"], "size": obj["size"]}
                    if obj["oid"] not in hub.lfs:  # already stored objects need no upload
                        entry["actions"] = {"upload": {"href": f"{hub.endpoint}/lfs-upload/{obj['oid']}", "header": {}}}
                    objects.append(entry)
                self._send(
                    200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
                )

            def put_lfs_upload(self, query, oid):
                content = self._body()
                if hashlib.sha256(content).hexdigest() != oid:
                    return self._send(400, {"error": "the content does not match its sha256"})
                hub.lfs[oid] = content
                self._send(200, {})

            def post_commit(self, query, repo_id, revision):
                repo = self._repo(repo_id)
                if repo is None:
                    return
                files = dict(repo.files_at(revision) or {})
                summary = ""
                for line in self._body().splitlines():  # applied to a copy: all of it or nothing
                    op = json.loads(line)
                    key, value = op["key"], op["value"]
                    if key == "header":
                        summary = value.get("summary", "")
                        parent = value.get("parentCommit")
                        if parent and parent != repo.head[0]:
                            return self._send(412, {"error": "A commit has happened since. Please refresh."})
                    elif key == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif key == "lfsFile":
                        if value["oid"] not in hub.lfs:
                            return self._send(422, {"error": f"LFS object {value['oid']} was not uploaded"})
                        files[value["path"]] = ("lfs", value["oid"])
                    elif key == "deletedFile":
                        files.pop(value["path"], None)
                    elif key == "deletedFolder":
                        files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                sha = hub._commit(repo, files)
                self._send(
                    200,
                    {
                        "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{sha}",
                        "commitOid": sha,
                        "commitMessage": summary,
                        "success": True,
                    },
                )

        name = r"(?P<repo_id>[^/]+/[^/]+)"
        ROUTES = [
            (r"/api/repos/create", Handler.post_create),
            (r"/api/validate-yaml", Handler.post_validate_yaml),
            (rf"/api/models/{name}", Handler.get_info),
            (rf"/api/models/{name}/revision/(?P<revision>[^/]+)", Handler.get_info),
            (rf"/api/models/{name}/tree/(?P<revision>[^/]+)(?P<prefix>/.*)?", Handler.get_tree),
            (rf"/api/models/{name}/preupload/(?P<revision>[^/]+)", Handler.post_preupload),
            (rf"/api/models/{name}/commit/(?P<revision>[^/]+)", Handler.post_commit),
            (rf"/{name}\.git/info/lfs/objects/batch", Handler.post_lfs_batch),
            (r"/lfs-upload/(?P<oid>[0-9a-f]{64})", Handler.put_lfs_upload),
            (rf"/{name}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", Handler.get_resolve),
            (rf"/{name}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", Handler.head_resolve),
        ]
        return Handler
