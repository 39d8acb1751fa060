"""The data sets the recipes and the benchmark suite use, where each lives, and ``ggt-ir data``.

    ggt-ir data list                                   the catalogue: source, licence, size, files, protocol
    ggt-ir data fetch ggt100k --dry-run                what it would download, the disk it needs, if it fits
    ggt-ir data fetch ggt100k [--split test] [--category rain] [--allow 'GGT-100K/*' ...] [--local-dir datasets]
    ggt-ir data fetch realsr | drealsr | div2k-val     download, extract and prepare a benchmark
    ggt-ir data fetch reallq250                        not downloadable here: where it lives, the folder layout
    ggt-ir data check NAME                             count a benchmark's images against what its option file expects

Exit status of ``fetch`` and ``check``: 0 when the set is in place with the expected number of images, 2
when it is in place but the count differs (the message lists what is missing or unpaired), 1 when it could
not be fetched (offline, not enough disk, a manual download, an error).

Every source, licence and count below was read from the page named in ``source`` (see docs/evaluation.md,
"Benchmark suite"); "unknown" means it was not found, not that there is none.
"""
from __future__ import annotations

import argparse
import collections
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from ggt_ir.assets import hub
from ggt_ir.assets.hub import FetchError, human

DOWNLOADS = Path("datasets/downloads")  # archives (kept: RealSR and DRealSR share one)


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    repo_type: str = "dataset"
    allow: tuple[str, ...] = ()  # default allow_patterns
    archive: str = ""  # a zip/tar file of the repo to extract from ...
    member_dir: str = ""  # ... its folder with this name


@dataclass(frozen=True)
class UrlSource:
    url: str
    archive: str
    member_dir: str = ""


@dataclass(frozen=True)
class DataSet:
    name: str
    title: str
    kind: str  # paired | lq-only | synthetic | training
    source: str  # the page that documents it
    licence: str
    size: str
    files: int | dict | None  # images (pairs) the option file expects
    option_file: str  # options/eval/<...>.yml, or "" (training data)
    protocol: str
    target: str  # default folder (relative to the working directory; the option file's dataroot)
    layout: str
    hub: HubSource | None = None
    url: UrlSource | None = None
    manual: tuple[str, ...] = ()  # download links when it can only be fetched by hand
    prepare: str = ""  # post-processing after extraction: "bicubic_x4"
    notes: tuple[str, ...] = field(default_factory=tuple)


STABLESR = HubSource("Iceclear/StableSR-TestSets", archive="StableSR_testsets.zip")
FR_NR = "FR psnr/ssim (Y of YCbCr), lpips, dists + NR niqe, musiq, maniqa-pipal, clipiqa, topiq_nr"

CATALOGUE: dict[str, DataSet] = {d.name: d for d in [
    DataSet(
        "ggt100k", "GGT-100K (103,707 train + 500 test pairs, 1024x1024, six categories)", "training",
        "https://huggingface.co/datasets/VCLab-PolyU/GGT-100K", "CC-BY-NC-ND-4.0",
        "~383 GB (whole repo: GGT-100K/, Existing-dataset/, pretrained-model/)", {"train": 103707, "test": 500},
        "options/eval/ggt100k_test.yml", "test split: " + FR_NR + ", per category",
        "datasets", "the repo's GGT-100K/ folder lands in <local-dir>/GGT-100K (its inner layout is unknown; "
        "`data fetch` pairs it with ggt_ir/data/pairing.py and reports what it cannot pair)",
        hub=HubSource("VCLab-PolyU/GGT-100K", allow=("GGT-100K/*",)),
        notes=("Existing-dataset/ (probably the comparison training data) and pretrained-model/ are fetched only "
               "with --allow 'Existing-dataset/*' / --allow 'pretrained-model/*'.",)),
    DataSet(
        "realsr", "RealSR V3 test, centre crops (StableSR's RealSRVal_crop128)", "paired",
        "https://huggingface.co/datasets/Iceclear/StableSR-TestSets (from https://github.com/csjcai/RealSR)",
        "S-Lab License 1.0 (https://github.com/IceClear/StableSR/blob/main/LICENSE.txt)",
        "~41 MB of images (LR 128x128, HR 512x512), inside a 3.06 GB zip shared with DRealSR", 100,
        "options/eval/realsr.yml", FR_NR + "; x4 super-resolution: LQ upsampled x4 bicubic (PIL) as OSEDiff does",
        "datasets/RealSR", "test_LR/, test_HR/ (same file names), test_LR_bicubic_x4/ (written by `data fetch`)",
        hub=replace(STABLESR, member_dir="RealSRVal_crop128"), prepare="bicubic_x4",
        notes=("The same 100 pairs ship in github.com/cswry/OSEDiff under preset/datasets/benchmark_realsr "
               "(copied from StableSR).",)),
    DataSet(
        "drealsr", "DRealSR test, centre crops (StableSR's DrealSRVal_crop128)", "paired",
        "https://huggingface.co/datasets/Iceclear/StableSR-TestSets (from DRealSR, Wei et al., ECCV 2020)",
        "S-Lab License 1.0 (https://github.com/IceClear/StableSR/blob/main/LICENSE.txt)",
        "~36 MB of images (LR 128x128, HR 512x512), inside a 3.06 GB zip shared with RealSR", 93,
        "options/eval/drealsr.yml", FR_NR + "; x4 super-resolution: LQ upsampled x4 bicubic (PIL) as OSEDiff does",
        "datasets/DRealSR", "test_LR/, test_HR/ (same file names), test_LR_bicubic_x4/ (written by `data fetch`)",
        hub=replace(STABLESR, member_dir="DrealSRVal_crop128"), prepare="bicubic_x4",
        notes=("The same 93 pairs ship in github.com/cswry/OSEDiff under preset/datasets/benchmark_drealsr.",)),
    DataSet(
        "reallq250", "RealLQ250 (250 real-world LQ images, no GT; DreamClear)", "lq-only",
        "https://github.com/shallowdream204/DreamClear (README, 'Inference')",
        "unknown (DreamClear's code and weights are Apache-2.0; the README states no licence for the images)",
        "unknown", 250, "options/eval/reallq250.yml", "NR niqe, musiq, maniqa-pipal, clipiqa, topiq_nr, afine_nr",
        "datasets/RealLQ250", "the images, in any sub-folders (the first folder below the root is the subset; "
        "DreamClear's example path is RealLQ250/lq/<name>.png)",
        manual=("https://drive.google.com/file/d/16uWuJOyGMw5fbXHGcl6GOmxYJb_Szrqe/view?usp=sharing",)),
    DataSet(
        "reallr200", "RealLR200 (200 real-world LR images, no GT; SeeSR)", "lq-only",
        "https://github.com/cswry/SeeSR (README, 'Test Benchmark')",
        "unknown (SeeSR's code is Apache-2.0; the README states no licence for the images)",
        "unknown", 200, "options/eval/reallr200.yml", "NR niqe, musiq, maniqa-pipal, clipiqa, topiq_nr, afine_nr; "
        "scored at the size the method outputs",
        "datasets/RealLR200", "the 200 images, in any sub-folders",
        manual=("https://drive.google.com/drive/folders/1L2VsQYQRKhWJxe6yWZU9FgBWSgBCk6mz?usp=drive_link",
                "https://connectpolyu-my.sharepoint.com/:f:/g/personal/22042244r_connect_polyu_hk/"
                "EmRLN-trNypJtO4tqleF4mAB5pVME060hRj6xuBXGsUCaA?e=PykXVx")),
    DataSet(
        "foundir-test", "FoundIR test set (1,500 pairs in 20 degradation folders, 01Blur ... 20Lowlight_Noise_JPEG)",
        "paired", "https://github.com/House-Leo/FoundIR (README 'Testset & Visual Results', Testset_meta_info.txt)",
        "unknown (the FoundIR repository's code is MIT; the README states no licence for the test set)",
        "unknown", 1500, "options/eval/foundir_test.yml",
        "FoundIR's cal_metrics.py: psnr (RGB), ssim, lpips, nima, clipiqa+_vitL14_512, niqe, musiq, maniqa-pipal "
        "(+ psnr/ssim on Y for comparison)",
        "datasets/FoundIR-test", "<NNCategory>/GT/<NNNN>.png and <NNCategory>/LQ/<NNNN>.png "
        "(unzip the GT and the LQ archive into the same root)",
        manual=("GT: https://drive.google.com/file/d/1KjRZcyA1THRzHZhX2yTGMtOdUW_wuGsI/view?usp=sharing",
                "LQ: https://drive.google.com/file/d/1wOaquAjnuzCh6Jv3CJz76mgnx4nfZgBY/view?usp=sharing")),
    DataSet(
        "div2k-val", "DIV2K validation HR (100 images, 0801-0900), degraded on the fly", "synthetic",
        "https://data.vision.ee.ethz.ch/cvl/DIV2K/",
        "academic research use (the eugenesiow/Div2k dataset card: licenses other-academic-use; the official "
        "page's terms were not read here)",
        "~449 MB zip (the size of DIV2K_valid_HR.zip on the goodfellowliu/DIV2K mirror)", 100,
        "options/eval/div2k_val_synthetic.yml",
        "SyntheticDegradation (Real-ESRGAN second-order defaults, scale 1, val_seed 0, whole images): " + FR_NR,
        "datasets/DIV2K/DIV2K_valid_HR", "0801.png ... 0900.png",
        url=UrlSource("http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip", "DIV2K_valid_HR.zip",
                      "DIV2K_valid_HR"),
        notes=("StableSR's DIV2K_V2_val (3,000 pre-degraded x4 crops) is in the StableSR-TestSets zip as well.",)),
]}


def option_path(option_file: str) -> Path:
    """An option file named relative to the repository: from the working directory when it is there, else
    from the checkout this package runs from."""
    p = Path(option_file)
    if p.is_file() or p.is_absolute():
        return p
    repo = Path(__file__).resolve().parents[2] / option_file
    return repo if repo.is_file() else p


def get(name: str) -> DataSet:
    key = name.lower().replace("_", "-")
    if key in CATALOGUE:
        return CATALOGUE[key]
    import difflib

    close = difflib.get_close_matches(key, list(CATALOGUE), n=1)
    raise FetchError(f"unknown data set {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                     + f" (known: {', '.join(CATALOGUE)})")


# ----------------------------------------------------------------------------- expected_images
def parse_expected(spec, src: str, kp: str) -> int | dict | None:
    """``expected_images``: an int (total), or {category: int}; None switches the check off."""
    if spec is None:
        return None
    if isinstance(spec, bool) or not (isinstance(spec, int) or (isinstance(spec, dict) and spec and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in spec.items()))):
        from ggt_ir.config import OptionsError

        raise OptionsError(f"{src}: {kp}.expected_images must be a count (e.g. 500), a mapping "
                           f"{{category: count}}, or null; got {spec!r}")
    return spec


def set_contents(ds) -> tuple[int, collections.Counter, list]:
    """(images, per-category counts, unpaired (path, reason)) of a built eval set."""
    cats: collections.Counter = collections.Counter()
    if hasattr(ds, "pairs"):
        cats.update(p.category for p in ds.pairs)
    elif hasattr(ds, "items"):
        cats.update(it[2] for it in ds.items)
    return len(ds), cats, list(getattr(ds, "unpaired", []))


def where_of(typed) -> str:
    for k in ("dataroot", "dataroot_lq", "dataroot_gt", "urls", "manifest"):
        v = getattr(typed, k, None)
        if v:
            return f"{v}" + (f" + {typed.dataroot_gt}" if k == "dataroot_lq" and getattr(typed, "dataroot_gt", None) else "")
    return "?"


def check_expected_images(typed, spec, src: str, kp: str, dataset=None) -> str:
    """Build the eval set (unless ``dataset`` is given) and compare its image count with ``spec``; raise
    :class:`ggt_ir.config.OptionsError` naming what is missing or unpaired. Returns a one-line summary."""
    from ggt_ir.config import OptionsError
    from ggt_ir.data import DATASETS

    spec = parse_expected(spec, src, kp)
    if spec is None:
        return f"{kp}: expected_images not set"
    ds = dataset if dataset is not None else DATASETS.get(typed.type)(typed)
    n, cats, unpaired = set_contents(ds)
    selected = getattr(typed, "categories", None)
    problems = []
    if isinstance(spec, dict):
        for cat, want in sorted(spec.items()):
            if selected and cat not in selected:
                continue
            if cats.get(cat, 0) != want:
                problems.append(f"{cat}: {cats.get(cat, 0)} (expected {want})")
        extra = sorted(set(cats) - set(spec))
        if extra:
            problems.append("categories not in expected_images: " + ", ".join(f"{c} ({cats[c]})" for c in extra))
        want_total = sum(v for c, v in spec.items() if not selected or c in selected)
    else:
        want_total = spec
        if selected:  # a total cannot be split over a category selection
            return f"{kp}: {n} images (categories {selected}; the total of {spec} is not checked)"
        if n != spec:
            problems.append(f"{n} images, expected {spec}")
    if not problems:
        return f"{kp}: {n} images, as expected"
    name = Path(src.split(" (with --set")[0]).name  # read_options appends the overrides to the file name
    hint = next((f"`ggt-ir data fetch {d.name}` (or see `ggt-ir data list`)" for d in CATALOGUE.values()
                 if d.option_file and Path(d.option_file).name == name), "the comments at the top of the option file")
    totals = f"; found {n}, expected {want_total}" if isinstance(spec, dict) else ""
    lines = [f"{src}: {kp}: the set does not hold the images it should ({'; '.join(problems)}{totals}) "
             f"in {where_of(typed)}."]
    if unpaired:
        reasons = collections.Counter(r.split(" for stem")[0].split(" in ")[0] for _, r in unpaired)
        lines.append(f"  {len(unpaired)} file(s) could not be paired ("
                     + ", ".join(f"{c} {r}" for r, c in reasons.most_common()) + "), e.g.:")
        lines += [f"    {p} ({r})" for p, r in unpaired[:10]]
    lines.append(f"  Get the complete set with {hint}, or set {kp}.expected_images: null (e.g. "
                 f"--set {kp}.expected_images=null) to score what is there.")
    raise OptionsError("\n".join(lines))


def check_option_file(path: str, overrides: list[str] | None = None, say=print) -> int:
    """Check every eval set of an option file against its ``expected_images``: 0 all as expected, 2 a count
    differs, 1 a set's folder is missing."""
    from ggt_ir.config import OptionsError, read_options
    from ggt_ir.data import DATASETS

    raw, src = read_options(path, overrides)
    rc = 0
    for name, block in (raw.get("datasets") or {}).items():
        kp = f"datasets.{name}"
        block = dict(block)
        spec = block.pop("expected_images", None)
        try:
            typed = DATASETS.check(block, src, kp, defaults={"name": name})
            typed.check(src, kp)
        except OptionsError as e:
            say(str(e))
            rc = max(rc, 1)
            continue
        try:
            say(check_expected_images(typed, spec, src, kp))
        except OptionsError as e:
            say(str(e))
            rc = max(rc, 2)
    return rc


# ----------------------------------------------------------------------------- fetch
class Fetch:
    """One ``ggt-ir data fetch`` run (arguments in ``a``; ``say`` prints)."""

    def __init__(self, ds: DataSet, a, say=print):
        self.ds, self.a, self.say = ds, a, say

    # -- where things are
    def target(self) -> Path:
        return Path(self.a.local_dir or self.ds.target)

    def manual_steps(self) -> list[str]:
        d = self.ds
        lines = [f"{d.title}", f"  source:  {d.source}", f"  licence: {d.licence}", f"  size:    {d.size}"]
        if d.hub:
            cmd = f"hf download {d.hub.repo_id} --repo-type {d.hub.repo_type}"
            if d.hub.archive:
                cmd += f" {d.hub.archive} --local-dir {self.download_dir() / d.hub.repo_id.split('/')[-1]}"
            else:
                cmd += "".join(f" --include '{p}'" for p in self.patterns_hint()) + f" --local-dir {self.target()}"
            lines.append(f"  by hand: {cmd}")
        for link in d.manual + ((d.url.url,) if d.url else ()):
            lines.append(f"  download: {link}")
        lines.append(f"  put it in {self.target()}: {d.layout}")
        if d.option_file:
            lines.append(f"  then:    ggt-ir data check {d.name}    (counts the images against {d.option_file})")
        return lines

    def download_dir(self) -> Path:
        return Path(self.a.download_dir) if getattr(self.a, "download_dir", None) else DOWNLOADS

    def patterns_hint(self) -> list[str]:
        return list(self.a.allow or (self.ds.hub.allow if self.ds.hub else ()))

    # -- the run
    def run(self) -> int:
        d = self.ds
        if d.manual:
            return self.run_manual()
        if hub.offline() and not self.a.dry_run:
            self.say(f"HF_HUB_OFFLINE is set: nothing is downloaded. To get {d.name}:")
            for line in self.manual_steps():
                self.say(line)
            return 1
        if d.url:
            return self.run_url()
        if d.hub and d.hub.archive:
            return self.run_hub_archive()
        return self.run_hub_tree()

    def run_manual(self) -> int:
        d = self.ds
        have = self.target().is_dir() and any(self.target().rglob("*"))
        if not have:
            self.say(f"{d.name} cannot be downloaded by this tool (it is not on the Hugging Face Hub, as far as "
                     "we know). Where it lives:")
            for line in self.manual_steps():
                self.say(line)
            return 1
        self.say(f"{d.name}: {self.target()} exists; checking it")
        return self.check_in_place()

    def check_in_place(self) -> int:
        if not self.ds.option_file:
            return 0
        over = [f"{k}={v}" for k, v in self._dataroot_overrides().items()]
        return check_option_file(str(option_path(self.ds.option_file)), over, say=self.say)

    def _dataroot_overrides(self) -> dict:
        """Point the option file's set at --local-dir when it was given."""
        if not self.a.local_dir:
            return {}
        from ggt_ir.config import read_options

        raw, _ = read_options(option_path(self.ds.option_file))
        out = {}
        default = Path(self.ds.target)
        for name, block in (raw.get("datasets") or {}).items():
            for key in ("dataroot", "dataroot_lq", "dataroot_gt"):
                v = block.get(key)
                if isinstance(v, str) and (Path(v) == default or default in Path(v).parents):
                    out[f"datasets.{name}.{key}"] = str(self.target() / Path(v).relative_to(default))
        return out

    # hub repo mirrored file by file (GGT-100K)
    def selection_patterns(self, files: list[hub.RemoteFile]) -> list[str]:
        """--allow patterns, narrowed by --split/--category to the folders (or files) that name them."""
        from ggt_ir.data.pairing import SPLIT_NAMES, normalize_category

        base = list(self.a.allow or self.ds.hub.allow)
        if not (self.a.split or self.a.category):
            return base
        chosen = hub.select(files, base)
        want_split = self.a.split
        want_cats = {normalize_category(c) or c for c in (self.a.category or [])}
        patterns = set()
        for f in chosen:
            parts = f.path.split("/")
            stems = [p.split(".")[0] if i == len(parts) - 1 else p for i, p in enumerate(parts)]
            split_at = next((i for i, p in enumerate(stems) if SPLIT_NAMES.get(p.lower()) == want_split), None)
            cat_at = next((i for i, p in enumerate(stems) if normalize_category(p) in want_cats), None)
            if (want_split and split_at is None) or (want_cats and cat_at is None):
                continue
            depth = max(i for i in (split_at, cat_at) if i is not None)
            prefix = "/".join(parts[: depth + 1])
            patterns.add(hub.fnmatch_escape(prefix) + ("/*" if depth < len(parts) - 1 else ""))
        return sorted(patterns)

    def run_hub_tree(self) -> int:
        d, a = self.ds, self.a
        local = self.target()
        self.say(f"listing {d.hub.repo_id} on {hub.endpoint()} ...")
        sha, files = hub.list_repo_files(d.hub.repo_id, d.hub.repo_type, a.revision)
        patterns = self.selection_patterns(files)
        chosen = hub.select(files, patterns)
        total = sum(f.size for f in files)
        if not chosen:
            self.say(f"no file of {d.hub.repo_id}@{sha[:12]} matches {patterns} ({len(files)} files in the repo; "
                     "top-level: " + ", ".join(sorted({f.path.split('/')[0] for f in files})[:12]) + ")")
            return 1
        done, todo = hub.present(chosen, local)
        need = sum(f.size for f in todo)
        self.say(f"{d.hub.repo_id} @ {sha[:12]}: {len(files)} files, {human(total)} in the repo; selected "
                 f"{len(chosen)} files, {human(sum(f.size for f in chosen))} (--allow {' '.join(patterns)})")
        for top, (n, size) in _folders(chosen, depth=3)[:12]:
            self.say(f"    {top:<50} {n:>8} files {human(size):>10}")
        self.say(f"  already in {local}: {len(done)} files ({human(sum(f.size for f in done))}); "
                 f"to download: {len(todo)} files ({human(need)})")
        ok, line = hub.check_space(need, local)
        self.say("  " + line)
        archives = [f for f in chosen if hub.is_archive(f.path)]
        if archives:
            self.say(f"  {len(archives)} archive(s) in the selection ({', '.join(f.path for f in archives[:4])}"
                     f"{' ...' if len(archives) > 4 else ''}): --extract unpacks them after the download "
                     "(about as much disk again)")
        self.say(f"  then `ggt-ir shards build` copies the original bytes into shards: about "
                 f"{human(sum(f.size for f in chosen))} more (docs/data.md#getting-ggt-100k)")
        if a.dry_run:
            self.say("dry run: nothing downloaded. The same by hand:")
            self.say(f"  hf download {d.hub.repo_id} --repo-type {d.hub.repo_type} --revision {sha}"
                     + "".join(f" --include '{p}'" for p in patterns) + f" --local-dir {local}")
            return 0
        if not ok and not a.ignore_space:
            self.say("not enough free disk: free some, fetch a part (--split test, --category rain, --allow ...), "
                     "or pass --ignore-space to try anyway")
            return 1
        n, size = hub.remove_stale_partials(local)
        if n:
            self.say(f"  removed {n} partial file(s) ({human(size)}) left by an interrupted download")
        if todo:
            hub.download_snapshot(d.hub.repo_id, repo_type=d.hub.repo_type, revision=sha, local_dir=local,
                                  allow_patterns=patterns, max_workers=a.workers)
        done, todo = hub.present(chosen, local)
        if todo:
            self.say(f"  {len(todo)} file(s) still missing after the download, e.g. {todo[0].path}: run again")
            return 1
        self.say(f"  {len(done)} files ({human(sum(f.size for f in done))}) in {local}")
        from ggt_ir.utils.fs import atomic_write_json

        atomic_write_json(local / ".cache" / "ggt-ir" / f"fetch-{d.name}.json",
                          {"repo": d.hub.repo_id, "revision": sha, "allow_patterns": patterns,
                           "files": len(done), "bytes": sum(f.size for f in done)})
        if archives and a.extract:
            for f in archives:
                arch = local / f.path
                hub.extract(arch, arch.parent / arch.name.split(".")[0], say=self.say)
        return self.report_pairs(local)

    def report_pairs(self, local: Path) -> int:
        """Pair what was downloaded (our pairing), report counts and what could not be paired, say what next."""
        from ggt_ir.data.pairing import find_pairs

        root = local / "GGT-100K" if (local / "GGT-100K").is_dir() else local
        report = find_pairs(root)
        per = collections.Counter((p.split, p.category) for p in report.pairs)
        self.say(f"pairing {root}: {report.summary()}")
        for split in sorted({s for s, _ in per}):
            row = ", ".join(f"{c} {n}" for (s, c), n in sorted(per.items()) if s == split)
            self.say(f"    {split:<8} {sum(n for (s, _), n in per.items() if s == split):>7}  ({row})")
        rc = 0
        if report.unpaired:
            out = local / ".cache" / "ggt-ir" / f"{self.ds.name}-unpaired.tsv"
            from ggt_ir.utils.fs import atomic_write_text

            atomic_write_text(out, "".join(f"{p}\t{r}\n" for p, r in report.unpaired))
            reasons = collections.Counter(r.split(" for stem")[0] for _, r in report.unpaired)
            self.say(f"  {len(report.unpaired)} file(s) could not be paired: "
                     + "; ".join(f"{n} {r}" for r, n in reasons.most_common(5)) + f" (all listed in {out})")
            for p, r in report.unpaired[:5]:
                self.say(f"    {p}  ({r})")
        archives = [p for p in root.rglob("*") if p.is_file() and hub.is_archive(p.name)]
        if not report.pairs and archives:
            self.say(f"  no pairs, but {len(archives)} archive(s): run again with --extract")
            return 2
        expected = self.ds.files if isinstance(self.ds.files, dict) else {}
        partial = bool(self.a.category or (self.a.allow and list(self.a.allow) != list(self.ds.hub.allow)))
        for split, want in expected.items():
            if self.a.split and split != self.a.split:
                continue
            got = sum(n for (s, _), n in per.items() if s == split)
            if not partial and got != want:
                self.say(f"  {split}: {got} pairs, the paper's count is {want}")
                rc = 2
        self.say("next:")
        shards = Path("datasets/shards")
        self.say(f"  ggt-ir shards build {root} --out {shards} --name ggt100k     "
                 f"(-> {shards}/ggt100k-manifest.json, the GGTShards recipes' path)")
        if root.absolute() != Path("datasets/GGT-100K").absolute():
            self.say(f"  the PairedFolder/SyntheticDegradation recipes read datasets/GGT-100K: "
                     f"ln -s {root.absolute()} datasets/GGT-100K   (or --set datasets.train.dataroot={root})")
        self.say(f"  ggt-ir eval -opt options/eval/ggt100k_test.yml --run experiments/<run>   "
                 "(the 500-pair test split, checked by expected_images)")
        return rc

    # hub archive (StableSR-TestSets zip)
    def run_hub_archive(self) -> int:
        d, a = self.ds, self.a
        dl = self.download_dir() / d.hub.repo_id.split("/")[-1]
        self.say(f"listing {d.hub.repo_id} on {hub.endpoint()} ...")
        sha, files = hub.list_repo_files(d.hub.repo_id, d.hub.repo_type, a.revision)
        chosen = [f for f in files if f.path == d.hub.archive]
        if not chosen:
            raise FetchError(f"{d.hub.repo_id}@{sha[:12]} has no file {d.hub.archive} "
                             f"(files: {', '.join(f.path for f in files[:10])})")
        done, todo = hub.present(chosen, dl)
        need = sum(f.size for f in todo)
        self.say(f"{d.hub.repo_id} @ {sha[:12]}: {d.hub.archive} {human(chosen[0].size)} "
                 f"({'already in ' + str(dl) if done else 'to download into ' + str(dl)}); "
                 f"{d.hub.member_dir}/ is extracted into {self.target()}")
        ok, line = hub.check_space(need, dl)
        self.say("  " + line)
        if a.dry_run:
            self.say("dry run: nothing downloaded. By hand:")
            for s in self.manual_steps()[4:]:
                self.say(s)
            return 0
        if not ok and not a.ignore_space:
            self.say("not enough free disk (pass --ignore-space to try anyway)")
            return 1
        hub.remove_stale_partials(dl)
        if todo:
            hub.download_snapshot(d.hub.repo_id, repo_type=d.hub.repo_type, revision=sha, local_dir=dl,
                                  allow_patterns=[hub.fnmatch_escape(d.hub.archive)], max_workers=1)
        archive = dl / d.hub.archive
        if not self.extract_checked(archive, hub.find_member_dir(archive, d.hub.member_dir)):
            return 1
        return self.prepare_and_check()

    # plain URL archive (DIV2K)
    def run_url(self) -> int:
        d, a = self.ds, self.a
        url = hub.apply_mirrors(d.url.url, hub.mirrors_from_env())
        archive = self.download_dir() / d.url.archive
        size = None if archive.is_file() else _head_size(url)
        self.say(f"{d.title}: {url} -> {archive}; {d.url.member_dir or 'everything'}/ extracted into {self.target()}")
        if archive.is_file():
            self.say(f"  {archive} is already here ({human(archive.stat().st_size)})")
        else:
            need = max(0, (size or 0) - _part_size(archive))
            ok, line = hub.check_space(need, archive.parent)
            self.say("  " + (line if size else f"size unknown (no Content-Length); the catalogue says {d.size}"))
            if a.dry_run:
                return 0
            if size and not ok and not a.ignore_space:
                self.say("not enough free disk (pass --ignore-space to try anyway)")
                return 1
            hub.download_url(url, archive, say=self.say)
        if a.dry_run:
            return 0
        if not self.extract_checked(archive, d.url.member_dir):
            return 1
        return self.prepare_and_check()

    def extract_checked(self, archive: Path, member_dir: str) -> bool:
        """Extract ``member_dir`` of ``archive`` into the target after checking the disk for it."""
        prefix = member_dir.strip("/") + "/" if member_dir else ""
        size = sum(n for name, n in hub.archive_members(archive) if name.startswith(prefix))
        ok, line = hub.check_space(size, self.target(), f"extracting {member_dir or archive.name}")
        self.say("  " + line)
        if not ok and not self.a.ignore_space:
            self.say("not enough free disk to extract (pass --ignore-space to try anyway)")
            return False
        hub.extract(archive, self.target(), member_dir, say=self.say)
        return True

    def prepare_and_check(self) -> int:
        if self.ds.prepare == "bicubic_x4":
            n = bicubic_x4(self.target() / "test_LR", self.target() / "test_LR_bicubic_x4")
            self.say(f"  wrote {n} x4 bicubic LQ image(s) into {self.target() / 'test_LR_bicubic_x4'} "
                     "(PIL bicubic, as OSEDiff's test script upsamples the LR input)")
        rc = self.check_in_place()
        self.say(f"next: ggt-ir eval -opt {self.ds.option_file} --run experiments/<run>")
        return rc


def _folders(files: list[hub.RemoteFile], depth: int) -> list[tuple[str, tuple[int, int]]]:
    agg: dict[str, list[int]] = {}
    for f in files:
        key = "/".join(f.path.split("/")[:depth][: len(f.path.split("/")) - 1]) or "."
        e = agg.setdefault(key + "/", [0, 0])
        e[0] += 1
        e[1] += f.size
    return sorted(((k, (v[0], v[1])) for k, v in agg.items()), key=lambda kv: -kv[1][1])


def _part_size(path: Path) -> int:
    part = path.with_name(path.name + ".part")
    return part.stat().st_size if part.is_file() else 0


def _head_size(url: str) -> int | None:
    import urllib.request

    try:
        req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "ggt-ir"})
        with urllib.request.urlopen(req, timeout=20) as r:
            n = r.headers.get("Content-Length")
            return int(n) if n and n.isdigit() else None
    except OSError:
        return None


def bicubic_x4(src: Path, dst: Path, factor: int = 4) -> int:
    """Upsample every image of ``src`` by ``factor`` with PIL's bicubic filter (what OSEDiff's test script does
    to the RealSR/DRealSR LR inputs before a same-size restorer runs) into ``dst`` as PNG; existing outputs
    are kept."""
    import numpy as np
    from PIL import Image

    from ggt_ir.data.pairing import list_images
    from ggt_ir.utils.image_io import read_image, save_png

    n = 0
    for f in list_images(Path(src)):
        out = Path(dst) / f.relative_to(src).with_suffix(".png")
        if out.is_file():
            continue
        img = Image.fromarray((read_image(f) * 255.0).round().astype(np.uint8))
        up = img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC)
        save_png(np.asarray(up), out)
        n += 1
    return n


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ggt-ir data", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the catalogue of data sets")
    f = sub.add_parser("fetch", help="download a data set (or say where it lives)")
    f.add_argument("name", help=", ".join(CATALOGUE))
    f.add_argument("--local-dir", help="where the set goes (default: the path its option file reads; for ggt100k "
                                       "the folder that receives the repo's GGT-100K/, default datasets)")
    f.add_argument("--allow", action="append", metavar="PATTERN",
                   help="Hub file patterns to fetch (repeatable; fnmatch, '*' crosses '/'), e.g. 'GGT-100K/*'")
    f.add_argument("--split", choices=["train", "test", "val"], help="ggt100k: only files under a folder of this split")
    f.add_argument("--category", action="append", help="ggt100k: only files under a folder of this category")
    f.add_argument("--revision", help="a branch, tag or commit of the Hub repo (default: main)")
    f.add_argument("--download-dir", help=f"archives go here (default {DOWNLOADS})")
    f.add_argument("--extract", action="store_true", help="ggt100k: unpack zip/tar archives found in the download")
    f.add_argument("--workers", type=int, default=8, help="parallel file downloads (default 8)")
    f.add_argument("--dry-run", action="store_true", help="list, size and check the disk; download nothing")
    f.add_argument("--ignore-space", action="store_true", help="download even if the free disk looks too small")
    c = sub.add_parser("check", help="count a benchmark's images against its option file's expected_images")
    c.add_argument("name", help=", ".join(CATALOGUE) + ", or an eval option file")
    c.add_argument("--local-dir", help="the set's folder, if not where the option file looks")
    return p


def list_catalogue(say=print) -> int:
    for d in CATALOGUE.values():
        how = ("Hub " + d.hub.repo_id + (f" ({d.hub.archive})" if d.hub.archive else "") if d.hub else
               "URL " + d.url.url if d.url else "by hand (" + d.manual[0].split(": ", 1)[-1][:60] + "...)")
        files = (", ".join(f"{k} {v}" for k, v in d.files.items()) if isinstance(d.files, dict) else str(d.files))
        say(f"{d.name:<13} {d.title}")
        say(f"{'':<13} kind {d.kind}; files {files}; size {d.size}")
        say(f"{'':<13} licence: {d.licence}")
        say(f"{'':<13} get: {how}; into {d.target}; options: {d.option_file or '-'}")
        say(f"{'':<13} protocol: {d.protocol}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ggt_ir.config import OptionsError

    a = build_parser().parse_args(argv)
    try:
        if a.cmd == "list":
            return list_catalogue()
        if a.cmd == "check":
            if a.name.endswith((".yml", ".yaml")):
                return check_option_file(a.name)
            ds = get(a.name)
            a.allow = a.split = a.category = None
            return Fetch(ds, a).check_in_place()
        ds = get(a.name)
        return Fetch(ds, a).run()
    except FetchError as e:
        print(f"ggt-ir data: {e}", file=sys.stderr)
        return 1
    except OptionsError as e:
        print(f"ggt-ir data: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["CATALOGUE", "DataSet", "check_expected_images", "check_option_file", "bicubic_x4", "main"]
