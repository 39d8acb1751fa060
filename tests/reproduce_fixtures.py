"""A tiny reproduce table on the demo data: two models (SwinIR, NAFNet) x two arms, plus a zero-shot row."""
from __future__ import annotations

from pathlib import Path

import yaml

from helpers import TINY_SWINIR

TINY_NAFNET = {"type": "NAFNet", "img_channel": 3, "width": 8, "enc_blk_nums": [1], "middle_blk_num": 1,
               "dec_blk_nums": [1]}
ARM_CATEGORIES = {"existing": ["general", "rain"], "ggt100k": None}  # "existing data": fewer kinds of degradation


def write_demo_table(tmp: Path, demo_root: Path, weights_dir: Path, total_iter: int = 6, name: str = "demo",
                     models: tuple[str, ...] = ("SwinIR", "NAFNet"), zero_shot: bool = True,
                     arms: tuple[str, ...] = tuple(ARM_CATEGORIES)) -> Path:
    """Recipes (options/train-style, with include:), an eval file and a table file under ``tmp``: each of
    ``models`` x ``arms``, plus the LQ input as a zero-shot row when ``zero_shot``."""
    rec = tmp / "recipes"
    rec.mkdir(parents=True, exist_ok=True)
    for model, net in (("swinir", TINY_SWINIR), ("nafnet", TINY_NAFNET)):
        base = {"model_type": "regression", "scale": 1, "manual_seed": 0,
                "datasets": {"val": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test"}},
                "network_g": net,
                "train": {"total_iter": total_iter, "warmup_iter": 0, "optim_g": {"type": "AdamW", "lr": 2e-3},
                          "scheduler": {"type": "CosineAnnealingLR", "eta_min": 1e-5}, "pixel_opt": {"type": "L1Loss"},
                          "ema_decay": 0.9},
                "val": {"val_freq": 1000, "num_save_img": 0, "metrics": {"psnr": {"type": "psnr"}}},
                "logger": {"print_freq": 1, "save_checkpoint_freq": 3, "keep_last": 2, "trackers": []}}
        (rec / f"{model}_base.yml").write_text(yaml.safe_dump(base))
        for arm, cats in ARM_CATEGORIES.items():
            train = {"type": "PairedFolder", "dataroot": str(demo_root), "split": "train", "gt_size": 16,
                     "batch_size_per_gpu": 2, "num_worker_per_gpu": 0}
            if cats:
                train["categories"] = cats
            (rec / f"{model}_{arm}.yml").write_text(yaml.safe_dump(
                {"include": f"{model}_base.yml", "name": f"{model}_{arm}", "datasets": {"train": train}}))
    ev = {"name": "x", "results_root": "unused", "restored": "input",
          "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test"}},
          "metrics": {"psnr": {}, "ssim": {}, "lpips": {}},
          "eval": {"batch_size": 4, "num_grid": 2, "grid_size": 32, "weights_dir": str(weights_dir), "strict": True}}
    (tmp / "eval.yml").write_text(yaml.safe_dump(ev))
    rows = [{"model": m, "recipe": str(rec / f"{m.lower()}_{arm}.yml")} for m in models for arm in arms]
    if zero_shot:
        rows.append({"model": "LQ input", "data": "zero-shot", "restored": "input"})
    table = {"name": name, "title": "demo: existing data vs GGT-100K", "results_root": str(tmp / "results"),
             "out_dir": str(tmp / "tables"), "experiments_root": str(tmp / "exp"), "eval": str(tmp / "eval.yml"),
             "accelerate": {"num_processes": 1, "cpu": True}, "rows": rows,
             "columns": [{"set": "test", "metric": "psnr"}, {"set": "test", "metric": "ssim"},
                         {"set": "test", "metric": "lpips"},
                         {"set": "test", "metric": "psnr", "category": "rain", "label": "PSNR (rain)"}],
             "delta": {"baseline": "Existing", "target": "GGT-100K"}, "decimals": {"psnr": 3, "default": 5}}
    p = tmp / f"{name}.yml"
    p.write_text(yaml.safe_dump(table, sort_keys=False))
    return p
