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
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

import braceexpand
import numpy as np

from ggt_ir.data.shard_format import check_shard_name, manifest_candidates

HF_ENDPOINT_DEFAULT = "https://huggingface.co"


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
class PipeRefused(ValueError):
    """A ``pipe:`` URL that did not come from the user (a manifest, a folder listing): never run."""


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


def open_url(url: str, allow_pipe: bool = False) -> IO[bytes]:
    """Open one URL for reading (one attempt; see :func:`open_shard` for retries).

    ``pipe:<command>`` runs the command, so it is honoured only with ``allow_pipe=True``: for URLs the user
    wrote (an option file, ``--set``, ``--urls``), never for names read from a manifest or a folder."""
    path = local_path(url)
    if path is not None:
        return open(path, "rb", buffering=1 << 20)
    if url.startswith("pipe:"):
        if not allow_pipe:
            raise PipeRefused(f"{url[:80]}: a pipe: URL runs a shell command; it is honoured only where you wrote "
                              "it yourself (urls: in an option file, --set, --urls), not in a manifest or listing")
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


# ----------------------------------------------------------------------------- reading tars
BLOCK = 512
_MAGIC_AT, _MAGICS = 257, (b"ustar\x0000", b"ustar  \x00")


@dataclass
class TarSample:
    """One sample: its member suffixes in tar order (the value is ``None`` for members not read), its position
    in the shard, and what went wrong with the tar structure while reading it (None: nothing)."""

    key: str
    members: dict
    ordinal: int
    problem: str | None = None
    cut: bool = False  # the data ended inside this sample


class TarReader:
    """A small streaming tar reader (ustar, GNU long names, pax) for shards, more forgiving than ``tarfile``'s
    stream mode where it matters here:

    * a damaged header in the middle (checksum mismatch) costs only the member(s) it hid: the reader scans
      forward to the next valid header and goes on (``tarfile`` stops reading the shard there);
    * data that ends early yields the sample being read, marked ``cut``, and sets ``truncated``;
    * members the caller does not want (``want(key, suffix)`` false) are skipped with a seek where the stream
      can seek, so a pass over the json members of a local shard reads a few KB per sample.

    Samples are the members of consecutive equal keys (webdataset's rule: the key ends at the first dot
    of the file name; names starting with ``__`` and folders are ignored).
    """

    def __init__(self, stream: IO[bytes], url: str, want=None):
        self.stream, self.url, self.want = stream, url, want
        self.offset = 0
        self.truncated: str | None = None  # why the data ended early (inside a header or a member)
        self.damaged: list[str] = []  # damaged stretches skipped
        self.end_marker = False  # the end-of-archive block was seen
        self._first: bytes | None = None
        self._size = None
        try:
            if stream.seekable():
                self._size = os.fstat(stream.fileno()).st_size
        except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
            self._size = None

    # -- low level
    def _read(self, n: int) -> bytes:
        chunks, left = [], n
        while left > 0:
            b = self.stream.read(left)
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        self.offset += len(data)
        return data

    def _skip(self, n: int) -> bool:
        """Skip n bytes; False when the data ends first."""
        if self._size is not None:
            if self.offset + n > self._size:
                self.stream.seek(0, 2)
                self.offset = self._size
                return False
            self.stream.seek(n, 1)
            self.offset += n
            return True
        while n > 0:
            b = self._read(min(n, 1 << 20))
            if not b:
                return False
            n -= len(b)
        return True

    def check_start(self) -> None:
        """Read the first block and check that it starts a tar (raises ValueError otherwise)."""
        first = self._read(BLOCK)
        if len(first) < BLOCK:
            raise ValueError(f"not a tar file ({len(first)} bytes)")
        if first != b"\0" * BLOCK and self._parse(first) is None:
            raise ValueError("not a tar file (no valid tar header at the start)")
        self._first = first

    def _header_block(self) -> bytes:
        if self._first is not None:
            b, self._first = self._first, None
            return b
        return self._read(BLOCK)

    @staticmethod
    def _parse(block: bytes):
        try:
            return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return None

    def _resync(self, bad_at: int):
        """After a damaged header at ``bad_at``: the next block that is a valid header, or None at the end."""
        while True:
            block = self._read(BLOCK)
            if len(block) < BLOCK:
                self.damaged.append(f"damaged tar header at byte {bad_at} and no valid header after it")
                return None
            if block[_MAGIC_AT:_MAGIC_AT + 8] in _MAGICS and (ti := self._parse(block)) is not None:
                self.damaged.append(f"damaged tar header at byte {bad_at} ({self.offset - BLOCK - bad_at} bytes "
                                    "skipped to the next valid header)")
                return ti

    def members(self):
        """Yield ``(name, data, complete, note)`` per regular member: ``data`` is None for unwanted members;
        ``complete`` is False for the member the data ended in; ``note`` names a damaged stretch skipped just
        before the member."""
        long_name, pax, note = None, {}, None
        while True:
            at = self.offset
            block = self._header_block()
            if not block:
                return  # (no end-of-archive block: end_marker stays False)
            if len(block) < BLOCK:
                self.truncated = f"the tar data ends inside a header at byte {at}"
                return
            if block == b"\0" * BLOCK:
                self.end_marker = True
                return
            ti = self._parse(block)
            if ti is None:
                ti = self._resync(at)
                if ti is None:
                    self.truncated = self.damaged[-1]
                    return
                note, long_name, pax = self.damaged[-1], None, {}
            if ti.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE):
                data = self._read(_padded(ti.size))
                if len(data) < ti.size:
                    self.truncated = f"the tar data ends inside a header at byte {at}"
                    return
                if ti.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = data[: ti.size].rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif ti.type == tarfile.XHDTYPE:
                    pax = _pax_records(data[: ti.size])
                continue
            name = pax.get("path") or long_name or ti.name
            size = int(pax["size"]) if "size" in pax else ti.size
            long_name, pax = None, {}
            km = split_member_name(name) if ti.isreg() else None
            if km is not None and (self.want is None or self.want(*km)):
                data = self._read(_padded(size))
                if len(data) < size:
                    self.truncated = f"the tar data ends inside member {name} ({len(data)} of {size} bytes)"
                    yield name, None, False, note
                    return
                yield name, data[:size], True, note
            else:
                if not self._skip(_padded(size)):
                    self.truncated = f"the tar data ends inside member {name}"
                    if km is not None:
                        yield name, None, False, note
                    return
                if km is not None:
                    yield name, None, True, note
            note = None

    def samples(self) -> Iterator[TarSample]:
        """Group members into samples, in tar order; close the stream at the end."""
        cur: TarSample | None = None
        n = 0
        try:
            try:
                for name, data, complete, note in self.members():
                    k, suffix = split_member_name(name)
                    if cur is None or k != cur.key:
                        if cur is not None:
                            yield cur
                            n += 1
                        cur = TarSample(k, {}, n)
                    if note and cur.problem is None:
                        cur.problem = note
                    if complete:
                        cur.members[suffix] = data
                    else:
                        cur.cut, cur.problem = True, self.truncated
            except OSError as e:  # a network stream that breaks off
                self.truncated = f"reading failed: {type(e).__name__}: {e}"
                if cur is not None:
                    cur.cut, cur.problem = True, self.truncated
            self.close()
            if cur is not None:
                if self.truncated and not cur.cut and not self.end_marker:
                    cur.problem = cur.problem or self.truncated  # e.g. a pipe: command failed after it
                yield cur
        finally:
            self.close()

    def close(self) -> None:
        if getattr(self.stream, "closed", False):
            return
        try:
            self.stream.close()
        except OSError as e:  # a pipe: command that failed after writing (part of) the shard
            if self.truncated is None:
                self.truncated = str(e)
        except Exception:  # noqa: BLE001
            pass


def _padded(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _pax_records(data: bytes) -> dict:
    out, pos = {}, 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            break
        if length <= 0:
            break
        rec = data[sp + 1 : pos + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


def open_shard(url: str, retries: int = 3, delay: float = 1.0, allow_pipe: bool = False,
               want=None) -> TarReader:
    """Open a shard and check its first header: a :class:`TarReader`. Retries ``retries`` times with
    exponential back-off, then raises :class:`ShardOpenError` (a shard that cannot be opened is an error).
    A refused ``pipe:`` URL is an error at once."""
    last: BaseException | None = None
    for attempt in range(retries + 1):
        stream = None
        try:
            stream = open_url(url, allow_pipe=allow_pipe)
            reader = TarReader(stream, url, want)
            reader.check_start()
            return reader
        except PipeRefused:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to open counts, reported below
            last = e
            if stream is not None:
                try:
                    stream.close()
                except Exception as e2:  # noqa: BLE001
                    last = e2 if isinstance(e, (ValueError, tarfile.HeaderError)) else last
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


def iter_tar_samples(reader: TarReader, url: str | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(tar_key, {suffix: bytes})`` per sample, in tar order; raises :class:`ShardTruncated` at the end
    when the data ended early (the sample the data ended in is not yielded)."""
    last: str | None = None
    for s in reader.samples():
        if s.cut:
            break
        yield s.key, s.members
        last = s.key
    if reader.truncated:
        raise ShardTruncated(url or reader.url, last, OSError(reader.truncated))


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
def read_json_url(url: str, allow_pipe: bool = False) -> dict | None:
    try:
        with open_url(url, allow_pipe=allow_pipe) as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:  # noqa: BLE001 - a missing manifest is normal for hand-made shards
        return None


def manifest_shard_url(manifest_url: str, name) -> str:
    """The URL of a shard a manifest names: always the file ``name`` next to the manifest (checked to be a
    plain file name, so a manifest cannot make us run a command or read elsewhere)."""
    check_shard_name(name, manifest_url)
    if manifest_url.startswith("pipe:"):
        raise ValueError(f"{manifest_url}: a manifest read through pipe: cannot say where its shards are; "
                         "give the shards as urls:")
    base = manifest_url.rpartition("/")[0]
    return f"{base}/{name}" if base else name


def shard_counts_from_manifests(urls: list[str], manifest: str | None = None,
                                allow_pipe: bool = False) -> list[int | None]:
    """Samples per shard (None where unknown) from the manifest(s) next to the shards, or from ``manifest``."""
    return [e.get("samples") if e else None for e in manifest_entries(urls, manifest, allow_pipe)]


def manifest_entries(urls: list[str], manifest: str | None = None, allow_pipe: bool = False) -> list[dict | None]:
    """The manifest entry of every shard (None where there is none), from ``manifest`` or the manifests next to
    the shards."""
    loaded: dict[str, dict] = {}

    def entries(murl: str) -> dict[str, dict]:
        if murl not in loaded:
            m = read_json_url(murl, allow_pipe=allow_pipe and murl == manifest)
            loaded[murl] = {s["name"]: s for s in m["shards"] if isinstance(s, dict) and "name" in s} \
                if isinstance(m, dict) and isinstance(m.get("shards"), list) else {}
        return loaded[murl]

    out: list[dict | None] = []
    for u in urls:
        name = u.rpartition("/")[2]
        e = None
        for c in ([manifest] if manifest else manifest_candidates(u)):
            e = entries(c).get(name)
            if e is not None:
                break
        if e is not None and "samples" in e:
            try:
                e = dict(e, samples=int(e["samples"]))
            except (TypeError, ValueError):
                e = {k: v for k, v in e.items() if k != "samples"}  # a count we cannot read: unknown
        out.append(e)
    return out


# ----------------------------------------------------------------------------- decoding
_TV_EXTS = {"png", "jpg", "jpeg", "webp"}


def _decode_qoi(data: bytes) -> np.ndarray:
    try:
        import qoi
    except ImportError:  # pragma: no cover - a pinned dependency
        raise DecodeError("a .qoi member needs the 'qoi' package (pip install qoi)") from None
    try:
        img = qoi.decode(data)
    except (RuntimeError, ValueError) as e:
        raise DecodeError(f"QOI: {str(e).splitlines()[0][:200]}") from None
    return img[..., :3] if img.shape[2] == 4 else img


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
    if ext == "qoi":  # ggt-ir shards build --encode qoi
        return _decode_qoi(data)
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
