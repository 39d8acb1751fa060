"""The shard format, in one place: file names, member suffixes, manifest fields and versions.

A shard set written by ``ggt-ir shards build`` (``shards.py``), read by the streaming loader (``stream.py``)
and by ``ggt-ir shards verify`` (``shards.py``) through ``shard_io.py``:

* shards ``<name>-<split>-NNNNNN.tar``, plain webdataset tars; each sample is the members
  ``<tar key>.lq.<ext>``, ``<tar key>.hq.<ext>`` and ``<tar key>.json`` (``gt.<ext>`` is accepted for the
  HQ image of hand-made shards);
* ``<name>-manifest.json`` (or ``manifest.json``) next to them, and ``<name>-problems.tsv``.

Manifest versions: 1 (the first release); 2 adds per-shard ``category_codes`` (the category of every sample,
in tar order) and the ``encoding`` of the images (``copy`` = the original bytes), and the sample json gains
``lq_pixels``/``hq_pixels`` (:func:`pixel_digest` of the decoded source image). Readers accept both.
"""
from __future__ import annotations

import re

FORMAT = "ggt-ir-shards"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# shard bytes depend on this, not on FORMAT_VERSION: a manifest-only change must not rebuild finished shards
# (2: the json records the pixel hashes)
SHARD_LAYOUT_VERSION = 2

MANIFEST_SUFFIX = "-manifest.json"
MANIFEST_FALLBACK = "manifest.json"
PROBLEMS_SUFFIX = "-problems.tsv"
SHARD_NAME = re.compile(r"^(?P<name>.+)-(?P<split>[^-/]+)-(?P<index>\d{6})\.tar$")
# a shard name read from a manifest is only ever a file next to it: no folders, no scheme, no shell
PLAIN_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+=-]*$")

LQ_PREFIX = "lq."
HQ_PREFIXES = ("hq.", "gt.")
META_SUFFIX = "json"
CATEGORY_CODE_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"  # per-shard category_codes, one char per sample


def shard_file_name(name: str, split: str, index: int) -> str:
    return f"{name}-{split}-{index:06d}.tar"


def manifest_file_name(name: str) -> str:
    return f"{name}{MANIFEST_SUFFIX}"


def problems_file_name(name: str) -> str:
    return f"{name}{PROBLEMS_SUFFIX}"


def member_names(tar_key: str, lq_ext: str, hq_ext: str) -> tuple[str, str, str]:
    """The three member names of one sample."""
    return f"{tar_key}.{LQ_PREFIX}{lq_ext}", f"{tar_key}.{HQ_PREFIXES[0]}{hq_ext}", f"{tar_key}.{META_SUFFIX}"


def image_members(members) -> tuple[str | None, str | None]:
    """The suffixes of the LQ and HQ images among a sample's member suffixes (None where missing)."""
    lq = next((s for s in members if s.startswith(LQ_PREFIX)), None)
    hq = next((s for s in members if s.startswith(HQ_PREFIXES)), None)
    return lq, hq


def manifest_candidates(url: str) -> list[str]:
    """Where the manifest of a shard would be: ``<dir>/<name>-manifest.json``, then ``<dir>/manifest.json``
    (none for ``pipe:`` URLs)."""
    if url.startswith("pipe:"):
        return []
    base, _, fname = url.rpartition("/")
    m = SHARD_NAME.match(fname)
    prefix = f"{base}/" if base else ""
    out = [f"{prefix}{manifest_file_name(m['name'])}"] if m else []
    return out + [f"{prefix}{MANIFEST_FALLBACK}"]


def check_shard_name(name, where: str) -> str:
    """A shard name from a manifest must be a plain file name (it is joined to the manifest's folder and never
    run or opened as a URL); anything else is an error naming the manifest."""
    if not isinstance(name, str) or not PLAIN_FILE_NAME.match(name):
        raise ValueError(f"{where}: shard name {name!r} is not a plain file name; a manifest can only name "
                         "files next to it (refusing to open or run it). Rebuild the manifest with "
                         "`ggt-ir shards build`, or give the shards as `urls:`.")
    return name


def encode_categories(categories: list[str], table: list[str]) -> str | None:
    """Per-sample categories as one character each (index into ``table``); None when they do not fit."""
    if len(table) > len(CATEGORY_CODE_CHARS):
        return None
    index = {c: CATEGORY_CODE_CHARS[i] for i, c in enumerate(table)}
    return "".join(index[c] for c in categories)


def decode_categories(codes: str, table: list[str]) -> list[str]:
    return [table[CATEGORY_CODE_CHARS.index(ch)] for ch in codes]


def pixel_digest(arr) -> str:
    """The hash of a decoded image (RGB, HWC) that a sample's json records as ``lq_pixels``/``hq_pixels``: the
    same for every lossless encoding of the same pixels."""
    import hashlib

    import numpy as np

    h = hashlib.sha256(f"{arr.shape[0]}x{arr.shape[1]}x{arr.shape[2]}:{arr.dtype.str}:".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return f"sha256:{h.hexdigest()}"
