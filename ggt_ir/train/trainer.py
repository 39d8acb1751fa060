"""The generic training loop (one for every model family; the family lives in a step).

data (``datasets.train``) -> step (``model_type``: networks, losses, optimizers) -> validation
(``datasets.val*``, sharded over ranks) -> checkpoints (atomic, all ranks) -> trackers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from ggt_ir.config import options_to_yaml
from ggt_ir.eval.psnr_ssim import METRIC_FUNCTIONS, quantize
from ggt_ir.train import precedence
from ggt_ir.train.checkpoint import copy_as_latest, resolve_resume, save_checkpoint
from ggt_ir.train.logging import message_line, results_table, setup_logger, wandb_mode
from ggt_ir.train.options import Options
from ggt_ir.utils.image_io import save_png, side_by_side
from ggt_ir.utils.progress import progress


@dataclasses.dataclass
class TrainState:
    """Counters restored on resume (registered with accelerate's checkpointing)."""

    iter: int = 0
    skipped_samples: int = 0  # distinct damaged samples met: len(bad_samples)
    bad_samples: dict = dataclasses.field(default_factory=dict)  # "<shard>:<key>" -> reason (GGTShards), once each
    nonfinite_steps: int = 0
    best: dict = dataclasses.field(default_factory=dict)  # "valset/metric" -> {"value", "iter"}
    last: dict = dataclasses.field(default_factory=dict)  # "valset/metric" -> value
    inputs: dict = dataclasses.field(default_factory=dict)  # "valset/metric" -> score of the LQ input itself

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def _flat_config(opt: Options) -> dict:
    """Scalars only (TensorBoard's hparams refuse nested values)."""
    out = {}

    def walk(prefix, x):
        if dataclasses.is_dataclass(x):
            x = {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
        if isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = x if isinstance(x, (int, float, str, bool)) else str(x)

    walk("", opt)
    return out


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """``os.environ`` updated with ``values`` inside the block, restored after it."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Trainer:
    def __init__(self, opt: Options, resume: str | None = None, command: str | None = None,
                 set_keys: set[str] | frozenset = frozenset()):
        """``set_keys``: the option keys the command line set (``--set``), which rank above the option file
        (see ``ggt_ir/train/precedence.py``)."""
        from accelerate import Accelerator
        from accelerate.tracking import WandBTracker
        from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed

        from ggt_ir.data import DATASETS
        from ggt_ir.train.steps import STEPS

        self.opt = opt
        t = opt.train
        self.exp_dir = opt.experiment_dir
        self.ckpt_root = self.exp_dir / "checkpoints"
        resume = resume or opt.path.resume_state
        # command line > option file > accelerate config (precedence.py); printed in the banner
        self.decided = precedence.resolve(opt, set(set_keys), opt.source_file or opt.name)
        resume_warnings: list[str] = []
        self.resume_dir = resolve_resume(resume, self.ckpt_root, warn=resume_warnings.append)
        trackers = list(opt.logger.trackers)
        # all runs share one W&B project (logger.wandb_project, else $WANDB_PROJECT, else "ggt-ir"); a resumed
        # run continues its own W&B run
        self.wandb_project = opt.logger.wandb_project or os.environ.get("WANDB_PROJECT") or "ggt-ir"
        log_with = [WandBTracker(self.wandb_project, **self._wandb_init_kwargs()) if tr == "wandb" else tr
                    for tr in trackers]
        with _environment(precedence.decided_environment(opt)):  # every part of accelerate sees the decision
            self.acc = acc = Accelerator(
                gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=t.gradient_accumulation_steps),
                mixed_precision=t.mixed_precision,
                log_with=log_with or None,
                project_config=ProjectConfiguration(project_dir=str(self.exp_dir),
                                                    logging_dir=str(self.exp_dir / "tb")),
            )
        if acc.is_main_process and self.resume_dir is None and self.exp_dir.exists() and any(self.exp_dir.iterdir()):
            archived = self.exp_dir.with_name(f"{self.exp_dir.name}_archived_{time.strftime('%Y%m%d_%H%M%S')}")
            self.exp_dir.rename(archived)  # never overwrite an earlier run (BasicSR does the same)
        acc.wait_for_everyone()
        stamp = time.strftime("%Y%m%d_%H%M%S")
        self.log = setup_logger(opt.name, self.exp_dir / f"train_{opt.name}_{stamp}.log", acc.is_main_process)
        if acc.is_main_process:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            cmd = command or " ".join(shlex.quote(a) for a in sys.argv)
            (self.exp_dir / "options.yml").write_text(f"# command: {cmd}\n# time: {stamp}\n" + options_to_yaml(opt))
            with open(self.exp_dir / "commands.txt", "a") as f:
                f.write(f"{stamp} {cmd}\n")
            if "wandb" in trackers:
                (self.exp_dir / "wandb_run_id").write_text(self.wandb_run_id)
            for w in resume_warnings:
                self.log.warning(w)
            if resume == "latest" and self.resume_dir is None:
                self.log.info("--resume latest: no checkpoint yet in %s, starting from scratch", self.ckpt_root)
        # the same seed on every rank while networks are built (identical initial weights and EMA copies),
        # then a per-rank seed for what should differ between ranks (dropout, drop-path)
        set_seed(opt.manual_seed)
        self.state = TrainState()
        self.step = STEPS.get(opt.model_type)(opt, acc, self.log)
        set_seed(opt.manual_seed, device_specific=True)
        acc.register_for_checkpointing(self.state)
        if self.resume_dir is not None:
            acc.load_state(str(self.resume_dir))  # models, optimizers, schedulers, EMA, RNG, counters
            self.log.info("resumed from %s at iteration %d", self.resume_dir, self.state.iter)

        self.train_set = DATASETS.get(opt.datasets["train"].type)(opt.datasets["train"])
        self.val_sets = {k: DATASETS.get(v.type)(v) for k, v in opt.val_sets().items()}
        if acc.is_main_process and trackers:
            if "wandb" in trackers:
                mode, message = wandb_mode(self.exp_dir / "wandb")
                if mode:  # given to wandb.init: wandb has read its environment already
                    for tracker in acc.log_with:
                        if isinstance(tracker, WandBTracker):
                            tracker.init_kwargs["mode"] = mode
                self.log.info("%s; project %s", message, self.wandb_project)
            acc.init_trackers(opt.name, config=_flat_config(opt))

    def _wandb_init_kwargs(self) -> dict:
        """wandb.init arguments: the run name, its folder, and one run id per run folder (kept in
        ``wandb_run_id``), so a resumed run continues the same W&B run."""
        id_file = self.exp_dir / "wandb_run_id"
        if self.resume_dir is not None and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            import uuid

            run_id = uuid.uuid4().hex[:12]
        self.wandb_run_id = run_id
        return {"name": self.opt.name, "dir": str(self.exp_dir), "id": run_id, "resume": "allow"}

    # ------------------------------------------------------------------ helpers
    def _banner(self) -> None:
        o, acc = self.opt, self.acc
        ds = o.datasets["train"]
        bs, accum = ds.batch_size_per_gpu, o.train.gradient_accumulation_steps
        lines = {
            "experiment": f"{o.name} -> {self.exp_dir}",
            **({"about": o.description} if o.description else {}),
            **self.step.describe(),
            "train data": f"{ds.type}, {self._train_size()}",
            "val sets": ", ".join(f"{k} ({len(v)} images)" for k, v in self.val_sets.items()) or "none",
            "processes": f"{acc.num_processes} ({acc.distributed_type.value}, device {acc.device}; "
                         "set by accelerate launch / accelerate config)",
            "batch per device": bs,
            "gradient accumulation": str(self.decided["gradient accumulation"]),
            "global batch": f"{bs * acc.num_processes * accum} (= {bs} x {acc.num_processes} processes x {accum})",
            "total iterations": f"{o.train.total_iter:,} (starting at {self.state.iter:,})",
            "mixed precision": str(self.decided["mixed precision"]),
            "precedence": precedence.RULE,
        }
        w = max(map(len, lines))
        self.log.info("start-up\n" + "\n".join(f"  {k:<{w}} : {v}" for k, v in lines.items()))

    def _train_size(self) -> str:
        try:  # a stream of remote shards without a manifest does not know its length
            return f"{len(self.train_set):,} samples"
        except TypeError:
            return "a stream of unknown length"

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.acc.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Every rank scores a disjoint slice of each val set; sums are reduced across ranks. Under FSDP /
        DeepSpeed every forward is a collective, so each rank runs the same number of images: the last slice is
        padded with repeats that run but are not scored or saved."""
        from accelerate.utils import DistributedType

        acc, o, it = self.acc, self.opt, self.state.iter
        results = {}
        metric_items = list(o.val.metrics.items())
        collective = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        for set_name, dataset in self.val_sets.items():
            n_val, world = len(dataset), acc.num_processes
            per_rank = -(-n_val // world) if collective else None
            indices = ([acc.process_index + k * world for k in range(per_rank)] if collective
                       else range(acc.process_index, n_val, world))
            # [model metrics..., input (LQ) metrics..., image count]
            sums = torch.zeros(2 * len(metric_items) + 1, dtype=torch.float64, device=acc.device)
            nm = len(metric_items)
            saved = 0
            bar = progress(indices, desc=f"val {set_name}", unit="img", leave=False, final=False,
                           enabled=acc.is_main_process and o.val.pbar)  # a bar on a terminal, lines in a log
            for i in bar:
                if i >= n_val:  # padding (collective launches): same forwards on every rank, not scored
                    sample = dataset[n_val - 1]
                    self.step.restore(sample["lq"][None].to(acc.device), sample)
                    continue
                sample = dataset[i]
                lq = sample["lq"][None].to(acc.device)
                out = quantize(self.step.restore(lq, sample))
                if "gt" in sample:
                    gt = sample["gt"][None].to(acc.device)
                    same_size = lq.shape == gt.shape
                    for j, (_, m) in enumerate(metric_items):
                        fn = METRIC_FUNCTIONS[m.type]
                        sums[j] += fn(out, gt, m.crop_border, m.test_y_channel).sum()
                        if same_size:
                            sums[nm + j] += fn(quantize(lq), gt, m.crop_border, m.test_y_channel).sum()
                sums[-1] += 1
                if o.val.save_img and saved < o.val.num_save_img:
                    panels = (lq, out) + ((sample["gt"][None],) if "gt" in sample else ())
                    key = sample["key"].replace("/", "__")
                    panel = side_by_side(*panels)
                    save_png(panel, self.exp_dir / "visualization" / set_name / f"{key}_{it}.png")
                    if saved == 0 and acc.is_main_process:
                        self._log_panel(f"val/{set_name}/{key}", panel, it)
                    saved += 1
            if acc.num_processes > 1:
                sums = acc.reduce(sums, reduction="sum")
            n = max(1, int(sums[-1].item()))
            for j, (mname, m) in enumerate(metric_items):
                value = (sums[j] / n).item()
                key = f"{set_name}/{mname}"
                results[key] = value
                self.state.last[key] = value
                self.state.inputs[key] = (sums[nm + j] / n).item()
                best = self.state.best.get(key)
                better = best is None or (value > best["value"] if m.better == "higher" else value < best["value"])
                if better:
                    self.state.best[key] = {"value": value, "iter": it}
        if results:
            self.log.info("validation @ iter %d: %s", it, ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
            acc.log({f"val/{k}": v for k, v in results.items()}, step=it)
        return results

    def _log_panel(self, tag: str, panel, it: int) -> None:
        """Send an LQ | output | HQ panel to the trackers (main process only)."""
        for name in self.opt.logger.trackers:
            tracker = self.acc.get_tracker(name, unwrap=True)
            if name == "tensorboard":
                tracker.add_image(tag, panel, it, dataformats="HWC")
            elif name == "wandb":
                import wandb

                tracker.log({tag: wandb.Image(panel, caption="LQ | output | HQ")}, step=it)

    def results_rows(self) -> list:
        rows = []
        for key, value in self.state.last.items():
            set_name, metric = key.split("/", 1)
            b = self.state.best.get(key, {"value": value, "iter": self.state.iter})
            rows.append((set_name, metric, self.state.inputs.get(key, float("nan")), value, b["value"], b["iter"]))
        return rows

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        acc, o, st = self.acc, self.opt, self.state
        t, lg = o.train, o.logger
        accum = t.gradient_accumulation_steps
        self._banner()
        loader = self.train_set.train_loader(seed=o.manual_seed, rank=acc.process_index,
                                             world_size=acc.num_processes, start_iter=st.iter * accum)
        batches_per_epoch = getattr(self.train_set, "batches_per_epoch", None)
        # a bar on a terminal only: a log file or pipe gets the print_freq lines, no escape codes
        bar = progress(total=t.total_iter, initial=st.iter, desc=o.name, lines=False,
                       enabled=acc.is_local_main_process, mininterval=0.5)
        sums: dict[str, torch.Tensor] = {}
        count, t_iter, t_data = 0, 0.0, 0.0
        start_it, t0 = st.iter, time.time()
        try:
            while st.iter < t.total_iter:
                tic = time.time()
                for _ in range(accum):
                    td = time.time()
                    batch = next(loader)
                    st.bad_samples.update(batch.pop("skipped", None) or {})
                    st.skipped_samples = len(st.bad_samples)
                    t_data += time.time() - td
                    out = self.step.train_step(self._to_device(batch), st.iter + 1)
                    if "nonfinite" in out:
                        st.nonfinite_steps += 1
                        self.log.warning("iteration %d: non-finite loss, update skipped (train.skip_nonfinite)", st.iter + 1)
                        continue
                    for k, v in out.items():
                        sums[k] = sums.get(k, 0) + v.float()
                    count += 1
                st.iter += 1
                t_iter += time.time() - tic
                bar.update(1)
                if st.iter % lg.print_freq == 0 or st.iter == t.total_iter:
                    vals = {k: v / max(count, 1) for k, v in sums.items()}
                    if acc.num_processes > 1 and vals:
                        vals = {k: acc.reduce(v.reshape(1), reduction="mean") for k, v in vals.items()}
                    vals = {k: float(v) for k, v in vals.items()}
                    n_it = st.iter - start_it
                    eta = (time.time() - t0) / max(n_it, 1) * (t.total_iter - st.iter)
                    epoch = (st.iter * accum) // batches_per_epoch if batches_per_epoch else None
                    extra = {"skipped": st.skipped_samples} if st.skipped_samples else {}
                    self.log.info(message_line(o.name, epoch, st.iter, self.step.current_lr(), eta,
                                               t_iter / lg.print_freq, t_data / lg.print_freq, {**vals, **extra}))
                    bar.set_postfix({k: f"{v:.3e}" for k, v in vals.items()} | {"lr": f"{self.step.current_lr():.2e}"})
                    acc.log({**{f"train/{k}": v for k, v in vals.items()}, "train/lr": self.step.current_lr(),
                             "train/skipped_samples": st.skipped_samples}, step=st.iter)
                    sums, count, t_iter, t_data = {}, 0, 0.0, 0.0
                if self.val_sets and (st.iter % o.val.val_freq == 0 or st.iter == t.total_iter):
                    self.validate()
                if st.iter % lg.save_checkpoint_freq == 0 or st.iter == t.total_iter:
                    self.save()
        finally:
            bar.close()
        return self.finish()

    def save(self) -> None:
        """A checkpoint and the iteration's weight exports, completed together (see train/checkpoint.py)."""
        it, files = self.state.iter, []

        def export() -> None:
            self.step.before_export()  # collective: e.g. LoRA shards under FSDP/ZeRO-3
            if self.acc.is_main_process:
                files.extend(self.step.export(self.exp_dir / "models" / f"net_g_{it}", it))
                for f in files:
                    copy_as_latest(Path(f), f"net_g_{it}", "net_g_latest")

        path = save_checkpoint(self.acc, self.ckpt_root, it, self.opt.logger.keep_last, before_complete=export)
        if self.acc.is_main_process:
            self.log.info("saved %s and %s", path, ", ".join(files))

    def finish(self) -> dict:
        acc, st = self.acc, self.state
        summary = {"name": self.opt.name, "iter": st.iter, "skipped_samples": st.skipped_samples,
                   "nonfinite_steps": st.nonfinite_steps, "last": st.last, "best": st.best, "input": st.inputs,
                   "experiment_dir": str(self.exp_dir)}
        if acc.is_main_process:
            (self.exp_dir / "results.json").write_text(json.dumps(summary, indent=2))
            rows = self.results_rows()
            if rows:
                self.log.info("results after %d iterations\n%s", st.iter, results_table(rows))
                if self.opt.description:
                    self.log.info("%s", self.opt.description)
                vis = sorted((self.exp_dir / "visualization").rglob(f"*_{st.iter}.png"))
                if vis:
                    shutil.copyfile(vis[0], self.exp_dir / "sample_lq_output_hq.png")
                    self.log.info("side-by-side (LQ | output | HQ): %s", self.exp_dir / "sample_lq_output_hq.png")
        acc.wait_for_everyone()
        acc.end_training()
        return summary
