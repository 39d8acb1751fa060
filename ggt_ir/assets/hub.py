"""Download helpers shared by ``ggt-ir data fetch`` and ``ggt-ir weights fetch``.

* Hub repos (``huggingface_hub``; ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` are honoured): the file
  listing of one commit (:func:`list_repo_files`), the selection by ``allow_patterns`` (the same matching as
  ``snapshot_download``), what is already on disk, and the download itself (:func:`download_snapshot`).
  ``snapshot_download`` resumes a killed download at file granularity: finished files are kept (their
  metadata is in ``<local_dir>/.cache/huggingface/``), the files that were in flight start again; within one
  run a dropped connection is resumed with a ``Range`` request. A killed run leaves its in-flight
  ``*.incomplete`` files behind (they are never reused): :func:`remove_stale_partials` deletes them.
* Plain URLs (torchvision, CLIP, pyiqa, DIV2K): :func:`download_url` writes ``<file>.part`` and continues
  it with a ``Range`` request after a kill, checks size and sha256, and renames it into place.
* :func:`check_space` (``shutil.disk_usage``), :func:`extract` (zip/tar, one member folder, resumable).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

CHUNK = 1 << 20
ENV_MIRRORS = "GGT_IR_MIRRORS"  # "FROM=TO FROM2=TO2": URL prefixes to rewrite (an artifact proxy, a test server)


class FetchError(RuntimeError):
    """A download or extraction that cannot go on; the message says what to do."""


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


# ----------------------------------------------------------------------------- Hub listings
@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


def hub_page(repo_id: str, repo_type: str = "dataset") -> str:
    return f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"


def list_repo_files(repo_id: str, repo_type: str = "dataset", revision: str | None = None
                    ) -> tuple[str, list[RemoteFile]]:
    """(commit sha, every file with its size) of the repo at ``revision`` (default: the main branch), from the
    Hub's tree listing. Errors name the repo and what to do."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint())
    try:
        info = api.repo_info(repo_id, repo_type=repo_type, revision=revision)
        files = [RemoteFile(f.path, int(f.size or 0)) for f in
                 api.list_repo_tree(repo_id, repo_type=repo_type, revision=info.sha, recursive=True)
                 if isinstance(f, RepoFile)]
    except GatedRepoError as e:
        raise FetchError(f"{repo_id} is gated: accept its licence at {hub_page(repo_id, repo_type)} and log in "
                         f"(`hf auth login`, or set HF_TOKEN), then run this again ({_first_line(e)})") from None
    except RepositoryNotFoundError as e:
        raise FetchError(f"{repo_type} repo {repo_id} not found on {endpoint()} (private or misspelt? "
                         f"{_first_line(e)})") from None
    except RevisionNotFoundError as e:
        raise FetchError(f"{repo_id}: revision {revision!r} not found ({_first_line(e)})") from None
    except (HfHubHTTPError, OSError) as e:
        raise FetchError(f"cannot list {repo_id} on {endpoint()}: {_first_line(e)} (offline? the manual steps "
                         "are printed with --dry-run)") from None
    return info.sha, files


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def select(files: Iterable[RemoteFile], allow: list[str] | None, ignore: list[str] | None = None) -> list[RemoteFile]:
    """The files ``snapshot_download(allow_patterns=allow, ignore_patterns=ignore)`` downloads."""
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(list(files), allow_patterns=allow, ignore_patterns=ignore, key=lambda f: f.path))


def fnmatch_escape(path: str) -> str:
    """A pattern that matches exactly ``path`` (fnmatch has no escape character: wrap metacharacters)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def present(files: Iterable[RemoteFile], local_dir: Path) -> tuple[list[RemoteFile], list[RemoteFile]]:
    """(files already in ``local_dir`` with the listed size, files still to download)."""
    done, todo = [], []
    for f in files:
        p = Path(local_dir) / f.path
        (done if p.is_file() and p.stat().st_size == f.size else todo).append(f)
    return done, todo


def free_bytes(path: Path) -> int:
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_space(need: int, where: Path, what: str = "the download") -> tuple[bool, str]:
    """(fits, one line): ``need`` bytes against the free space of the file system holding ``where``."""
    free = free_bytes(where)
    ok = need <= free
    return ok, (f"{what} needs {human(need)}; {human(free)} free on the file system of {Path(where).absolute()}"
                f" -> {'fits' if ok else 'does NOT fit'}")


def remove_stale_partials(local_dir: Path, min_age_s: float = 600.0) -> tuple[int, int]:
    """Delete the ``*.incomplete`` files a killed ``snapshot_download`` left in ``<local_dir>/.cache/huggingface``
    (each run writes its own, so they are never reused). A folder's partial files are removed only when none of
    its download locks is held (no other download is writing there); where locks are not supported, only
    partial files older than ``min_age_s`` go. Returns (files, bytes) removed."""
    from filelock import FileLock, Timeout

    root = Path(local_dir) / ".cache" / "huggingface" / "download"
    n = size = 0
    if not root.is_dir():
        return 0, 0
    by_dir: dict[Path, list[Path]] = {}
    for p in root.rglob("*.incomplete"):
        by_dir.setdefault(p.parent, []).append(p)
    now = time.time()
    for folder, partials in by_dir.items():
        locks, free = [], True
        try:
            for lock_file in folder.glob("*.lock"):
                lock = FileLock(str(lock_file), timeout=0)
                lock.acquire()
                locks.append(lock)
        except Timeout:
            free = False
        except NotImplementedError:  # no flock on this file system: fall back to the age
            free = None
        try:
            for p in partials:
                try:
                    st = p.stat()
                    if free or (free is None and now - st.st_mtime >= min_age_s):
                        p.unlink()
                        n, size = n + 1, size + st.st_size
                except OSError:
                    continue
        finally:
            for lock in locks:
                lock.release()
    return n, size


def download_snapshot(repo_id: str, *, repo_type: str = "dataset", revision: str | None = None,
                      local_dir: Path | None = None, cache_dir: Path | None = None,
                      allow_patterns: list[str] | None = None, ignore_patterns: list[str] | None = None,
                      max_workers: int = 8) -> Path:
    """``huggingface_hub.snapshot_download`` with our errors; progress bars only on a terminal."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    kwargs = {}
    if not sys.stderr.isatty():
        kwargs["tqdm_class"] = LineProgress
    try:
        path = snapshot_download(repo_id, repo_type=repo_type, revision=revision,
                                 local_dir=str(local_dir) if local_dir else None,
                                 cache_dir=str(cache_dir) if cache_dir else None,
                                 allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                                 max_workers=max_workers, endpoint=endpoint(), **kwargs)
    except GatedRepoError as e:
        raise FetchError(f"{repo_id} is gated: accept its licence at {hub_page(repo_id, repo_type)} and log in "
                         f"(`hf auth login` or HF_TOKEN) ({_first_line(e)})") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise FetchError(f"download of {repo_id} stopped: {_first_line(e)}. Run the same command again: "
                         "finished files are kept.") from None
    return Path(path)


def hub_file_download(repo_id: str, filename: str, *, local_dir: Path | None = None, repo_type: str = "model",
                      revision: str | None = None) -> Path:
    """One Hub file (``hf_hub_download``) into ``local_dir`` (or the Hugging Face cache)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision,
                                    local_dir=str(local_dir) if local_dir else None, endpoint=endpoint()))
    except GatedRepoError as e:
        raise FetchError(f"{repo_id} is gated: accept its licence at {hub_page(repo_id, repo_type)} "
                         f"({_first_line(e)})") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise FetchError(f"{repo_id}/{filename}: {_first_line(e)}") from None


class LineProgress:
    """Stands in for tqdm when output goes to a file or pipe: a plain line every 30 s (and at the end),
    no carriage returns or escape codes. Mimics what ``snapshot_download`` calls on its bars."""

    interval = 30.0

    def __init__(self, iterable=None, desc: str | None = None, total: float | None = None, initial: float = 0,
                 unit: str = "it", **_):
        self.iterable, self.desc, self.total, self.n, self.unit = iterable, desc or "", total, initial, unit
        self._last = time.monotonic()
        self.disable = False
        self.format_dict: dict = {}

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return int(self.total or 0)

    def _say(self) -> None:
        if self.unit == "B":
            done = human(self.n) + (f" / {human(self.total)}" if self.total else "")
        else:
            done = f"{int(self.n)}" + (f"/{int(self.total)}" if self.total else "") + f" {self.unit}"
        print(f"  {self.desc}: {done}", flush=True)

    def update(self, n: float | None = 1) -> None:
        self.n += n or 0
        if time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self._say()

    def refresh(self, *a, **k) -> None:
        pass

    def set_description(self, desc: str | None = None, *a, **k) -> None:
        self.desc = desc or self.desc

    set_description_str = set_description

    def set_postfix_str(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        if self.n:
            self._say()
            self.n = 0

    @classmethod
    def get_lock(cls):
        import threading

        if not hasattr(cls, "_lock"):
            cls._lock = threading.RLock()
        return cls._lock

    @classmethod
    def set_lock(cls, lock) -> None:
        cls._lock = lock


# ----------------------------------------------------------------------------- plain URLs
def mirrors_from_env() -> list[tuple[str, str]]:
    pairs = []
    for item in os.environ.get(ENV_MIRRORS, "").split():
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise FetchError(f"${ENV_MIRRORS}: {item!r} is not FROM=TO (a URL prefix and its replacement)")
        pairs.append((src, dst))
    return pairs


def apply_mirrors(url: str, mirrors: list[tuple[str, str]]) -> str:
    for src, dst in mirrors:
        if url.startswith(src):
            return dst + url[len(src):]
    return url


def sha256_prefix_of(name: str) -> str:
    """torch.hub's convention: ``<name>-<first hex digits of the sha256>.<ext>`` (checked after download)."""
    m = re.search(r"-([a-f0-9]{6,64})\.", name)
    return m.group(1) if m else ""


def download_url(url: str, dst: Path, *, sha256: str = "", sha256_prefix: str = "", retries: int = 5,
                 timeout: float = 60.0, say=print) -> Path:
    """Download ``url`` to ``dst`` through ``dst.part``; a later call continues the part with a Range request.
    The size (Content-Length / Content-Range) and, when given, the sha256 (or its prefix) are checked before
    the part is renamed to ``dst``. A mismatch deletes the part and raises :class:`FetchError`."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    total = None
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "ggt-ir", **({"Range": f"bytes={have}-"} if have else {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if have and r.status == 200:  # the server ignored the Range: start again
                    have = 0
                    part.unlink(missing_ok=True)
                crange = r.headers.get("Content-Range")
                if crange and "/" in crange and crange.rsplit("/", 1)[1].isdigit():
                    total = int(crange.rsplit("/", 1)[1])
                elif r.headers.get("Content-Length"):
                    total = have + int(r.headers["Content-Length"])
                if have:
                    say(f"  resuming {dst.name} at {human(have)}" + (f" of {human(total)}" if total else ""))
                with open(part, "ab") as f:
                    while True:
                        chunk = r.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the part already holds everything
                total = have
            else:
                raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            attempt += 1
            if attempt > retries:
                raise FetchError(f"{url}: {getattr(e, 'reason', e)} after {retries} retries; run again to continue "
                                 f"from {part} ({human(part.stat().st_size if part.exists() else 0)} so far)") from None
            time.sleep(min(2 ** attempt, 30))
            continue
        size = part.stat().st_size if part.exists() else 0
        if total is not None and size < total:  # the connection ended early: continue
            attempt += 1
            if attempt > retries:
                raise FetchError(f"{url}: stopped at {human(size)} of {human(total)}; run again to continue")
            continue
        break
    if total is not None and size != total:
        part.unlink(missing_ok=True)
        raise FetchError(f"{url}: got {size} bytes, expected {total}; the partial file was removed, run again")
    if sha256 or sha256_prefix:
        digest = _sha256(part)
        want = sha256 or sha256_prefix
        if not digest.startswith(want):
            part.unlink(missing_ok=True)
            raise FetchError(f"{url}: sha256 {digest[:16]}... does not match the expected {want[:16]}... "
                             f"(a wrong file or a corrupt download; removed, nothing was put at {dst})")
    os.replace(part, dst)
    return dst


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- archives
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _safe_member(name: str) -> str | None:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts or name.startswith("/"):
        return None
    return "/".join(parts)


def archive_members(archive: Path) -> list[tuple[str, int]]:
    """(member path, size) of every regular file of a zip or tar archive."""
    import tarfile
    import zipfile

    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            return [(i.filename, i.file_size) for i in z.infolist() if not i.is_dir()]
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            return [(m.name, m.size) for m in t.getmembers() if m.isfile()]
    raise FetchError(f"{archive}: not a zip or tar archive this tool can read (7z/rar: extract it by hand)")


def find_member_dir(archive: Path, dir_name: str) -> str:
    """The folder path inside ``archive`` whose last component is ``dir_name`` (e.g. ``RealSRVal_crop128``)."""
    found = set()
    for name, _ in archive_members(archive):
        parts = name.split("/")
        for i, p in enumerate(parts[:-1]):
            if p == dir_name:
                found.add("/".join(parts[: i + 1]))
    if len(found) != 1:
        tops = sorted({n.split("/")[0] for n, _ in archive_members(archive)})[:10]
        raise FetchError(f"{archive}: {'no' if not found else 'more than one'} folder named {dir_name!r} "
                         f"({sorted(found) if found else 'top level: ' + ', '.join(tops)})")
    return found.pop()


def extract(archive: Path, dest: Path, member_dir: str = "", say=print) -> int:
    """Extract the regular files below ``member_dir`` (all when empty) of a zip/tar archive into ``dest``,
    without the ``member_dir`` prefix. Files already there with the right size are skipped, so a killed
    extraction continues; each file is written to a temporary name and renamed. Returns files written."""
    import tarfile
    import zipfile

    archive, dest = Path(archive), Path(dest)
    prefix = member_dir.strip("/") + "/" if member_dir else ""
    written = 0

    def target(name: str) -> Path | None:
        safe = _safe_member(name)
        if safe is None or not safe.startswith(prefix):
            return None
        return dest / safe[len(prefix):]

    def put(t: Path, size: int, opener) -> None:
        nonlocal written
        if t.is_file() and t.stat().st_size == size:
            return
        t.parent.mkdir(parents=True, exist_ok=True)
        tmp = t.with_name(f".tmp-{os.getpid()}-{t.name}")
        with opener() as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
        os.replace(tmp, t)
        written += 1

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                t = None if info.is_dir() else target(info.filename)
                if t is not None:
                    put(t, info.file_size, lambda info=info: z.open(info))
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for m in tf:
                t = target(m.name) if m.isfile() else None
                if t is not None:
                    put(t, m.size, lambda m=m: tf.extractfile(m))
    else:
        raise FetchError(f"{archive}: not a zip or tar archive this tool can read (7z/rar: extract it by hand)")
    say(f"  extracted {written} file(s) from {archive.name}" + (f" ({member_dir}/)" if member_dir else "")
        + f" into {dest}")
    return written
