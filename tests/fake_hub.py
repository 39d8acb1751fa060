"""A local HTTP server on 127.0.0.1 that speaks as much of the Hugging Face Hub API as huggingface_hub 2.4
needs for ``snapshot_download``, ``hf_hub_download``, ``dataset_info`` / ``model_info`` and ``list_repo_tree``
(read from its source: ``hf_api.py``, ``file_download.py``, ``_snapshot_download.py``), plus plain file URLs.

Endpoints (``HF_ENDPOINT=http://127.0.0.1:PORT``):

* ``GET /api/{models|datasets}/ORG/NAME[/revision/REV][?blobs=true]`` -> ``{id, sha, siblings: [...]}``
* ``GET /api/{models|datasets}/ORG/NAME/tree/REV[/PATH]?recursive=...`` -> file/directory entries, paginated
  with a GitHub-style ``Link: <...>; rel="next"`` header (``page_size`` entries per page)
* ``HEAD|GET /[datasets/]ORG/NAME/resolve/REV/PATH`` -> the bytes, with ``X-Repo-Commit``, ``ETag`` (the git
  blob sha1), ``Content-Length``, ``Accept-Ranges``; ``Range: bytes=N-`` gives 206 + ``Content-Range``.
  Unknown repos / files answer 404 with ``X-Error-Code: RepoNotFound`` / ``EntryNotFound``, as the Hub does.
* ``GET|HEAD /plain/PATH`` -> a plain file (torchvision / CLIP / GitHub-release style URLs), Range supported.

Faults for the tests: ``delay_per_chunk`` (seconds per 16 KiB chunk: slow enough to kill a download in the
middle), ``cut_once`` ({path: n} — the first GET of that file sends ``Content-Length`` of the whole file but
only ``n`` bytes, then closes the connection). Every request is appended to ``requests`` as
``(method, path, range header)``.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 16 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, page_size: int = 1000):
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}  # (models|datasets, repo id) -> {path: bytes}
        self.commits: dict[tuple[str, str], str] = {}
        self.plain: dict[str, bytes] = {}  # /plain/<path> -> bytes
        self.page_size = page_size
        self.delay_per_chunk = 0.0
        self.cut_once: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- content
    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "dataset") -> str:
        kind = repo_type + "s"
        self.repos[(kind, repo_id)] = dict(files)
        sha = hashlib.sha1(json.dumps(sorted((p, git_blob_sha1(b)) for p, b in files.items())).encode()).hexdigest()
        self.commits[(kind, repo_id)] = sha
        return sha

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def gets(self, path_part: str) -> list[tuple[str, str, str | None]]:
        """GET requests whose path contains ``path_part``."""
        return [r for r in self.requests if r[0] == "GET" and path_part in r[1]]

    # -- server
    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- handling
    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(parsed.path)
        query = urllib.parse.parse_qs(parsed.query)
        with self._lock:
            self.requests.append(("HEAD" if head else "GET", path, h.headers.get("Range")))
        try:
            if path.startswith("/api/"):
                return self._api(h, path[len("/api/"):], query, parsed.query)
            if path.startswith("/plain/"):
                data = self.plain.get(path[len("/plain/"):])
                if data is None:
                    return self._error(h, 404, "EntryNotFound")
                return self._send_bytes(h, path, data, head, extra={})
            return self._resolve(h, path, head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _split_repo(self, rest: str) -> tuple[str, str, str] | None:
        """'datasets/org/name/<tail>' -> (kind, repo_id, tail)."""
        parts = rest.split("/")
        if len(parts) < 3 or parts[0] not in ("models", "datasets"):
            return None
        return parts[0], f"{parts[1]}/{parts[2]}", "/".join(parts[3:])

    def _api(self, h, rest: str, query: dict, raw_query: str) -> None:
        split = self._split_repo(rest)
        if split is None or (split[0], split[1]) not in self.repos:
            return self._error(h, 404, "RepoNotFound")
        kind, repo_id, tail = split
        files, sha = self.repos[(kind, repo_id)], self.commits[(kind, repo_id)]
        if tail == "" or tail.startswith("revision/"):
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = [{"rfilename": p, **({"size": len(b), "blobId": git_blob_sha1(b)} if blobs else {})}
                        for p, b in sorted(files.items())]
            return self._json(h, {"id": repo_id, "sha": sha, "siblings": siblings, "private": False})
        if tail.startswith("tree/"):
            _, _, sub = tail[len("tree/"):].partition("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries = self._tree(files, sub.strip("/"), recursive)
            start = int(query.get("cursor", ["0"])[0])
            page = entries[start:start + self.page_size]
            headers = {}
            if start + self.page_size < len(entries):
                q = dict(urllib.parse.parse_qsl(raw_query))
                q["cursor"] = str(start + self.page_size)
                nxt = f"{self.url}/api/{rest}?{urllib.parse.urlencode(q)}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            return self._json(h, page, headers)
        return self._error(h, 404, "EntryNotFound")

    @staticmethod
    def _tree(files: dict[str, bytes], sub: str, recursive: bool) -> list[dict]:
        prefix = sub + "/" if sub else ""
        out, dirs = [], set()
        for p, b in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            parts = rel.split("/")
            for i in range(1, len(parts)):  # the folders on the way
                d = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()})
            if recursive or len(parts) == 1:
                out.append({"type": "file", "path": p, "size": len(b), "oid": git_blob_sha1(b)})
        return out

    def _resolve(self, h, path: str, head: bool) -> None:
        parts = path.strip("/").split("/")
        kind = "datasets" if parts and parts[0] == "datasets" else "models"
        if kind == "datasets":
            parts = parts[1:]
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(h, 404, "RepoNotFound")
        repo_id, filename = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
        if (kind, repo_id) not in self.repos:
            return self._error(h, 404, "RepoNotFound")
        sha = self.commits[(kind, repo_id)]
        data = self.repos[(kind, repo_id)].get(filename)
        if data is None:
            return self._error(h, 404, "EntryNotFound", {"X-Repo-Commit": sha})
        return self._send_bytes(h, filename, data, head, extra={"X-Repo-Commit": sha,
                                                                 "ETag": f'"{git_blob_sha1(data)}"'})

    def _send_bytes(self, h, name: str, data: bytes, head: bool, extra: dict) -> None:
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0] or 0)
        body = data[start:]
        h.send_response(206 if start else 200)
        for k, v in extra.items():
            h.send_header(k, v)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        limit = None
        with self._lock:
            if name in self.cut_once:
                limit = self.cut_once.pop(name)
        sent = 0
        for i in range(0, len(body), CHUNK):
            chunk = body[i:i + CHUNK]
            if limit is not None and sent + len(chunk) > limit:
                h.wfile.write(chunk[: limit - sent])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(2)  # drop the connection in the middle of the body
                return
            h.wfile.write(chunk)
            sent += len(chunk)
            if self.delay_per_chunk:
                h.wfile.flush()
                time.sleep(self.delay_per_chunk)

    @staticmethod
    def _json(h, obj, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    @staticmethod
    def _error(h, status: int, code: str, headers: dict | None = None) -> None:
        body = json.dumps({"error": code}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)


def serve_as_hub(monkeypatch, tmp_path, **kwargs) -> FakeHub:
    """A started FakeHub (``kwargs``: its faults), huggingface_hub pointed at it and allowed online, its cache
    under ``tmp_path``. The caller stops it."""
    import huggingface_hub.constants as hfc

    server = FakeHub(**kwargs).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return server
