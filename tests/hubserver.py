"""A Hugging Face Hub look-alike for the tests: the HTTP calls huggingface_hub 0.36 makes to
create a repo, commit files (regular and Git LFS) and download them, served from memory.

    python tests/hubserver.py --port 0 --token hf_xxx [--max-seconds 900]

prints `listening on http://127.0.0.1:PORT` and serves until killed or until
--max-seconds pass. `GET /_test/state` shows the repos and their commits.
"""

import argparse
import base64
import datetime
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

USER = "tester"
LFS_SUFFIXES = (".h5", ".safetensors", ".bin", ".npz", ".msgpack", ".ckpt", ".pb")
LFS_MIN_SIZE = 1 << 20


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.repos = {}  # repo_id -> {"private", "created", "commits": [ {oid, title, date, files} ]}
        self.lfs = {}  # sha256 -> bytes

    def head(self, repo):
        return self.repos[repo]["commits"][-1]

    def commit(self, repo, title, files):
        oid = hashlib.sha1(f"{repo}|{len(self.repos[repo]['commits'])}|{title}|{time.time_ns()}".encode()).hexdigest()
        self.repos[repo]["commits"].append({"oid": oid, "title": title, "date": now(), "files": files})
        return oid


STORE = Store()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    token = None

    def log_message(self, *args):  # quiet: the tests read state, not logs
        pass

    # --- helpers -------------------------------------------------------------
    def base(self):
        return f"http://{self.headers.get('Host')}"

    def body(self) -> bytes:
        return self._body

    def send(self, status, payload=None, headers=None, raw=None, head=False):
        data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
        self.send_response(status)
        if raw is None and payload is not None:
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def error(self, status, code, message, head=False):
        self.send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head=head)

    def authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.token}":
            return True
        self.error(401, "Unauthorized", "Invalid credentials in Authorization header")
        return False

    def repo_or_404(self, repo, head=False):
        if repo not in STORE.repos:
            self.error(404, "RepoNotFound", f"Repository not found: {repo}", head=head)
            return None
        return STORE.repos[repo]

    def commit_at(self, repo, revision, head=False):
        commits = STORE.repos[repo]["commits"]
        if revision in ("main", "HEAD"):
            return commits[-1]
        for commit in commits:
            if commit["oid"] == revision:
                return commit
        self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        return None

    def info(self, repo, commit):
        record = STORE.repos[repo]
        return {
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0],
            "sha": commit["oid"],
            "private": record["private"],
            "disabled": False,
            "gated": False,
            "lastModified": commit["date"],
            "createdAt": record["created"],
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": None,
            "siblings": [{"rfilename": path} for path in sorted(commit["files"])],
        }

    # --- routes --------------------------------------------------------------
    def do_GET(self):
        self.route("GET")

    def do_HEAD(self):
        self.route("HEAD")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def route(self, method):
        path = unquote(urlparse(self.path).path)
        head = method == "HEAD"
        # Read before taking the store's lock: a client sending a large file slowly must not hold up the others
        # until their sends time out (as the Hub's own server never would), which once cut uploads short.
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        with STORE.lock:
            if path == "/_test/state":
                return self.send(
                    200,
                    {
                        repo: [
                            {k: c[k] for k in ("oid", "title")}
                            | {
                                "files": {
                                    p: {k: v for k, v in f.items() if k != "content"} for p, f in c["files"].items()
                                }
                            }
                            for c in r["commits"]
                        ]
                        for repo, r in STORE.repos.items()
                    },
                )
            if path == "/api/whoami-v2":
                if self.authorized():
                    self.send(
                        200,
                        {
                            "type": "user",
                            "name": USER,
                            "fullname": "Test User",
                            "orgs": [],
                            "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}},
                        },
                    )
                return
            if path == "/api/repos/create" and method == "POST":
                return self.create_repo()
            if path == "/api/validate-yaml" and method == "POST":
                self.body()
                return self.send(200, {})
            match = re.match(r"^/_lfs/([0-9a-f]{64})(/verify)?$", path)
            if match:
                return self.lfs_object(method, match[1], bool(match[2]))
            match = re.match(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$", path)
            if match and method == "POST":
                return self.lfs_batch(match["repo"])
            match = re.match(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/(?P<rev>[^/]+)$", path)
            if match and method == "POST":
                return self.preupload(match["repo"]) if match["op"] == "preupload" else self.commit(match["repo"])
            match = re.match(r"^/api/models/(?P<repo>[^/]+/[^/]+)(/revision/(?P<rev>[^/]+))?$", path)
            if match and method == "GET":
                return self.model_info(match["repo"], match["rev"] or "main")
            match = re.match(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)/?(?P<sub>.*)$", path)
            if match and method == "GET":
                return self.tree(match["repo"], match["rev"], match["sub"])
            match = re.match(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", path)
            if match and method in ("GET", "HEAD"):
                return self.resolve(match["repo"], match["rev"], match["file"], head)
            self.error(404, "NotFound", f"no route for {method} {path}", head=head)

    def create_repo(self):
        request = json.loads(self.body() or b"{}")
        if not self.authorized():
            return
        repo = f"{request.get('organization') or USER}/{request['name']}"
        url = f"{self.base()}/{repo}"
        if repo in STORE.repos:
            return self.send(409, {"error": "You already created this model repo", "url": url})
        STORE.repos[repo] = {"private": bool(request.get("private")), "created": now(), "commits": []}
        attributes = b"*.h5 filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
        STORE.commit(
            repo,
            "initial commit",
            {
                ".gitattributes": {
                    "lfs": False,
                    "oid": git_sha1(attributes),
                    "size": len(attributes),
                    "content": attributes,
                }
            },
        )
        self.send(200, {"url": url, "name": repo, "id": repo})

    def preupload(self, repo):
        request = json.loads(self.body() or b"{}")
        if not self.authorized() or self.repo_or_404(repo) is None:
            return
        current = STORE.head(repo)["files"]
        answers = []
        for item in request.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE or b"\0" in sample
            existing = current.get(item["path"])
            answers.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing["oid"] if existing else None,
                }
            )
        self.send(200, {"files": answers, "commitOid": STORE.head(repo)["oid"]})

    def lfs_batch(self, repo):
        request = json.loads(self.body() or b"{}")
        if not self.authorized() or self.repo_or_404(repo) is None:
            return
        objects = []
        for obj in request.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in STORE.lfs:
                href = f"{self.base()}/_lfs/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href}, "verify": {"href": href + "/verify"}}
            objects.append(entry)
        self.send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_object(self, method, oid, verify):
        if method == "PUT":
            data = self.body()
            if hashlib.sha256(data).hexdigest() != oid:
                return self.error(400, "BadRequest", "content does not match its oid")
            STORE.lfs[oid] = data
            return self.send(200, {})
        if verify:
            request = json.loads(self.body() or b"{}")
            if oid in STORE.lfs and len(STORE.lfs[oid]) == request.get("size"):
                return self.send(200, {"success": True})
            return self.error(404, "EntryNotFound", "object not uploaded")
        if oid not in STORE.lfs:
            return self.error(404, "EntryNotFound", "no such object", head=method == "HEAD")
        data = STORE.lfs[oid]
        self.send(
            200,
            raw=data,
            headers={"ETag": f'"{oid}"', "Content-Type": "application/octet-stream"},
            head=method == "HEAD",
        )

    def commit(self, repo):
        lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
        if not self.authorized() or self.repo_or_404(repo) is None:
            return
        files = dict(STORE.head(repo)["files"])
        title = ""
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                title = value.get("summary", "")
            elif key == "file":
                data = base64.b64decode(value["content"])
                files[value["path"]] = {"lfs": False, "oid": git_sha1(data), "size": len(data), "content": data}
            elif key == "lfsFile":
                if value["oid"] not in STORE.lfs:
                    return self.error(422, "BadRequest", f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = {"lfs": True, "oid": value["oid"], "size": len(STORE.lfs[value["oid"]])}
            elif key in ("deletedFile", "deletedFolder"):
                prefix = value["path"].rstrip("/")
                for path in [p for p in files if p == prefix or p.startswith(prefix + "/")]:
                    del files[path]
        oid = STORE.commit(repo, title, files)
        self.send(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.base()}/{repo}/commit/{oid}"})

    def model_info(self, repo, revision):
        if self.repo_or_404(repo) is None:
            return
        commit = self.commit_at(repo, revision)
        if commit is not None:
            self.send(200, self.info(repo, commit))

    def tree(self, repo, revision, sub):
        if self.repo_or_404(repo) is None:
            return
        commit = self.commit_at(repo, revision)
        if commit is None:
            return
        prefix = sub.strip("/")
        entries = []
        for path, entry in sorted(commit["files"].items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            item = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
            if entry["lfs"]:
                item["lfs"] = {"oid": entry["oid"], "size": entry["size"], "pointerSize": 134}
            entries.append(item)
        if prefix and not entries:
            return self.error(404, "EntryNotFound", f"{prefix} does not exist on {revision}")
        self.send(200, entries)

    def resolve(self, repo, revision, filename, head):
        if self.repo_or_404(repo, head) is None:
            return
        commit = self.commit_at(repo, revision, head)
        if commit is None:
            return
        entry = commit["files"].get(filename)
        if entry is None:
            return self.error(404, "EntryNotFound", f"{filename} does not exist on {revision}", head=head)
        headers = {"X-Repo-Commit": commit["oid"]}
        if entry["lfs"]:
            headers.update(
                {
                    "Location": f"{self.base()}/_lfs/{entry['oid']}",
                    "X-Linked-Etag": f'"{entry["oid"]}"',
                    "X-Linked-Size": str(entry["size"]),
                    "ETag": f'"{git_sha1(entry["oid"].encode())}"',
                }
            )
            return self.send(302, raw=b"", headers=headers, head=head)
        headers["ETag"] = f'"{entry["oid"]}"'
        self.send(200, raw=entry["content"], headers=headers, head=head)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", required=True)
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args()
    Handler.token = args.token
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    timer = threading.Timer(args.max_seconds, server.shutdown)  # never outlives a stuck test run
    timer.daemon = True
    timer.start()
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
