"""BasicSR option files as they are: what ggt-ir translates, what it ignores, and what it cannot honour.

The train schema speaks BasicSR's vocabulary already (``name``, ``datasets.train``, ``network_g``,
``train.optim_g``, ``val.metrics``, ...). A file written for BasicSR (or a project built on it: SwinIR,
Restormer, NAFNet, Real-ESRGAN) also carries keys that only mean something to BasicSR's own runner.
:func:`translate` maps them before the file is typed:

* translated: ``model_type: SRModel``/``SwinIRModel``/``ImageRestorationModel``/``ImageCleanModel``/
  ``RealESRNetModel`` -> ``regression``; ``type: calculate_psnr``/``calculate_ssim`` -> ``psnr``/``ssim``;
  ``warmup_iter: -1`` -> 0; ``use_flip`` -> ``use_hflip``; ``geometric_augs`` -> flips and rotations;
  ``use_grad_clip`` -> ``grad_clip: 0.01`` (Restormer's value); ``TrueCosineAnnealingLR`` and one-period
  ``CosineAnnealingRestart(Cyclic)LR`` -> ``CosineAnnealingLR``; ``use_tb_logger`` / ``wandb.project`` ->
  ``logger.trackers`` / ``logger.wandb_project``; ``Dataset_PairedImage`` -> ``PairedFolder``;
  ``RealESRGANDataset`` and the top-level degradation keys -> ``SyntheticDegradation`` with ``degradation:``;
* ignored (no meaning here): ``num_gpu``, ``dist_params``, ``io_backend: {type: disk}``, ``use_shuffle``,
  ``dataset_enlarge_ratio``, ``prefetch_mode``, ``meta_info_file``, ``filename_tmpl: '{}'``, ``rgb2bgr``, ...;
* cannot be honoured (changes what is trained; reported as problems, all at once): GAN model types and
  their keys, LMDB data, progressive patch sizes, multi-period schedules, USM-sharpened targets, ...

Integer options written as ``!!float 5e3`` are read as 5000 by :func:`ggt_ir.config.to_typed` itself.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

# model_type -> our step
MODEL_TYPES = {"SRModel": "regression", "SwinIRModel": "regression", "ImageRestorationModel": "regression",
               "ImageCleanModel": "regression", "RealESRNetModel": "regression"}
GAN_MODEL_TYPES = ("SRGANModel", "ESRGANModel", "RealESRGANModel", "SwinIRGANModel", "HiFaceGANModel",
                   "StyleGAN2Model", "VideoGANModel", "VideoRecurrentGANModel")
SPANDREL_ARCHS = ("RRDBNet",)  # BasicSR's arch names spandrel builds with BasicSR's arguments (archs/spandrel_arch.py)
GAN_TRAINED = ("SRGANModel", "ESRGANModel", "RealESRGANModel")  # -> model_type: gan (ggt_ir/train/steps/gan.py)
GAN_KEYS = {"network_d": None, "path": ("pretrain_network_d", "param_key_d", "strict_load_d"),
            "train": ("optim_d", "scheduler_d", "gan_opt", "perceptual_opt", "net_d_iters", "net_d_init_iters",
                      "net_d_reg_every", "r1_reg_weight", "path_reg_weight")}
GAN_TOP_KEYS = ("percep_gt_usm", "gan_gt_usm")  # Real-ESRGAN: USM targets of the perceptual and GAN losses

IGNORED_TOP = {"num_gpu": "accelerate decides the processes", "dist_params": "accelerate sets up the process group",
               "find_unused_parameters": "the DDP wrapper is accelerate's",
               "is_train": "set by BasicSR at run time", "dist": "set by BasicSR at run time",
               "rank": "set by BasicSR at run time", "world_size": "set by BasicSR at run time",
               "root_path": "set by BasicSR at run time", "queue_size": "ggt-ir shuffles samples, no batch pool"}
IGNORED_DATASET = {"use_shuffle": "training data is always shuffled",
                   "dataset_enlarge_ratio": "ggt-ir counts iterations, not epochs",
                   "prefetch_mode": "the DataLoader prefetches", "num_prefetch_queue": "the DataLoader prefetches",
                   "meta_info_file": "every pair found in the folders is used",
                   "meta_info": "every image found in the folder is used", "phase": "set by BasicSR at run time",
                   "cache_data": "images are read as needed"}
IGNORED_VAL = {"rgb2bgr": "images are RGB throughout", "use_image": "metrics are computed on 8-bit images",
               "max_minibatch": "validation runs one image at a time", "suffix": "no per-run suffix",
               "window_size": "zoo networks pad to their own multiple", "grids": "validation runs whole images",
               "crop_size": "validation runs whole images", "trans_num": "no test-time augmentation in validation"}
IGNORED_PATH = ("models", "training_states", "log", "visualization", "results_root", "root")
METRIC_TYPES = {"calculate_psnr": "psnr", "calculate_ssim": "ssim"}
DATASET_TYPES = {"Dataset_PairedImage": "PairedFolder", "RealESRGANDataset": "SyntheticDegradation"}
# Real-ESRGAN's degradation keys: in its dataset block (kernels) and at the top level (the rest)
DEGRADATION_KEYS = ("blur_kernel_size", "kernel_list", "kernel_prob", "sinc_prob", "blur_sigma", "betag_range",
                    "betap_range", "kernel_list2", "kernel_prob2", "sinc_prob2", "blur_sigma2", "betag_range2",
                    "betap_range2", "final_sinc_prob", "resize_prob", "resize_range", "gaussian_noise_prob",
                    "noise_range", "poisson_scale_range", "gray_noise_prob", "jpeg_range", "second_blur_prob",
                    "resize_prob2", "resize_range2", "gaussian_noise_prob2", "noise_range2", "poisson_scale_range2",
                    "gray_noise_prob2", "jpeg_range2")


@dataclass
class Translation:
    raw: dict
    translated: list = field(default_factory=list)  # "old -> new"
    ignored: list = field(default_factory=list)  # "key (why)"
    problems: list = field(default_factory=list)  # what cannot be honoured, with what to do

    def note(self) -> str | None:
        """The one warning for the file, or None when it had no BasicSR-only key."""
        parts = []
        if self.translated:
            parts.append("translated: " + "; ".join(self.translated))
        if self.ignored:
            parts.append("ignored: " + "; ".join(self.ignored))
        return ("BasicSR keys — " + ". ".join(parts)) if parts else None


def translate(raw: dict) -> Translation:
    """A copy of ``raw`` with BasicSR-only keys translated or dropped (see the module docstring)."""
    t = Translation(copy.deepcopy(raw))
    r = t.raw
    _model_type(r, t)
    for key, why in IGNORED_TOP.items():
        if key in r:
            r.pop(key)
            t.ignored.append(f"{key} ({why})")
    name = r.get("name")
    if isinstance(name, str) and "debug" in name:
        t.ignored.append(f"name {name!r} contains 'debug': BasicSR would run in debug mode, ggt-ir does so only "
                         "with --debug")
    if isinstance(name, str) and "_archived_" in name:
        t.ignored.append(f"name {name!r} looks like an archived BasicSR run; the run folder is "
                         f"experiments/{name} as written")
    for usm in ("gt_usm", "l1_gt_usm"):
        if r.pop(usm, False):
            t.problems.append(f"'{usm}: true' (training against an unsharp-masked GT) is not available; "
                              f"remove it to train against the GT as it is")
    top_degradation = {k: r.pop(k) for k in DEGRADATION_KEYS if k in r}
    top_gt_size = r.pop("gt_size", None)
    for phase, block in (r.get("datasets") or {}).items():
        if isinstance(block, dict):
            _dataset(block, f"datasets.{phase}", phase == "train", top_degradation, top_gt_size, t)
    _spandrel_networks(r, t)
    _path(r, t)
    _train(r, t)
    _val(r, t)
    _logger(r, t)
    return t


def _spandrel_networks(r: dict, t: Translation) -> None:
    """BasicSR architectures the zoo builds through spandrel (``network_g: {type: Spandrel, arch: ...}``)."""
    for key in ("network_g", "network_d"):
        net = r.get(key)
        if isinstance(net, dict) and net.get("type") in SPANDREL_ARCHS:
            arch = net.pop("type")
            if arch == "RRDBNet" and "scale" not in net and r.get("scale") is not None:
                net["scale"] = r["scale"]  # BasicSR passes the top-level scale
            r[key] = {"type": "Spandrel", "arch": arch, **net}
            t.translated.append(f"{key}.type {arch} -> Spandrel (arch: {arch})")


def _model_type(r: dict, t: Translation) -> None:
    mt = r.get("model_type")
    if mt in MODEL_TYPES:
        r["model_type"] = MODEL_TYPES[mt]
        t.translated.append(f"model_type {mt} -> {MODEL_TYPES[mt]}")
    elif mt in GAN_TRAINED:
        r["model_type"] = "gan"
        t.translated.append(f"model_type {mt} -> gan")
        for k in ("l1_gt_usm", *GAN_TOP_KEYS):  # Real-ESRGAN's USM targets are the GAN step's train options
            if k in r:
                r.setdefault("train", {})[k] = bool(r.pop(k))
                t.translated.append(f"{k} -> train.{k}")
    elif mt in GAN_MODEL_TYPES:
        present = ["network_d"] if "network_d" in r else []
        r.pop("network_d", None)
        for k in GAN_TOP_KEYS:
            if k in r:
                r.pop(k)
                present.append(k)
        for block, keys in GAN_KEYS.items():
            for k in keys or ():
                if isinstance(r.get(block), dict) and k in r[block]:
                    r[block].pop(k)
                    present.append(f"{block}.{k}")
        r["model_type"] = "regression"  # so the rest of the file is still checked
        t.problems.append(f"model_type {mt}: GAN training is not available in ggt-ir, so "
                          f"{', '.join(present) or 'its discriminator'} cannot be honoured; train the "
                          "non-GAN stage (e.g. model_type: RealESRNetModel, pixel losses only) instead")
    elif isinstance(mt, str) and mt.endswith("Model"):
        t.problems.append(f"model_type {mt} is BasicSR's and has no ggt-ir step; use regression (pixel "
                          "losses), onestep_sd or editor_lora")
        r["model_type"] = "regression"


def _dataset(block: dict, kp: str, is_train: bool, top_degradation: dict, top_gt_size, t: Translation) -> None:
    typ = block.get("type")
    if typ in DATASET_TYPES:
        block["type"] = DATASET_TYPES[typ]
        t.translated.append(f"{kp}.type {typ} -> {block['type']}")
    io = block.pop("io_backend", None)
    if io is not None:
        kind = io.get("type") if isinstance(io, dict) else io
        if kind == "disk":
            t.ignored.append(f"{kp}.io_backend (images are read from disk)")
        else:
            t.problems.append(f"{kp}.io_backend type {kind}: ggt-ir reads image folders or webdataset shards, "
                              f"not {kind}; point dataroot_gt/dataroot_lq at image folders, or convert them "
                              "with `ggt-ir shards build` (docs/data.md)")
    tmpl = block.pop("filename_tmpl", None)
    if tmpl not in (None, "{}"):
        t.problems.append(f"{kp}.filename_tmpl {tmpl!r}: LQ files are paired with GT files by name; rename "
                          "them so the names match, or drop the key")
    elif tmpl is not None:
        t.ignored.append(f"{kp}.filename_tmpl (LQ and GT files share names)")
    for key, why in IGNORED_DATASET.items():
        if key in block:
            block.pop(key)
            t.ignored.append(f"{kp}.{key} ({why})")
    if block.get("color") not in (None, "rgb", "RGB"):
        t.problems.append(f"{kp}.color {block['color']!r}: only RGB training is available")
    block.pop("color", None)
    if "use_flip" in block:
        block["use_hflip"] = block.pop("use_flip")
        t.translated.append(f"{kp}.use_flip -> use_hflip")
    if "geometric_augs" in block:
        on = bool(block.pop("geometric_augs"))
        block.setdefault("use_hflip", on)
        block.setdefault("use_rot", on)
        t.translated.append(f"{kp}.geometric_augs -> use_hflip, use_rot: {str(on).lower()}")
    progressive = {k: block.pop(k) for k in ("mini_batch_sizes", "iters", "gt_sizes") if k in block}
    if progressive:
        sizes = [v for v in progressive.values() if isinstance(v, list)]
        if sizes and all(len(v) == 1 for v in sizes):
            if "mini_batch_sizes" in progressive:
                block["batch_size_per_gpu"] = progressive["mini_batch_sizes"][0]
            if "gt_sizes" in progressive:
                block["gt_size"] = progressive["gt_sizes"][0]
            t.translated.append(f"{kp}: one-stage progressive keys -> gt_size, batch_size_per_gpu")
        else:
            desc = ", ".join(f"{k} {v}" for k, v in progressive.items())
            t.problems.append(f"{kp}: progressive training ({desc}) is not available; train one patch size, "
                              "e.g. gt_size: 128, batch_size_per_gpu: 8, and drop mini_batch_sizes/iters/gt_sizes")
    if block.get("type") == "SyntheticDegradation":
        deg = dict(block.get("degradation") or {})
        for k in DEGRADATION_KEYS:
            if k in block:
                deg[k] = block.pop(k)
        if is_train:
            deg.update({k: v for k, v in top_degradation.items() if k not in deg})
            if top_gt_size is not None:
                block.setdefault("gt_size", top_gt_size)
        k2 = block.pop("blur_kernel_size2", None)
        if k2 is not None and k2 != deg.get("blur_kernel_size", k2):
            t.problems.append(f"{kp}.blur_kernel_size2 {k2} differs from blur_kernel_size; one kernel size "
                              "serves both stages here")
        block["degradation"] = deg
        t.translated.append(f"{kp}: Real-ESRGAN degradation keys -> {kp}.degradation")


def _path(r: dict, t: Translation) -> None:
    p = r.get("path")
    if not isinstance(p, dict):
        return
    for key in list(p):
        if key in IGNORED_PATH:
            p.pop(key)
            t.ignored.append(f"path.{key} (set at run time)")


def _cosine(s: dict, total, t: Translation, kp: str) -> None:
    """BasicSR's cosine schedules: exact only when one cosine spans the whole run."""
    typ = s["type"]
    if typ == "TrueCosineAnnealingLR":
        span, eta_min = s.get("T_max"), s.get("eta_min", 0.0)
    else:
        periods, weights = list(s.get("periods") or []), list(s.get("restart_weights") or [1])
        eta_mins = s.get("eta_mins", [s.get("eta_min", 0.0)])
        if len(periods) != 1 or any(w != 1 for w in weights):
            t.problems.append(f"{kp}.type {typ} with periods {periods} (restart_weights {weights}, eta_mins "
                              f"{eta_mins}) has no equivalent here; use CosineAnnealingLR (one cosine over "
                              "total_iter, eta_min), MultiStepLR or ConstantLR, with warmup_iter for a warm-up")
            for k in ("periods", "restart_weights", "eta_mins", "eta_min"):
                s.pop(k, None)
            s["type"] = "CosineAnnealingLR"
            return
        span, eta_min = periods[0], (eta_mins[0] if isinstance(eta_mins, list) else eta_mins)
    if total is not None and span is not None and float(span) != float(total):
        t.problems.append(f"{kp}.type {typ} spans {span} iterations but train.total_iter is {total}; "
                          "CosineAnnealingLR spans total_iter: set them equal")
    for k in ("T_max", "periods", "restart_weights", "eta_mins"):
        s.pop(k, None)
    s["type"], s["eta_min"] = "CosineAnnealingLR", eta_min
    t.translated.append(f"{kp}.type {typ} -> CosineAnnealingLR (eta_min {eta_min})")


def _train(r: dict, t: Translation) -> None:
    tr = r.get("train")
    if not isinstance(tr, dict):
        return
    if tr.get("warmup_iter") is not None and tr["warmup_iter"] < 0:
        tr["warmup_iter"] = 0
        t.translated.append("train.warmup_iter -1 -> 0 (no warm-up)")
    if "use_grad_clip" in tr:
        if tr.pop("use_grad_clip"):
            tr.setdefault("grad_clip", 0.01)
            t.translated.append("train.use_grad_clip -> grad_clip: 0.01 (Restormer's max norm)")
        else:
            t.ignored.append("train.use_grad_clip: false")
    mix = tr.pop("mixing_augs", None)
    if isinstance(mix, dict) and mix.get("mixup"):
        t.problems.append("train.mixing_augs.mixup: true (Restormer's mixup) is not available; set it false")
    elif mix is not None:
        t.ignored.append("train.mixing_augs (mixup off)")
    s = tr.get("scheduler")
    if isinstance(s, dict):
        if s.get("type") in ("TrueCosineAnnealingLR", "CosineAnnealingRestartLR", "CosineAnnealingRestartCyclicLR"):
            _cosine(s, tr.get("total_iter"), t, "train.scheduler")
        elif s.get("type") == "MultiStepRestartLR":
            if s.pop("restarts", None) or s.get("restart_weights") not in (None, [1]):
                t.problems.append("train.scheduler MultiStepRestartLR with restarts has no equivalent; use MultiStepLR")
            s.pop("restart_weights", None)
            s["type"] = "MultiStepLR"
            t.translated.append("train.scheduler.type MultiStepRestartLR -> MultiStepLR")
    p = tr.pop("perceptual_opt", None)
    if isinstance(p, dict):  # BasicSR's PerceptualLoss options are ours; any step composes train.losses
        tr["losses"] = [*(tr.get("losses") or []), p]
        t.translated.append("train.perceptual_opt -> an entry of train.losses")
    if r.get("model_type") != "gan":
        for k in ("gan_opt", "optim_d", "net_d_iters", "net_d_init_iters"):
            if k in tr:
                tr.pop(k)
                t.problems.append(f"train.{k}: only model_type: gan trains a discriminator; drop it")


def _val(r: dict, t: Translation) -> None:
    v = r.get("val")
    if not isinstance(v, dict):
        return
    for key, why in IGNORED_VAL.items():
        if key in v:
            v.pop(key)
            t.ignored.append(f"val.{key} ({why})")
    for name, m in (v.get("metrics") or {}).items():
        if isinstance(m, dict) and m.get("type") in METRIC_TYPES:
            old = m["type"]
            m["type"] = METRIC_TYPES[old]
            t.translated.append(f"val.metrics.{name}.type {old} -> {m['type']}")
        elif isinstance(m, dict) and str(m.get("type", "")).startswith("calculate_"):
            t.problems.append(f"val.metrics.{name}.type {m['type']}: validation computes psnr and ssim; score "
                              "other metrics after training with `ggt-ir eval` (docs/evaluation.md)")
            m["type"] = "psnr"


def _logger(r: dict, t: Translation) -> None:
    lg = r.get("logger")
    if not isinstance(lg, dict):
        return
    trackers = list(lg.get("trackers", ["tensorboard"]))
    touched = False
    if "use_tb_logger" in lg:
        on = bool(lg.pop("use_tb_logger"))
        trackers = [x for x in trackers if x != "tensorboard"] + (["tensorboard"] if on else [])
        touched = True
        t.translated.append(f"logger.use_tb_logger -> trackers{' include' if on else ' exclude'} tensorboard")
    wb = lg.pop("wandb", None)
    if isinstance(wb, dict):
        if wb.get("project"):
            trackers = [x for x in trackers if x != "wandb"] + ["wandb"]
            lg.setdefault("wandb_project", wb["project"])
            t.translated.append(f"logger.wandb.project -> logger.wandb_project: {wb['project']}")
            touched = True
        else:
            t.ignored.append("logger.wandb (no project)")
        if wb.get("resume_id"):
            t.ignored.append("logger.wandb.resume_id (a resumed run continues its own W&B run)")
    if touched:
        lg["trackers"] = trackers
