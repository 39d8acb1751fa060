"""The plan of ``ggt-ir reproduce``: the cells of a table, what identifies them, and what is already done.

* A **train cell** is a recipe with its overrides. Its identity is ``train_sha256``: the sha256 of the fully
  resolved training options without what does not change the weights (``name``, ``source_file``,
  ``path.experiments_root``, ``path.resume_state``, ``logger``). A run folder whose ``options.yml`` has that
  hash *is* the cell's run, whatever its name; a folder with the recipe's name but other options is never
  reused (the cell then runs as ``<name>-<hash8>``). Done = ``results.json`` at ``train.total_iter`` and the
  export of that iteration.
* An **eval cell** is a row scored with the table's eval file. Done = its ``summary.json`` has a ``cell``
  record equal to the planned one (:func:`ggt_ir.eval.loop.eval_cell_hash` of the options, the sha256 of the
  scored weights, the eval sets' file fingerprints) and a protocol that is still current
  (:func:`ggt_ir.eval.metrics.protocol_is_current`: same package versions, same weight files).
* The cost of a train cell (``--dry-run``): remaining iterations x seconds per iteration x processes. The
  seconds per iteration are, in order: **measured** from the run's own log (a partly trained run), the row's
  ``sec_per_iter`` hint, the table's ``cost.<model>.sec_per_iter`` hint (each with its ``source``); else unknown.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ggt_ir.config import OptionsError, options_to_yaml, read_options
from ggt_ir.eval.table import RowOptions, TableOptions, load_table_options
from ggt_ir.reproduce.options import ARMS, AccelerateOptions, parse_accelerate, processes

_UNHASHED_TOP = ("name", "source_file", "logger")
_UNHASHED_PATH = ("experiments_root", "resume_state")
_TIME_RE = re.compile(r"time \(data\): ([0-9.]+) \(")


# --------------------------------------------------------------------------- hashes
def _hash_options_dict(d: dict) -> str:
    d = copy.deepcopy(d)
    t = d.get("train")
    if isinstance(t, dict):  # unset = the defaults the run resolves them to (train/precedence.py)
        t["mixed_precision"] = t.get("mixed_precision") or "no"
        t["gradient_accumulation_steps"] = t.get("gradient_accumulation_steps") or 1
    for k in _UNHASHED_TOP:
        d.pop(k, None)
    for k in _UNHASHED_PATH:
        (d.get("path") or {}).pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def train_hash(opt, launch_mixed_precision: str | None = None) -> str:
    """The identity of a training: its resolved options minus names, paths and logging. Mixed precision and
    gradient accumulation as the run will resolve them (train/precedence.py: the launch's flag, else the option
    file, else the default), since the run folder's options.yml records the resolved values."""
    d = yaml.safe_load(options_to_yaml(opt))
    if launch_mixed_precision:  # the launch's flag beats the option file
        d.setdefault("train", {})["mixed_precision"] = launch_mixed_precision
    return _hash_options_dict(d)


def stored_train_hash(options_yml: Path) -> str | None:
    """The same hash from a run folder's ``options.yml`` (what the trainer wrote); None if unreadable."""
    try:
        d = yaml.safe_load(options_yml.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return _hash_options_dict(d) if isinstance(d, dict) else None


# --------------------------------------------------------------------------- cells
@dataclass
class TrainCell:
    id: str
    recipe: str
    overrides: list[str]
    opt: Any  # ggt_ir.train.options.Options
    train_sha256: str
    run_dir: Path
    renamed: bool  # runs as <name>-<hash8> because <name> holds another training
    launch: AccelerateOptions
    model: str
    hint: tuple[float, str] | None = None  # (sec_per_iter, source) from the table
    status: str = "todo"  # todo | partial | done
    done_iter: int = 0

    @property
    def total_iter(self) -> int:
        return int(self.opt.train.total_iter)

    def train_overrides(self) -> list[str]:
        """The overrides the launched training gets (the planned ones, plus the run folder's place and name)."""
        ov = [o for o in self.overrides if not o.startswith(("path.experiments_root=", "name="))]
        ov.append(f"path.experiments_root={self.run_dir.parent}")
        if self.renamed:
            ov.append(f"name={self.run_dir.name}")
        return ov

    def sec_per_iter(self) -> tuple[float | None, str]:
        measured = measured_sec_per_iter(self.run_dir)
        if measured is not None:
            return measured
        if self.hint is not None:
            return self.hint
        return None, f"unknown: give rows[].sec_per_iter or cost.{self.model}.sec_per_iter (with its source)"

    def estimate(self) -> dict:
        remaining = max(0, self.total_iter - self.done_iter) if self.status != "done" else 0
        spi, source = self.sec_per_iter()
        n = processes(self.launch)
        hours = None if spi is None else remaining * spi * n / 3600.0
        return {"remaining_iter": remaining, "sec_per_iter": spi, "source": source, "processes": n,
                "device_hours": hours}


@dataclass
class EvalCell:
    id: str
    row: int
    name: str  # results name: <results_root>/<name>/summary.json
    raw: dict  # the eval options this row is scored with (self-contained, no include)
    train: Optional[TrainCell]
    launch: AccelerateOptions
    status: str = "todo"  # todo | done | waiting (its training is not done)
    reason: str = ""


@dataclass
class Plan:
    table_file: Path
    table: TableOptions
    train: list[TrainCell] = field(default_factory=list)
    evals: list[EvalCell] = field(default_factory=list)
    row_names: dict[int, str] = field(default_factory=dict)  # row index -> results name
    notes: list[str] = field(default_factory=list)

    @property
    def work_dir(self) -> Path:
        return Path(self.table.out_dir) / f"{self.table.name}.reproduce"

    def cell(self, cell_id: str):
        for c in [*self.train, *self.evals]:
            if c.id == cell_id:
                return c
        if cell_id == "table":
            return "table"
        ids = ", ".join([c.id for c in [*self.train, *self.evals]] + ["table"])
        raise OptionsError(f"{self.table_file}: no cell {cell_id!r} in this plan (cells: {ids})")

    def as_record(self) -> dict:
        return {"table": str(self.table_file),
                "train": [{"id": c.id, "recipe": c.recipe, "overrides": c.overrides, "train_sha256": c.train_sha256,
                           "run_dir": str(c.run_dir), "status": c.status, "done_iter": c.done_iter,
                           "total_iter": c.total_iter, "estimate": c.estimate()} for c in self.train],
                "eval": [{"id": c.id, "name": c.name, "status": c.status, "reason": c.reason,
                          "train": c.train.id if c.train else None} for c in self.evals]}


# --------------------------------------------------------------------------- building
def arm_of(row: RowOptions) -> str | None:
    if row.arm:
        if row.arm not in ARMS:
            raise OptionsError(f"rows: arm {row.arm!r} is not one of {', '.join(ARMS)}")
        return row.arm
    if row.recipe:
        stem = Path(row.recipe).stem
        for a in ARMS:
            if stem.endswith(f"_{a}"):
                return a
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_").lower() or "row"


def resolve_run_dir(root: Path, name: str, digest: str) -> tuple[Path, bool]:
    """The run folder of a training with this hash: an existing one with the same hash (any name), else
    ``<root>/<name>`` when it is free, else ``<root>/<name>-<hash8>``. Returns (folder, renamed)."""
    matches = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and "_archived_" not in d.name and stored_train_hash(d / "options.yml") == digest:
                matches.append(d)
    if matches:
        best = sorted(matches, key=lambda d: (d.name != name, d.name != f"{name}-{digest[:8]}", d.name))[0]
        return best, best.name != name
    plain = root / name
    if not plain.exists() or not any(plain.iterdir()):
        return plain, False
    return root / f"{name}-{digest[:8]}", True


def measured_sec_per_iter(run_dir: Path) -> tuple[float, str] | None:
    """The median 'time (data)' of a run's training log lines (seconds per iteration), with its source."""
    times, logs = [], sorted(run_dir.glob("train_*.log")) if run_dir.is_dir() else []
    for log in logs:
        try:
            times += [float(m.group(1)) for m in _TIME_RE.finditer(log.read_text(errors="replace"))]
        except OSError:
            continue
    if not times:
        return None
    return statistics.median(times), f"measured: median of {len(times)} log lines in {run_dir}/train_*.log"


def train_status(cell: TrainCell) -> None:
    from ggt_ir.train.checkpoint import list_checkpoints, verify_checkpoint

    d, total = cell.run_dir, cell.total_iter
    results = d / "results.json"
    if results.is_file():
        try:
            done = json.loads(results.read_text()).get("iter") == total
        except (OSError, ValueError):
            done = False
        if done and (any((d / "models").glob(f"net_g_{total}.*")) or (d / "models" / f"net_g_{total}").is_dir()):
            cell.status, cell.done_iter = "done", total
            return
    good = [it for it, p in list_checkpoints(d / "checkpoints") if verify_checkpoint(p) is None]
    cell.status, cell.done_iter = ("partial", max(good)) if good else ("todo", 0)


def scored_weights(cell: EvalCell, memo) -> str | None:
    """The sha256 the eval summary will record for what this row scores (None: not determinable yet)."""
    from ggt_ir.inference.loader import RestorerError, is_adapter_export, newest_export
    from ggt_ir.utils.fs import sha256_tree

    model = cell.raw.get("model") or {}
    target = model.get("checkpoint")
    if not target and model.get("run"):
        try:
            target = newest_export(Path(model["run"]) / "models")
        except RestorerError:
            return None
    if not target:
        return None
    return sha256_tree(target) if is_adapter_export(target) or Path(target).is_dir() else memo.sha256(target)


def eval_status(cell: EvalCell, results_root: Path, memo) -> None:
    """done / todo (with the reason) / waiting for its training."""
    from ggt_ir.data import DATASETS
    from ggt_ir.eval.loop import eval_cell_hash, weights_identity
    from ggt_ir.eval.metrics import protocol_is_current
    from ggt_ir.eval.options import load_eval_options
    from ggt_ir.eval.sources import FolderSource, set_fingerprint
    from ggt_ir.eval.weights import missing_files, resolve_weights_dir

    if cell.train is not None and cell.train.status != "done":
        cell.status, cell.reason = "waiting", f"after {cell.train.id}"
        return
    summary_file = results_root / cell.name / "summary.json"
    if not summary_file.is_file():
        cell.status, cell.reason = "todo", "no summary yet"
        return
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError) as e:
        cell.status, cell.reason = "todo", f"unreadable summary ({e})"
        return
    recorded = summary.get("cell") or {}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "eval.yml"
        f.write_text(yaml.safe_dump(cell.raw, sort_keys=False))
        opt = load_eval_options(f, check_paths=False)
    checks = [("eval options", recorded.get("eval_sha256"), eval_cell_hash(opt))]
    try:
        datasets = {n: DATASETS.get(o.type)(o) for n, o in opt.datasets.items()}
        checks.append(("eval-set files", recorded.get("data_sha256"),
                       {n: set_fingerprint(ds) for n, ds in datasets.items()}))
        if opt.restored is not None and str(opt.restored) != "input":
            checks.append(("restored images", recorded.get("weights_sha256"),
                           weights_identity(FolderSource(opt.restored, datasets).info)))
    except Exception as e:  # noqa: BLE001 - data not reachable here (a dry run elsewhere)
        cell.status, cell.reason = "todo", f"cannot check the eval sets ({type(e).__name__}: {e})"
        return
    planned_weights = scored_weights(cell, memo)
    if planned_weights is not None:
        checks.append(("weights", recorded.get("weights_sha256"), planned_weights))
    for what, old, new in checks:
        if old != new:
            cell.status, cell.reason = "todo", f"{what} changed since {summary_file} was written"
            return
    ok, why = protocol_is_current(summary.get("protocol"), memo)
    if not ok:
        cell.status, cell.reason = "todo", f"metric protocol: {why}"
        return
    wd = resolve_weights_dir(opt.eval.weights_dir)
    for key in summary.get("skipped_metrics") or {}:
        choice = opt.metrics.get(key)
        if choice is not None and not missing_files(choice.type, wd):
            cell.status, cell.reason = "todo", f"metric {key!r} was skipped (no weights) and its weights are there now"
            return
    cell.status, cell.reason = "done", f"{summary_file} (protocol {summary['protocol']['sha256'][:12]})"


def _eval_raw(table: TableOptions, row: RowOptions, name: str, label: dict, model: dict | None,
              restored: str | None, src: str) -> dict:
    """The row's eval options: the table's eval file, made self-contained, with what the row scores."""
    if not table.eval:
        raise OptionsError(f"{src}: 'eval' is not set: name the eval option file every row is scored with "
                           "(e.g. eval: options/eval/ggt100k.yml)")
    base = Path(table.eval)
    if not base.is_absolute() and not base.is_file():
        base = Path(src).parent / base
    raw, _ = read_options(base, list(table.eval_set) + list(row.eval_set))
    raw.update(name=name, results_root=table.results_root, label=label)
    if model is not None:
        merged = dict(raw.get("model") or {})
        merged.update(model)
        raw["model"], raw["restored"] = merged, None
    else:
        raw["model"], raw["restored"] = None, restored
    raw.setdefault("eval", {})["pbar"] = False  # its output goes to a log
    return raw


def build_plan(table_file: str | Path, accelerate_config: str | None = None, check_paths: bool = True) -> Plan:
    """The plan of a table file, with the status of every cell (nothing is run or written)."""
    from ggt_ir.eval.reference_cache import HashMemo, resolve_cache_dir
    from ggt_ir.train.options import load_options

    src = str(table_file)
    table = load_table_options(table_file)
    plan = Plan(Path(table_file), table)
    base_launch = dict(table.accelerate)
    if accelerate_config:
        base_launch["config_file"] = accelerate_config
        for k in ("num_processes", "num_machines"):  # the config file says how many
            base_launch.pop(k, None)
    # evaluations: one plain process unless the table says otherwise
    eval_launch = parse_accelerate({"launcher": "python"} if not table.eval_accelerate else {}, table.eval_accelerate,
                                   src=src)
    by_hash: dict[str, TrainCell] = {}
    names: dict[str, int] = {}
    for i, row in enumerate(table.rows):
        kp = f"{src}: rows[{i}]"
        kinds = [k for k in ("recipe", "pretrained", "restored") if getattr(row, k)]
        if len(kinds) > 1:
            raise OptionsError(f"{kp}: give one of recipe, pretrained, restored (got {', '.join(kinds)})")
        if not kinds:
            continue  # a row read from an existing summary (run: / summary:), as `ggt-ir table` does
        arm = arm_of(row)
        train = None
        model_opts: dict | None = None
        restored = None
        if row.recipe:
            recipe = row.recipe
            overrides = list(table.train_set) + list(row.set)
            if table.experiments_root:
                overrides.append(f"path.experiments_root={table.experiments_root}")
            try:
                opt = load_options(recipe, overrides, check_paths=check_paths)
            except (OptionsError, KeyError) as e:
                raise OptionsError(f"{kp}: {e}") from None
            launch = parse_accelerate(base_launch, row.accelerate, src=kp)
            digest = train_hash(opt, launch.mixed_precision)
            model = row.model or opt.network_g.get("type", "?")
            if digest in by_hash:
                train = by_hash[digest]
            else:
                run_dir, renamed = resolve_run_dir(opt.experiment_dir.parent, opt.name, digest)
                hint = None
                if row.sec_per_iter is not None:
                    hint = (float(row.sec_per_iter), row.sec_per_iter_source or "rows[].sec_per_iter (no source given)")
                elif model in table.cost and isinstance(table.cost[model], dict) and "sec_per_iter" in table.cost[model]:
                    c = table.cost[model]
                    hint = (float(c["sec_per_iter"]), str(c.get("source") or f"cost.{model} (no source given)"))
                train = TrainCell(id=f"train:{run_dir.name}", recipe=str(recipe), overrides=overrides, opt=opt,
                                  train_sha256=digest, run_dir=run_dir, renamed=renamed,
                                  launch=launch, model=model, hint=hint)
                train_status(train)
                by_hash[digest] = train
                plan.train.append(train)
            name = row.run or train.run_dir.name
            model_opts = {"run": str(train.run_dir)}
            data = row.data or (ARMS[arm] if arm else opt.name)
        else:
            model = row.model or (row.pretrained.get("network_g", {}) or {}).get("type") or "?"
            data = row.data or "zero-shot"
            name = row.run or _slug(f"{model}_{data}")
            if row.pretrained:
                model_opts = dict(row.pretrained)
            else:
                restored = row.restored
        if name in names:
            raise OptionsError(f"{kp}: results name {name!r} is also used by rows[{names[name]}]; give one of them "
                               "'run: <another name>'")
        names[name] = i
        plan.row_names[i] = name
        raw = _eval_raw(table, row, name, {"model": model, "data": data}, model_opts, restored, src)
        plan.evals.append(EvalCell(id=f"eval:{name}", row=i, name=name, raw=raw, train=train, launch=eval_launch))
    memo = HashMemo(resolve_cache_dir(None, table.results_root))
    for c in plan.evals:
        eval_status(c, Path(table.results_root), memo)
    memo.flush()
    return plan


def table_with_runs(plan: Plan) -> TableOptions:
    """The table options with each reproduced row pointing at its summary (for ``ggt-ir table``'s code)."""
    t = copy.deepcopy(plan.table)
    for i, name in plan.row_names.items():
        row = t.rows[i]
        t.rows[i] = dataclasses.replace(row, run=name, summary=None)
    return t


__all__ = ["Plan", "TrainCell", "EvalCell", "build_plan", "train_hash", "stored_train_hash", "resolve_run_dir",
           "measured_sec_per_iter", "table_with_runs"]
