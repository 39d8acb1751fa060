"""Reading webdataset shards: URL expansion and opening (local paths, ``file:``, ``pipe:``, ``http(s)://``,
the Hugging Face Hub), tar iteration that groups members into samples and reports truncation, and
image decoding.

Used by the streaming loader (``stream.py``) and by ``ggt-ir shards verify``. Nothing heavy is imported at
module level (``huggingface_hub`` only when a Hub URL is opened, OpenCV only when decoding).
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
import time
import urllib.parse
import urllib.request
from typing import IO, Iterable, Iterator

import braceexpand
import numpy as np

HF_ENDPOINT_DEFAULT = "https://huggingface.co"
MANIFEST_SUFFIX = "-manifest.json"
SHARD_NAME = re.compile(r"^(?P<name>.+)-(?P<split>[^-/]+)-(?P<index>\d{6})\.tar$")


class ShardOpenError(OSError):
    """A shard could not be opened (after the configured retries)."""


class ShardTruncated(Exception):
    """Reading a shard stopped early: truncated or corrupt tar data, or a failing ``pipe:`` command."""

    def __init__(self, url: str, after_key: str | None, error: BaseException):
        super().__init__(f"{url}: tar data ends early or is corrupt after sample {after_key!r}: {error}")
        self.url, self.after_key, self.error = url, after_key, error


class DecodeError(ValueError):
    pass


# ----------------------------------------------------------------------------- URLs
def expand_urls(urls: str | Iterable[str]) -> list[str]:
    """Brace-expand one pattern, a ``::``-separated string of patterns, or a list of them."""
    if urls is None:
        return []
    if isinstance(urls, (str, os.PathLike)):
        urls = [u for u in str(urls).split("::") if u.strip()]
    out: list[str] = []
    for u in urls:
        out += list(braceexpand.braceexpand(str(u).strip()))
    return out


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def local_path(url: str) -> str | None:
    """The file-system path of a local URL (a path or ``file://``), else None."""
    if url.startswith("file://"):
        return urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    return url if is_local(url) else None


_HF_RESOLVE = re.compile(
    r"^(?P<endpoint>https?://[^/]+)/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)
_HF_URL = re.compile(r"^hf://(?:(?P<type>datasets|spaces|models)/)?(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<path>.+)$")


def parse_hf_url(url: str) -> dict | None:
    """``hf://datasets/ORG/REPO[@REV]/PATH`` or ``https://huggingface.co/datasets/ORG/REPO/resolve/REV/PATH``
    -> ``{repo_type, repo_id, revision, path}``; None for any other URL."""
    m = _HF_URL.match(url)
    if m:
        rtype = {"datasets": "dataset", "spaces": "space", "models": "model", None: "model"}[m["type"]]
        return {"repo_type": rtype, "repo_id": m["repo"], "revision": urllib.parse.unquote(m["rev"] or "main"),
                "path": m["path"]}
    m = _HF_RESOLVE.match(url)
    if m and _is_hf_endpoint(m["endpoint"]):
        rtype = {"datasets": "dataset", "spaces": "space", None: "model"}[m["type"]]
        return {"repo_type": rtype, "repo_id": m["repo"], "revision": urllib.parse.unquote(m["rev"]),
                "path": urllib.parse.unquote(m["path"])}
    return None


def _is_hf_endpoint(endpoint: str) -> bool:
    ends = {HF_ENDPOINT_DEFAULT, os.environ.get("HF_ENDPOINT", HF_ENDPOINT_DEFAULT).rstrip("/")}
    return endpoint.rstrip("/") in ends or endpoint.rstrip("/").endswith("://hf.co")


def hf_to_resolve_url(url: str, endpoint: str | None = None) -> str:
    """``hf://datasets/ORG/REPO@REV/PATH`` -> ``https://huggingface.co/datasets/ORG/REPO/resolve/REV/PATH``."""
    p = parse_hf_url(url)
    if p is None:
        raise ValueError(f"not a Hugging Face Hub URL: {url}")
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT_DEFAULT).rstrip("/")
    prefix = {"dataset": "datasets/", "space": "spaces/", "model": ""}[p["repo_type"]]
    rev = urllib.parse.quote(p["revision"], safe="")
    return f"{endpoint}/{prefix}{p['repo_id']}/resolve/{rev}/{urllib.parse.quote(p['path'])}"


def hf_filesystem_path(url: str) -> str:
    """The ``huggingface_hub.HfFileSystem`` path of a Hub URL: ``datasets/ORG/REPO@REV/PATH``."""
    p = parse_hf_url(url)
    if p is None:
        raise ValueError(f"not a Hugging Face Hub URL: {url}")
    prefix = {"dataset": "datasets/", "space": "spaces/", "model": ""}[p["repo_type"]]
    rev = p["revision"].replace("/", "%2F")  # HfFileSystem wants refs/pr/1 encoded
    return f"{prefix}{p['repo_id']}@{rev}/{p['path']}"


# ----------------------------------------------------------------------------- opening
class _PipeReader(io.RawIOBase):
    """stdout of a shell command; ``close()`` raises when the command failed (exit status not 0/141)."""

    def __init__(self, cmd: str):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.proc.stdout.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        self.proc.stdout.close()
        status = self.proc.wait()
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        if self.proc.stderr:
            self.proc.stderr.close()
        super().close()
        if status not in (0, 141):  # 141: SIGPIPE when we stop reading early
            raise OSError(f"pipe:{self.cmd}: exit status {status}" + (f": {err[-500:]}" if err else ""))


def open_url(url: str) -> IO[bytes]:
    """Open one URL for reading (one attempt; see :func:`open_shard` for retries)."""
    path = local_path(url)
    if path is not None:
        return open(path, "rb", buffering=1 << 20)
    if url.startswith("pipe:"):
        return io.BufferedReader(_PipeReader(url[5:]), buffer_size=1 << 20)
    if parse_hf_url(url) is not None:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise OSError(f"{url}: HF_HUB_OFFLINE is set; download the shards or unset it")
        from huggingface_hub import HfFileSystem

        return HfFileSystem().open(hf_filesystem_path(url), "rb", block_size=0)
    if url.startswith(("http://", "https://")):
        req = urllib.request.Request(url, headers={"User-Agent": "ggt-ir"})
        return urllib.request.urlopen(req, timeout=float(os.environ.get("GGT_IR_HTTP_TIMEOUT", "60")))
    raise ValueError(f"{url}: unsupported URL scheme (use a path, file://, pipe:, http(s)://, or hf://)")


def open_shard(url: str, retries: int = 3, delay: float = 1.0) -> tuple[IO[bytes], tarfile.TarFile]:
    """Open a shard and read its first header: ``(stream, tarfile)``. Retries ``retries`` times with
    exponential back-off, then raises :class:`ShardOpenError` (a shard that cannot be opened is an error)."""
    last: BaseException | None = None
    for attempt in range(retries + 1):
        stream = None
        try:
            stream = open_url(url)
            return stream, tarfile.open(fileobj=stream, mode="r|*", bufsize=1 << 20)  # 1 MiB reads, not 10 KiB
        except Exception as e:  # noqa: BLE001 - any failure to open counts, reported below
            last = e
            if stream is not None:
                try:
                    stream.close()
                except Exception:  # noqa: BLE001
                    pass
            if attempt < retries:
                time.sleep(delay * (2**attempt))
    raise ShardOpenError(f"cannot open shard {url} after {retries + 1} attempt(s): {type(last).__name__}: {last}")


def split_member_name(name: str) -> tuple[str, str] | None:
    """``dir/key.lq.png`` -> ``("dir/key", "lq.png")`` (webdataset's rule: the key ends at the first dot of the
    file name)."""
    d, _, base = name.rpartition("/")
    if base.startswith("__") or "." not in base:
        return None
    k, _, suffix = base.partition(".")
    return (f"{d}/{k}" if d else k), suffix.lower()


def iter_tar_samples(tf: tarfile.TarFile, stream: IO[bytes], url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(tar_key, {suffix: bytes})`` per sample, in tar order. Raises :class:`ShardTruncated` when the
    data ends early or is corrupt (the sample being read then is not yielded) and closes the stream."""
    key: str | None = None
    members: dict[str, bytes] = {}
    last_done: str | None = None
    try:
        try:
            for ti in tf:
                if not ti.isreg():
                    continue
                km = split_member_name(ti.name)
                if km is None:
                    continue
                k, suffix = km
                f = tf.extractfile(ti)
                data = f.read() if f is not None else b""
                if len(data) != ti.size:
                    raise tarfile.ReadError(f"member {ti.name} is {len(data)} of {ti.size} bytes")
                if k != key:
                    if key is not None:
                        yield key, members
                        last_done = key
                    key, members = k, {}
                members[suffix] = data
                tf.members = []  # streaming: don't keep every TarInfo
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise ShardTruncated(url, last_done, e) from e
        if key is not None:
            yield key, members
        try:
            stream.close()
        except OSError as e:  # a pipe: command that failed after writing (part of) the shard
            raise ShardTruncated(url, key, e) from e
    finally:
        try:
            stream.close()
        except Exception:  # noqa: BLE001
            pass


def scan_local_tar(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Index a local tar without reading the data: ``[(tar_key, {suffix: (offset, size)})]`` in tar order."""
    out: list[tuple[str, dict[str, tuple[int, int]]]] = []
    index: dict[str, int] = {}
    with tarfile.open(path, mode="r:") as tf:
        for ti in tf:
            if not ti.isreg():
                continue
            km = split_member_name(ti.name)
            if km is None:
                continue
            k, suffix = km
            if k not in index:
                index[k] = len(out)
                out.append((k, {}))
            out[index[k]][1][suffix] = (ti.offset_data, ti.size)
    return out


# ----------------------------------------------------------------------------- manifests
def manifest_candidates(url: str) -> list[str]:
    """Where the manifest of a shard would be: ``<dir>/<name>-manifest.json``, then ``<dir>/manifest.json``."""
    if url.startswith("pipe:"):
        return []
    base, _, fname = url.rpartition("/")
    m = SHARD_NAME.match(fname)
    prefix = f"{base}/" if base else ""
    out = [f"{prefix}{m['name']}{MANIFEST_SUFFIX}"] if m else []
    return out + [f"{prefix}manifest.json"]


def read_json_url(url: str) -> dict | None:
    try:
        with open_url(url) as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:  # noqa: BLE001 - a missing manifest is normal for hand-made shards
        return None


def shard_counts_from_manifests(urls: list[str], manifest: str | None = None) -> list[int | None]:
    """Samples per shard (None where unknown) from the manifest(s) next to the shards, or from ``manifest``."""
    loaded: dict[str, dict | None] = {}

    def entries(murl: str) -> dict[str, int]:
        if murl not in loaded:
            loaded[murl] = read_json_url(murl)
        m = loaded[murl]
        if not m or "shards" not in m:
            return {}
        return {s["name"]: int(s["samples"]) for s in m["shards"] if "samples" in s}

    out: list[int | None] = []
    for u in urls:
        name = u.rpartition("/")[2]
        cands = [manifest] if manifest else manifest_candidates(u)
        n = None
        for c in cands:
            n = entries(c).get(name)
            if n is not None:
                break
        out.append(n)
    return out


# ----------------------------------------------------------------------------- decoding
_TV_EXTS = {"png", "jpg", "jpeg", "webp"}


def image_ext(suffix: str) -> str:
    """``lq.png`` -> ``png``."""
    return suffix.rpartition(".")[2].lower()


def decode_image(data: bytes, ext: str = "", decoder: str = "cv2") -> np.ndarray:
    """Decode image bytes to an RGB HWC array (uint8, or uint16 for 16-bit PNG/TIFF); no EXIF rotation.

    OpenCV is the default (bench/RESULTS.md): as fast as torchvision.io on PNG/JPEG/WebP here, it reads every
    format and bit depth, and it survives corrupt data, whereas torchvision 0.29's PNG decoder segfaults the
    process after a few libpng errors. ``decoder: torchvision`` (PNG/JPEG/WebP) and ``pil`` are available.
    Raises :class:`DecodeError` for corrupt or truncated data.
    """
    if not data:
        raise DecodeError("empty member")
    ext = ext.lower()
    if decoder == "torchvision" and (ext in _TV_EXTS or not ext):
        import torch
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_image as tv_decode

        try:
            t = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise DecodeError(str(e).splitlines()[-1][:200]) from None
        return t.permute(1, 2, 0).numpy()
    if decoder == "pil":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                arr = np.asarray(im.convert("RGB") if im.mode not in ("I;16", "I;16B") else im)
        except Exception as e:  # noqa: BLE001
            raise DecodeError(f"{type(e).__name__}: {e}") from None
        return arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)
    import cv2

    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # some decoders raise instead of returning None (e.g. a too-short WebP)
        raise DecodeError(f"OpenCV: {str(e).strip().splitlines()[-1][:200]}") from None
    if img is None:
        raise DecodeError("OpenCV cannot decode it (corrupt, truncated or not an image)")
    if img.ndim == 2:
        return img[..., None].repeat(3, axis=2)
    if img.shape[2] == 4:
        return img[..., 2::-1]
    return img[..., ::-1]  # BGR -> RGB as a view: only the crops taken from it are copied
