"""Find LQ/HQ pairs in folder trees whose exact layout is not known in advance.

GGT-100K's inner layout is unknown (see README, "Dataset layouts"), so pairing accepts the common
variants: LQ/HQ folder names (``LQ|lq|input|low|degraded|LR`` and ``GT|HQ|hq|gt|target|high|clean|HR``),
a split (``train``/``test``) and a category taken from any path component, and the same stem
with different extensions. Files that cannot be paired are returned, never dropped silently.

Also accepted (docs/data.md, "Layouts"):

* a role in the file name instead of the folder: ``0001_lq.png`` + ``0001_gt.jpg`` in one folder;
* explicit glob patterns (:func:`pairs_from_globs`) and a list file of pairs (:func:`pairs_from_list`);
* sidecar metadata (:func:`attach_metadata`): a prompt/caption ``<stem>.txt|.caption|.prompt|.json`` next to
  the LQ or HQ image or in a sibling ``prompt(s)/caption(s)/text/meta(data)`` folder, and metadata tables
  (``*.csv``, ``*.tsv``, ``*.jsonl``, ``*.json``; e.g. the Hugging Face ``metadata.jsonl`` with ``file_name``).
"""
from __future__ import annotations

import csv
import glob as _glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ggt_ir.utils.image_io import IMAGE_EXTS

LQ_DIR_NAMES = {"lq", "input", "inputs", "low", "degraded", "lr"}
HQ_DIR_NAMES = {"gt", "hq", "target", "targets", "high", "clean", "hr"}
SPLIT_NAMES = {"train": "train", "training": "train", "test": "test", "testing": "test",
               "val": "val", "valid": "val", "validation": "val"}
# canonical category <- accepted spellings (compared after lower-casing and dropping - _ and spaces)
CATEGORY_ALIASES = {
    "general": ("general", "mixed", "mix", "generic"),
    "rain": ("rain", "rainy", "derain", "deraining"),
    "haze": ("haze", "hazy", "dehaze", "dehazing", "fog", "foggy"),
    "snow": ("snow", "snowy", "desnow", "desnowing"),
    "low-light": ("lowlight", "low-light", "lol", "dark", "night"),
    "old-photo": ("oldphoto", "old-photo", "oldphotos", "old"),
}
_CATEGORY_LOOKUP = {re.sub(r"[-_ ]", "", a): c for c, aliases in CATEGORY_ALIASES.items() for a in aliases}
# a role written into the file name: <base>_lq.png, <base>-GT.jpg, <base>.input.png ...
_STEM_ROLE = re.compile(r"^(?P<base>.+?)[-_.](?P<role>lq|lr|input|low|degraded|gt|hq|hr|target|high|clean)$",
                        re.IGNORECASE)
# metadata
TEXT_SIDECAR_EXTS = (".txt", ".caption", ".prompt")
TABLE_EXTS = {".csv", ".tsv", ".jsonl", ".json"}
PROMPT_DIR_NAMES = ("prompt", "prompts", "caption", "captions", "text", "texts", "txt", "meta", "metadata", "json")
PROMPT_FIELDS = ("prompt", "caption", "text", "description", "instruction", "edit_prompt", "restoration_prompt")
FILE_FIELDS = ("file_name", "filename", "file", "image", "image_path", "img", "path", "lq", "lq_path", "input",
               "input_path", "hq", "hq_path", "gt", "gt_path", "target", "target_path", "name", "key", "id", "stem")


def normalize_category(part: str) -> str | None:
    return _CATEGORY_LOOKUP.get(re.sub(r"[-_ ]", "", part.lower()))


@dataclass
class Pair:
    key: str
    lq: Path
    gt: Path
    category: str = "unknown"
    split: str = "unknown"
    prompt: str = ""  # from sidecar metadata, when present
    meta: dict = field(default_factory=dict)  # other sidecar / table fields (JSON-serializable)


@dataclass
class PairingReport:
    pairs: list[Pair] = field(default_factory=list)
    unpaired: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    metadata_files: list[Path] = field(default_factory=list)  # metadata tables that matched at least one pair
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        prompts = sum(1 for p in self.pairs if p.prompt)
        extra = f", {prompts} with a prompt" if prompts else ""
        return f"{len(self.pairs)} pairs, {len(self.unpaired)} unpaired files{extra}"


def _role(part: str) -> str | None:
    p = part.lower()
    if p in LQ_DIR_NAMES:
        return "lq"
    if p in HQ_DIR_NAMES:
        return "gt"
    return None


def _stem_role(stem: str) -> tuple[str, str] | None:
    m = _STEM_ROLE.match(stem)
    if not m:
        return None
    role = _role(m["role"])
    return (m["base"], role) if role else None


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) under ``folder``, sorted; hidden files and folders are ignored."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            (images if path.suffix.lower() in IMAGE_EXTS else others).append(path)
    return sorted(images), sorted(others)


def list_images(folder: Path) -> list[Path]:
    return _walk(Path(folder))[0]


def _split_and_category(parts) -> tuple[str, str]:
    split = next((SPLIT_NAMES[p.lower()] for p in parts if p.lower() in SPLIT_NAMES), "unknown")
    category = next((c for c in map(normalize_category, parts) if c), "unknown")
    return split, category


def find_pairs(root: str | Path, *, metadata: bool = True) -> PairingReport:
    """Pair every image under ``root`` whose path has an LQ-like and an HQ-like folder (or file-name role).

    With ``metadata`` (default), prompts and other sidecar/table fields are attached (:func:`attach_metadata`).
    """
    root = Path(root)
    groups: dict[tuple, dict[str, list[Path]]] = {}
    report = PairingReport()
    images, others = _walk(root)
    for f in images:
        parts = f.relative_to(root).parts[:-1]
        roles = [(i, _role(p)) for i, p in enumerate(parts) if _role(p)]
        stem = f.stem
        if roles:
            idx, role = roles[-1]
            # the pairing key: every path component except the LQ/HQ one, plus the stem
            context = parts[:idx] + parts[idx + 1 :]
        elif _stem_role(stem):
            stem, role = _stem_role(stem)
            context = parts
        else:
            report.unpaired.append((f, "not under an LQ or HQ folder"))
            continue
        groups.setdefault((context, stem), {"lq": [], "gt": []})[role].append(f)
    for (context, stem), members in sorted(groups.items()):
        lqs, gts = members["lq"], members["gt"]
        if len(lqs) == 1 and len(gts) == 1:
            split, category = _split_and_category(context)
            key = "/".join((*context, stem))
            report.pairs.append(Pair(key=key, lq=lqs[0], gt=gts[0], category=category, split=split))
        else:
            why = (f"no HQ partner for stem '{stem}'" if not gts else
                   f"no LQ partner for stem '{stem}'" if not lqs else
                   f"ambiguous: {len(lqs)} LQ and {len(gts)} HQ files share stem '{stem}'")
            report.unpaired.extend((f, why) for f in lqs + gts)
    if metadata:
        attach_metadata(report, root, others)
    return report


def pairs_from_two_folders(lq_dir: str | Path, gt_dir: str | Path, *, metadata: bool = True) -> PairingReport:
    """BasicSR-style pairing: same stem in two folders (any extension)."""
    lq_dir, gt_dir = Path(lq_dir), Path(gt_dir)
    lq_imgs, lq_other = _walk(lq_dir)
    gt_imgs, gt_other = _walk(gt_dir)
    lqs = {p.relative_to(lq_dir).with_suffix("").as_posix(): p for p in lq_imgs}
    gts = {p.relative_to(gt_dir).with_suffix("").as_posix(): p for p in gt_imgs}
    report = PairingReport()
    for key in sorted(lqs.keys() & gts.keys()):
        parts = Path(key).parts
        category = next((c for c in map(normalize_category, parts[:-1]) if c), "unknown")
        report.pairs.append(Pair(key=key, lq=lqs[key], gt=gts[key], category=category))
    report.unpaired += [(lqs[k], "no HQ partner in " + str(gt_dir)) for k in sorted(lqs.keys() - gts.keys())]
    report.unpaired += [(gts[k], "no LQ partner in " + str(lq_dir)) for k in sorted(gts.keys() - lqs.keys())]
    if metadata:
        attach_metadata(report, None, lq_other + gt_other)
    return report


# ----------------------------------------------------------------------------- globs and list files
def _static_prefix(pattern: str) -> tuple[str, list[str]]:
    """('dir/without/wildcards', [remaining pattern segments])."""
    parts = Path(pattern).parts
    i = 0
    while i < len(parts) - 1 and not any(c in parts[i] for c in "*?["):
        i += 1
    return str(Path(*parts[:i])) if i else "", list(parts[i:])


def _glob_key(path: Path, prefix: str, literal_segments: set[str]) -> str:
    rel = path.relative_to(prefix) if prefix else path
    parts = [p for p in rel.parts[:-1] if p not in literal_segments and not _role(p)]
    stem = path.stem
    if _stem_role(stem):
        stem = _stem_role(stem)[0]
    return "/".join((*parts, stem))


def pairs_from_globs(lq_glob: str, hq_glob: str, root: str | Path | None = None, *,
                     metadata: bool = True) -> PairingReport:
    """Pair the files two glob patterns match (``**`` recurses), by their path below the patterns' fixed
    prefix with the pattern's literal folder names and LQ/HQ folder names left out, and the stem.

    ``pairs_from_globs("data/**/input/*.png", "data/**/target/*")`` pairs ``data/rain/input/x.png`` with
    ``data/rain/target/x.jpg`` under the key ``rain/x``. Relative patterns are relative to ``root``.
    """
    base = Path(root) if root is not None else None
    sides = {}
    for role, pattern in (("lq", lq_glob), ("gt", hq_glob)):
        full = pattern if (base is None or os.path.isabs(pattern)) else str(base / pattern)
        prefix, rest = _static_prefix(full)
        literal = {s for s in rest[:-1] if not any(c in s for c in "*?[") and s != "**"}
        files = sorted(Path(p) for p in _glob.glob(full, recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTS)
        by_key: dict[str, list[Path]] = {}
        for f in files:
            by_key.setdefault(_glob_key(f, prefix, literal), []).append(f)
        sides[role] = by_key
    report = PairingReport()
    lqs, gts = sides["lq"], sides["gt"]
    for key in sorted(lqs.keys() | gts.keys()):
        a, b = lqs.get(key, []), gts.get(key, [])
        if len(a) == 1 and len(b) == 1:
            ctx = a[0].relative_to(base).parts if base is not None and a[0].is_relative_to(base) else a[0].parts
            split, category = _split_and_category(ctx[:-1])
            report.pairs.append(Pair(key=key, lq=a[0], gt=b[0], category=category, split=split))
        else:
            why = (f"no HQ partner for key '{key}' in {hq_glob}" if not b else
                   f"no LQ partner for key '{key}' in {lq_glob}" if not a else
                   f"ambiguous: {len(a)} LQ and {len(b)} HQ files share key '{key}'")
            report.unpaired.extend((f, why) for f in a + b)
    if metadata:
        others = []
        for p in {f.parent for f in (*[x for v in lqs.values() for x in v], *[x for v in gts.values() for x in v])}:
            others += [q for q in p.iterdir() if q.is_file() and q.suffix.lower() not in IMAGE_EXTS]
        attach_metadata(report, base, sorted(others))
    return report


_LIST_LQ = ("lq", "lq_path", "input", "input_path", "low", "degraded", "lr")
_LIST_HQ = ("hq", "hq_path", "gt", "gt_path", "target", "target_path", "high", "clean", "hr")


def pairs_from_list(list_file: str | Path, root: str | Path | None = None) -> PairingReport:
    """Pairs from a list file. Relative paths are relative to ``root`` (default: the list file's folder).

    * ``.csv``/``.tsv`` with a header naming an LQ column (``lq``, ``input``, ...) and an HQ column
      (``hq``, ``gt``, ``target``, ...), optional ``key``, ``category``, ``split``, ``prompt`` and any other
      columns (kept as metadata);
    * ``.jsonl`` (one such object a line) or ``.json`` (a list of them);
    * anything else: ``<lq> <hq> [category [split]]`` a line (tab-separated when the line has a tab),
      ``#`` starts a comment.
    """
    list_file = Path(list_file)
    base = Path(root) if root is not None else list_file.parent
    rows: list[dict] = []
    suffix = list_file.suffix.lower()
    text = list_file.read_text(encoding="utf-8-sig")
    if suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif suffix == ".json":
        rows = json.loads(text)
    else:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if not line:
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            rows.append(dict(zip(("lq", "hq", "category", "split"), cols)))
    report = PairingReport()
    seen: set[str] = set()
    for n, row in enumerate(rows, 1):
        row = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        lq_v = next((row[k] for k in _LIST_LQ if row.get(k)), None)
        hq_v = next((row[k] for k in _LIST_HQ if row.get(k)), None)
        if not lq_v or not hq_v:
            report.notes.append(f"{list_file}:{n}: no LQ or HQ column in {sorted(row)}")
            continue
        lq, hq = (Path(v) if os.path.isabs(v) else base / v for v in (str(lq_v), str(hq_v)))
        missing = [p for p in (lq, hq) if not p.is_file()]
        if missing:
            report.unpaired += [(p, f"listed in {list_file}:{n} but does not exist") for p in missing]
            report.unpaired += [(p, f"its partner in {list_file}:{n} does not exist") for p in (lq, hq)
                                if p not in missing]
            continue
        ctx = lq.relative_to(base).parts if lq.is_relative_to(base) else lq.parts[-2:]
        split, category = _split_and_category(ctx[:-1])
        key = str(row.get("key") or _glob_key(lq, str(base) if lq.is_relative_to(base) else str(lq.parent), set()))
        if key in seen:
            report.unpaired += [(lq, f"duplicate key '{key}' in {list_file}:{n}"), (hq, f"duplicate key '{key}'")]
            continue
        seen.add(key)
        cat = row.get("category") and (normalize_category(str(row["category"])) or str(row["category"]))
        prompt = next((str(row[k]) for k in PROMPT_FIELDS if row.get(k)), "")
        meta = {k: v for k, v in row.items() if k not in (*_LIST_LQ, *_LIST_HQ, "key", "category", "split",
                                                           *PROMPT_FIELDS) and _jsonable(v)}
        report.pairs.append(Pair(key=key, lq=lq, gt=hq, category=cat or category,
                                 split=SPLIT_NAMES.get(str(row.get("split") or "").lower(), split)
                                 if row.get("split") else split, prompt=prompt, meta=meta))
    return report


# ----------------------------------------------------------------------------- metadata
def _jsonable(v) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None


def _prompt_and_meta(d: dict) -> tuple[str, dict]:
    lower = {str(k).lower(): v for k, v in d.items()}
    prompt = next((str(lower[k]) for k in PROMPT_FIELDS if isinstance(lower.get(k), str) and lower[k].strip()), "")
    meta = {k: v for k, v in d.items() if str(k).lower() not in PROMPT_FIELDS and str(k).lower() not in FILE_FIELDS
            and (_jsonable(v) or (isinstance(v, (list, dict)) and len(json.dumps(v)) < 2000))}
    return prompt.strip(), meta


def _read_sidecar(path: Path) -> tuple[str, dict]:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError:
            return "", {}
        if isinstance(d, str):
            return d.strip(), {}
        return _prompt_and_meta(d) if isinstance(d, dict) else ("", {})
    return text.strip(), {}


def _table_rows(path: Path) -> list[dict] | None:
    """Rows of a metadata table, or None when the file is not a table of per-image rows."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            return list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            return [r for r in rows if isinstance(r, dict)]
        d = json.loads(text)
    except (OSError, ValueError, csv.Error):
        return None
    if isinstance(d, list):
        return [r for r in d if isinstance(r, dict)]
    if isinstance(d, dict) and d and all(isinstance(v, (dict, str)) for v in d.values()):
        # {"name": {...fields}} or {"name": "prompt"}
        return [{"file_name": k, **(v if isinstance(v, dict) else {"prompt": v})} for k, v in d.items()]
    return None


def attach_metadata(report: PairingReport, root: str | Path | None, other_files: list[Path] | None = None) -> None:
    """Fill ``Pair.prompt`` / ``Pair.meta`` from sidecar files and metadata tables (in place).

    Sidecars (same stem, next to the LQ or HQ image or in a sibling ``prompt(s)/caption(s)/text/meta``
    folder) win over table rows. Table rows are matched by their file column (resolved against the
    table's folder), then by unique stem, then by key.
    """
    if not report.pairs:
        return
    if other_files is None:
        other_files = _walk(Path(root))[1] if root is not None else []
    files = {p for p in other_files}
    by_stem_dir: dict[tuple[Path, str], list[Path]] = {}
    for f in files:
        if f.suffix.lower() in (*TEXT_SIDECAR_EXTS, ".json"):
            by_stem_dir.setdefault((f.parent, f.stem), []).append(f)
    used_sidecars: set[Path] = set()

    def sidecar_for(img: Path) -> list[Path]:
        found = list(by_stem_dir.get((img.parent, img.stem), []))
        # sibling prompt folder: <...>/<role dir>/<sub>/<stem>.png -> <...>/prompt/<sub>/<stem>.txt
        parents = img.parents
        for depth, d in enumerate(parents):
            if _role(d.name):
                sub = img.parent.relative_to(d)
                for name in PROMPT_DIR_NAMES:
                    found += by_stem_dir.get((d.parent / name / sub, img.stem), [])
                break
            if depth > 6:
                break
        return found

    for p in report.pairs:
        for img in (p.lq, p.gt):
            for sc in sorted(sidecar_for(img), key=lambda x: (x.suffix.lower() == ".json", str(x))):
                prompt, meta = _read_sidecar(sc)
                used_sidecars.add(sc)
                if prompt and not p.prompt:
                    p.prompt = prompt
                for k, v in meta.items():
                    p.meta.setdefault(k, v)

    # tables
    by_path = {}
    stems: dict[str, list[Pair]] = {}
    by_key = {p.key: p for p in report.pairs}
    for p in report.pairs:
        for img in (p.lq, p.gt):
            by_path[os.path.normpath(str(img.resolve()))] = p
            stems.setdefault(img.stem, []).append(p)
    for table in sorted(f for f in files if f.suffix.lower() in TABLE_EXTS and f not in used_sidecars):
        rows = _table_rows(table)
        if not rows:
            continue
        matched = 0
        for row in rows:
            lower = {str(k).lower(): v for k, v in row.items()}
            target = None
            for fk in FILE_FIELDS:
                v = lower.get(fk)
                if not isinstance(v, str) or not v:
                    continue
                cand = by_path.get(os.path.normpath(str((table.parent / v).resolve())))
                if cand is None:
                    hits = {id(x): x for x in stems.get(Path(v).stem, [])}
                    if len(hits) > 1:  # the same stem in several places: those below the table's folder
                        hits = {i: x for i, x in hits.items() if x.lq.is_relative_to(table.parent)}
                    cand = next(iter(hits.values())) if len(hits) == 1 else by_key.get(v)
                if cand is not None:
                    target = cand
                    break
            if target is None:
                continue
            matched += 1
            prompt, meta = _prompt_and_meta(row)
            if prompt and not target.prompt:
                target.prompt = prompt
            for k, v in meta.items():
                if k.lower() not in ("category", "split"):
                    target.meta.setdefault(k, v)
        if matched:
            report.metadata_files.append(table)
            report.notes.append(f"metadata table {table}: {matched} of {len(rows)} rows matched a pair")
