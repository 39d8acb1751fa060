"""``ggt-ir weights {list,check,fetch}``: the weights that option files need, where their loaders read them,
whether they are on this machine, and downloading what is missing.

    ggt-ir weights list  -opt options/eval/ggt100k.yml               what the metrics load, from where, to where
    ggt-ir weights check -opt options/eval/ggt100k.yml -opt options/train/OneStepSD/onestep_sd_ggt100k.yml
    ggt-ir weights fetch -opt options/eval/realsr.yml [--dry-run]    download what is missing (online)
    ggt-ir weights check --metric topiq_nr --weights-dir /data/iqa-weights
    ggt-ir eval -opt options/eval/ggt100k.yml --check-weights        the same as `weights check -opt ...`

What is needed, per option file:

* eval files (``metrics:``): each metric's files from the catalogue in :mod:`ggt_ir.eval.weights` -- pyiqa's
  own files (``<weights>/pyiqa/``), torchvision backbones (``<weights>/checkpoints/``), CLIP
  (``<weights>/clip/``), timm backbones from the Hub (``<weights>/huggingface/<repo>/<file>``), transformers
  models (the Hugging Face cache);
* training files: ``train.lpips_opt`` (LPIPS-VGG: ``checkpoints/vgg16-397923af.pth`` and
  ``pyiqa/LPIPS_v0.1_vgg-a78928a0.pth``, as ggt_ir/generative/lpips.py reads them) and the base model of a
  generative ``network_g`` (``pretrained``: a local diffusers folder, fetched from its Hub id, or a Hub id in
  the Hugging Face cache).

``<weights>`` is ``--weights-dir``, else the file's ``eval.weights_dir`` / ``train.lpips_opt.weights_dir``, else
``$GGT_IR_WEIGHTS``, else torch.hub's folder (``$TORCH_HOME/hub``). ``fetch`` downloads pyiqa's own URLs (on
``$HF_ENDPOINT`` when set), torchvision's and CLIP's (``--mirror FROM=TO`` or ``$GGT_IR_MIRRORS`` rewrite URL
prefixes), and Hub files and repos with ``huggingface_hub``. Offline (``HF_HUB_OFFLINE=1``) it prints each file,
its URL and the command that gets it. ``check`` exits 1 when something is missing.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ggt_ir.assets import hub
from ggt_ir.assets.hub import FetchError
from ggt_ir.eval.weights import (ENV_VAR, KNOWN_WEIGHTS, OPTIONAL, WeightFile, find_file, resolve_weights_dir,
                                 source_url, target_path)

HF_MODEL_URL = "https://huggingface.co/"
# Hub ids of the base models, for recipes whose network_g.pretrained is a local folder (the recipes' comments
# download them with `hf download <id> --local-dir <folder>`)
BASE_MODELS = {
    "OneStepSD": "stabilityai/stable-diffusion-2-1-base",
    "flux_kontext": "black-forest-labs/FLUX.1-Kontext-dev",
    "qwen_image_edit": "Qwen/Qwen-Image-Edit",
}
LOCAL_ROOTS = ("pretrained", "weights", "models", "checkpoints", "experiments")  # first folders that mean "local"
SKIP_SUFFIXES = (".ckpt", ".msgpack", ".h5", ".onnx", ".onnx_data", ".pb", ".ot")
VARIANTS = ("fp16", "bf16", "fp32", "non_ema", "ema")


@dataclass
class Need:
    """One thing an option file needs: a weight file, or a Hub model repo (``wf.where == 'hub-model'``)."""

    source: str  # the option file ("--metric" / "--all" for command-line metrics)
    key: str  # what in it needs this: the metric key, "train.lpips_opt", "network_g.pretrained (OneStepSD)"
    wf: WeightFile
    target: Path  # where it goes so that its loader finds it
    found: Path | None = None
    optional: bool = False  # has a local fallback (niqe)
    subfolders: tuple[str, ...] = ()  # hub-model: the folders the loader needs
    variant: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.found is not None or self.optional


@dataclass
class Plan:
    weights_dir: Path
    needs: list[Need] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (source, "psnr: built in (no weight files)")
    unknown: list[tuple[str, str, str, Path]] = field(default_factory=list)  # (source, key, metric, weights dir)


# ----------------------------------------------------------------------------- what option files need
def option_kind(raw: dict) -> str:
    if "metrics" in raw and ("model" in raw or "restored" in raw or "datasets" in raw) and "network_g" not in raw:
        return "eval"
    if "network_g" in raw or "model_type" in raw or "train" in raw:
        return "train"
    raise FetchError("neither an eval option file (metrics:) nor a training option file (network_g:)")


def metric_needs(plan: Plan, source: str, key: str, metric: str, weights_dir: Path) -> None:
    from ggt_ir.eval.metrics import SPECS

    if metric in SPECS and SPECS[metric].builtin:
        plan.notes.append((source, f"{key}: built in (no weight files)"))
        return
    if metric not in KNOWN_WEIGHTS:
        plan.unknown.append((source, key, metric, weights_dir))
        return
    for wf in KNOWN_WEIGHTS[metric]:
        plan.needs.append(Need(source, key if key == metric else f"{key} ({metric})", wf,
                               target_path(wf, weights_dir), find_file(wf, weights_dir),
                               optional=(metric, wf.name) in OPTIONAL, note=wf.note))


def is_hub_id(name: str) -> bool:
    p = Path(name).expanduser()
    if p.exists() or name.startswith(("/", "./", "../", "~")) or name.count("/") != 1:
        return False
    first = name.split("/")[0]
    return not (Path(first).is_dir() or first in LOCAL_ROOTS)


def base_model_need(source: str, network_g: dict) -> Need | None:
    kind = network_g.get("type")
    if kind == "OneStepSD":
        from ggt_ir.generative.onestep_sd import SD_SUBFOLDERS

        family, subfolders = "OneStepSD", tuple(SD_SUBFOLDERS)
    elif kind == "EditorLoRA":
        from ggt_ir.generative.editors import FAMILIES

        family = network_g.get("family", "flux_kontext")
        subfolders = tuple(FAMILIES.get(family).subfolders)
    else:
        return None
    pretrained = str(network_g.get("pretrained") or "")
    if not pretrained:
        return None
    variant = network_g.get("variant")
    if is_hub_id(pretrained):
        repo, local = pretrained, None
    else:
        repo, local = BASE_MODELS.get(family, ""), Path(pretrained).expanduser()
    wf = WeightFile("hub-model", "model_index.json, " + ", ".join(s + "/" for s in subfolders),
                    HF_MODEL_URL + repo, repo_id=repo)
    need = Need(source, f"network_g.pretrained ({family})", wf,
                local.absolute() if local else target_path(wf, Path(".")), subfolders=subfolders, variant=variant,
                note="gated: accept the licence on its Hub page and log in first" if "FLUX" in repo else "")
    need.found = _model_folder(need)
    if local and not repo:
        need.note = f"no Hub id known for family {family}: download it into {local} yourself"
    return need


def _model_folder(need: Need) -> Path | None:
    """The local folder (or cached snapshot) holding every subfolder the loader reads, or None."""
    if need.wf.where != "hub-model":
        return None
    if need.subfolders and need.target and not str(need.target).startswith(str(_hf_cache())):
        folder = need.target if need.target.is_dir() else None
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(need.wf.repo_id, local_files_only=True))
        except Exception:  # LocalEntryNotFoundError, IncompleteSnapshotError
            folder = None
    if folder is None:
        return None
    return folder if all((folder / s).is_dir() for s in need.subfolders) else None


def _hf_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def plan_for(files: list[str], metrics: list[str], weights_dir: str | None, overrides: list[str],
             everything: bool = False) -> Plan:
    from ggt_ir.config import OptionsError, read_options

    plan = Plan(resolve_weights_dir(weights_dir))
    for path in files:
        try:
            raw, src = read_options(path, overrides)
            kind = option_kind(raw)
        except (OptionsError, FetchError) as e:
            raise FetchError(f"{path}: {e}") from None
        if kind == "eval":
            from ggt_ir.eval.options import load_eval_options

            opt = load_eval_options(path, overrides, check_paths=False)
            wd = resolve_weights_dir(weights_dir or opt.eval.weights_dir)
            for key, choice in opt.metrics.items():
                metric_needs(plan, path, key, choice.type, wd)
        else:
            train = raw.get("train") or {}
            lo = train.get("lpips_opt")
            if lo is not None:
                lo = lo or {}
                wd = resolve_weights_dir(weights_dir or lo.get("weights_dir"))
                for wf, explicit in zip(KNOWN_WEIGHTS["lpips-vgg"], (lo.get("vgg_path"), lo.get("lin_path"))):
                    tgt = Path(explicit) if explicit else target_path(wf, wd)
                    plan.needs.append(Need(path, "train.lpips_opt", wf, tgt, tgt if tgt.is_file() else None))
            need = base_model_need(path, raw.get("network_g") or {})
            if need:
                plan.needs.append(need)
            if lo is None and need is None:
                plan.notes.append((path, "no weight files (no train.lpips_opt, no pretrained base model)"))
    for m in metrics:
        metric_needs(plan, "--metric", m, m, plan.weights_dir)
    if everything:
        for m in KNOWN_WEIGHTS:
            metric_needs(plan, "--all", m, m, plan.weights_dir)
    return plan


def probe_unknown(plan: Plan) -> list[tuple[str, str, str, str | None]]:
    """Metrics outside the catalogue, created offline: (source, key, metric, the error, or None if it loads)."""
    from ggt_ir.eval.metrics import MetricSuite

    import contextlib
    import io

    out = []
    for source, key, metric, wd in plan.unknown:
        with contextlib.redirect_stdout(io.StringIO()):  # pyiqa prints "Downloading: ..." before it tries
            suite = MetricSuite([metric], device="cpu", weights_dir=wd, strict=False, log=lambda *_: None)
        out.append((source, key, metric, suite.skipped.get(metric)))
    return out


# ----------------------------------------------------------------------------- printing
def _unique(needs: list[Need], per_source: bool = False) -> list[Need]:
    seen, out = set(), []
    for n in needs:
        key = (n.source if per_source else "", n.key if per_source else "", n.wf.where, n.wf.name, n.wf.repo_id,
               str(n.target))
        if key not in seen:
            seen.add(key)
            out.append(n)
    return out


def manual_command(n: Need) -> str:
    """The command that gets ``n`` on a machine with network access."""
    if n.wf.where == "hub":
        return f"hf download {n.wf.repo_id} {n.wf.name} --local-dir {n.target.parent}"
    if n.wf.where == "hub-model":
        inc = " ".join(f"--include '{s}/*'" for s in n.subfolders)
        inc = (inc + " --include model_index.json") if inc else ""
        where = f" --local-dir {n.target}" if not str(n.target).startswith(str(_hf_cache())) else ""
        return f"hf download {n.wf.repo_id}{(' ' + inc) if inc else ''}{where}"
    return f"curl -L --create-dirs -o {n.target} {source_url(n.wf)}"


W = 22  # width of the key column (set per listing by _width)


def _width(plan: Plan, needs: list[Need]) -> None:
    global W
    W = min(40, max([14] + [len(n.key) for n in needs] + [len(u[1]) for u in plan.unknown]))


def describe(n: Need) -> list[str]:
    state = "ok" if n.found else ("absent" if n.optional else "MISSING")
    pad = " " * (W + 14)
    lines = [f"    {n.key:<{W}} {state:<8} {n.wf.label}"]
    if n.found:
        lines.append(f"{pad}at {n.found}")
    else:
        lines.append(f"{pad}put at {n.target}")
        lines.append(f"{pad}from   {source_url(n.wf)}")
        if n.optional:
            lines.append(f"{pad}(optional: basicsr's bundled NIQE parameters are used without it)")
    if n.note:
        lines.append(f"{pad}note: {n.note}")
    return lines


def header(plan: Plan, say) -> None:
    src = ("$" + ENV_VAR) if os.environ.get(ENV_VAR) else "torch.hub's folder; $GGT_IR_WEIGHTS is unset"
    say(f"weights folder: {plan.weights_dir}  ({src}; --weights-dir overrides)")
    say(f"Hugging Face cache: {_hf_cache()}")


def _by_source(plan: Plan, needs: list[Need]) -> list[str]:
    order = []
    for s, _ in plan.notes:
        order.append(s)
    order += [n.source for n in needs] + [u[0] for u in plan.unknown]
    return list(dict.fromkeys(order))


def cmd_list(plan: Plan, say=print) -> int:
    header(plan, say)
    needs = _unique(plan.needs, per_source=True)
    _width(plan, needs)
    pad = " " * (W + 4)
    for source in _by_source(plan, needs):
        say(source)
        for s, line in plan.notes:
            if s == source:
                say("    " + line)
        for n in needs:
            if n.source == source:
                say(f"    {n.key:<{W}} {n.wf.label}")
                say(f"{pad} from {source_url(n.wf)}")
                say(f"{pad} to   {n.target}")
                if n.note:
                    say(f"{pad} note: {n.note}")
        for s, key, metric, _ in plan.unknown:
            if s == source:
                say(f"    {key:<{W}} {metric}: not in the catalogue; `ggt-ir weights check` creates it offline "
                    "to find its first missing file")
    return 0


def cmd_check(plan: Plan, say=print) -> int:
    header(plan, say)
    shown = _unique(plan.needs, per_source=True)
    needs = _unique(plan.needs)
    _width(plan, shown)
    probed = probe_unknown(plan)
    bad_unknown = 0
    for source in _by_source(plan, shown):
        say(source)
        for s, line in plan.notes:
            if s == source:
                say("    " + line)
        for n in shown:
            if n.source == source:
                for line in describe(n):
                    say(line)
        for s, key, metric, problem in probed:
            if s != source:
                continue
            if problem:
                bad_unknown += 1
                say(f"    {key:<{W}} MISSING  " + problem.splitlines()[0])
                for x in problem.splitlines()[1:3]:
                    say(" " * (W + 14) + x.strip())
            else:
                say(f"    {key:<{W}} ok       (created offline; not in the catalogue)")
    missing = [n for n in needs if not n.ok]
    if not missing and not bad_unknown:
        say(f"all {len(needs)} weight file(s) / model(s) are on this machine")
        return 0
    say(f"{len(missing) + bad_unknown} of {len(needs) + len(probed)} missing. On a machine with network: "
        "`ggt-ir weights fetch` with the same arguments, or by hand:")
    for n in missing:
        say("  " + manual_command(n))
    return 1


# ----------------------------------------------------------------------------- fetching
def model_files(files: list[hub.RemoteFile], subfolders: tuple[str, ...], variant: str | None) -> list[hub.RemoteFile]:
    """The files of a model repo a diffusers/transformers loader reads: the component folders (all of the repo
    without ``subfolders``), safetensors in preference to .bin, one variant (none unless ``variant``)."""
    keep = [f for f in files if not subfolders or f.path == "model_index.json"
            or f.path.split("/")[0] in subfolders]
    keep = [f for f in keep if not f.path.endswith(SKIP_SUFFIXES) and not f.path.startswith(".")]

    def var_of(path: str) -> str | None:
        parts = Path(path).name.split(".")
        return next((p for p in parts[1:-1] if p in VARIANTS), None)

    keep = [f for f in keep if var_of(f.path) == variant or (variant and var_of(f.path) is None
                                                             and not _has_variant(keep, f.path, variant))]
    safe_dirs = {str(Path(f.path).parent) for f in keep if f.path.endswith(".safetensors")
                 or f.path.endswith(".safetensors.index.json")}
    return [f for f in keep if not ((f.path.endswith(".bin") or f.path.endswith(".bin.index.json"))
                                    and str(Path(f.path).parent) in safe_dirs)]


def _has_variant(files: list[hub.RemoteFile], path: str, variant: str) -> bool:
    p = Path(path)
    stem, suffix = p.name.split(".")[0], "".join(p.suffixes)
    return any(f.path == str(p.with_name(f"{stem}.{variant}{suffix}")) for f in files)


def fetch_one(n: Need, mirrors: list[tuple[str, str]], say) -> None:
    wf = n.wf
    if wf.where == "hub":
        say(f"  {wf.label}: huggingface_hub -> {n.target}")
        hub.hub_file_download(wf.repo_id, wf.name, local_dir=n.target.parent)
        return
    if wf.where == "hub-model":
        if not wf.repo_id:
            raise FetchError(f"{n.source}: {n.key}: no Hub id to fetch {n.target} from; {n.note}")
        _, files = hub.list_repo_files(wf.repo_id, "model")
        chosen = model_files(files, n.subfolders, n.variant)
        local = None if str(n.target).startswith(str(_hf_cache())) else n.target
        where = local or _hf_cache()
        need = sum(f.size for f in (hub.present(chosen, local)[1] if local else chosen))
        ok, line = hub.check_space(need, where, f"{wf.repo_id} ({len(chosen)} files)")
        say(f"  {wf.repo_id}: {line}")
        if not ok:
            raise FetchError(f"not enough disk for {wf.repo_id}")
        hub.download_snapshot(wf.repo_id, repo_type="model", local_dir=local,
                              allow_patterns=[hub.fnmatch_escape(f.path) for f in chosen])
        return
    url = hub.apply_mirrors(source_url(wf), mirrors)
    say(f"  {wf.label}: {url} -> {n.target}")
    prefix = hub.sha256_prefix_of(wf.name) if wf.where == "checkpoints" else ""
    hub.download_url(url, n.target, sha256=wf.sha256, sha256_prefix=prefix, say=say)


def cmd_fetch(plan: Plan, mirrors: list[tuple[str, str]], dry_run: bool, say=print) -> int:
    header(plan, say)
    missing = [n for n in _unique(plan.needs) if not n.found and not n.optional]
    unknown = [(s, k, m, p) for s, k, m, p in probe_unknown(plan) if p] if plan.unknown else []
    if not missing and not unknown:
        say("nothing to fetch: everything is on this machine")
        return 0
    if hub.offline() or dry_run:
        why = "dry run" if dry_run else "HF_HUB_OFFLINE is set"
        say(f"{why}: nothing downloaded. What is missing, and how to get it:")
        for n in missing:
            for line in describe(n):
                say(line)
            say("      " + manual_command(n))
        for source, key, metric, problem in unknown:
            say(f"  {source}: {key}: " + " ".join(x.strip() for x in problem.splitlines()[:3]))
        return 1 if not dry_run else 0
    failed = []
    for n in missing:
        try:
            fetch_one(n, mirrors, say)
        except FetchError as e:
            failed.append(n)
            say(f"  FAILED {n.wf.label}: {e}")
    for source, key, metric, problem in unknown:
        failed.append(None)
        say(f"  {source}: {key}: {metric} is not in the catalogue; get its file by hand: "
            + " ".join(x.strip() for x in problem.splitlines()[1:3]))
    if failed:
        say(f"{len(failed)} of {len(missing) + len(unknown)} could not be fetched (see above)")
        return 1
    say(f"fetched {len(missing)} file(s)/model(s); `ggt-ir weights check` with the same arguments verifies them")
    return 0


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ggt-ir weights", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("action", choices=["list", "check", "fetch"])
    p.add_argument("-opt", "--opt", action="append", default=[], metavar="FILE",
                   help="an eval or training option file (repeatable); default: options/eval/*.yml")
    p.add_argument("--metric", action="append", default=[], help="a metric by its pyiqa name (repeatable)")
    p.add_argument("--all", action="store_true", help="every metric of the catalogue")
    p.add_argument("--weights-dir", help="the local weights folder (default: the option file's, $GGT_IR_WEIGHTS, "
                                         "or $TORCH_HOME/hub)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an option of the files (repeatable)")
    p.add_argument("--mirror", action="append", default=[], metavar="FROM=TO",
                   help="fetch: download URLs starting with FROM from TO instead (repeatable; also $GGT_IR_MIRRORS)")
    p.add_argument("--dry-run", action="store_true", help="fetch: say what would be downloaded")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    files = list(a.opt)
    if not files and not a.metric and not a.all:
        files = sorted(str(p) for p in Path("options/eval").glob("*.yml"))
        if not files:
            build_parser().error("give -opt FILE, --metric NAME or --all (no options/eval/*.yml here)")
    from ggt_ir.config import OptionsError

    try:
        plan = plan_for(files, a.metric, a.weights_dir, a.overrides, everything=a.all)
        if a.action == "list":
            return cmd_list(plan)
        if a.action == "check":
            return cmd_check(plan)
        mirrors = hub.mirrors_from_env()
        for m in a.mirror:
            src, sep, dst = m.partition("=")
            if not sep:
                raise FetchError(f"--mirror {m!r}: expected FROM=TO")
            mirrors.append((src, dst))
        return cmd_fetch(plan, mirrors, a.dry_run)
    except (FetchError, OptionsError) as e:
        print(f"ggt-ir weights: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "plan_for", "Plan", "Need", "model_files"]
