"""The GAN demo's no-reference score: PIQE (pyiqa; no weight file, lower is better) on the demo test split for the
LQ input, the HQ image, the regression demo model and the GAN demo model; saves LQ | GAN | HQ and
LQ | regression | GAN | HQ panels of the first test image under experiments/gan_demo/.

    python train.py -opt options/demo/gan_demo_stage1.yml && python train.py -opt options/demo/gan_demo.yml
    python bench/gan_demo_nr.py
"""
import json
from pathlib import Path

import pyiqa

from ggt_ir.data import DATASETS
from ggt_ir.data.paired_folder import PairedFolderDataset
from ggt_ir.inference.loader import load_restorer
from ggt_ir.utils.image_io import save_png, side_by_side

opts = DATASETS.check({"type": "PairedFolder", "dataroot": "datasets/demo/GGT-demo", "split": "test"}, "x", "test")
ds = PairedFolderDataset(opts)
piqe = pyiqa.create_metric("piqe", device="cpu")
runs = {"regression": load_restorer("experiments/gan_demo_stage1"), "gan": load_restorer("experiments/gan_demo")}
scores = {"lq": [], "hq": [], **{k: [] for k in runs}}
panels = []
for i in range(len(ds)):
    s = ds[i]
    lq, gt = s["lq"][None], s["gt"][None]
    outs = {k: r.restore(lq).clamp(0, 1) for k, r in runs.items()}
    scores["lq"].append(piqe(lq).item()); scores["hq"].append(piqe(gt).item())
    for k, o in outs.items():
        scores[k].append(piqe(o).item())
    if i < 3:
        panels.append((s["key"], lq, outs["regression"], outs["gan"], gt))
mean = {k: sum(v) / len(v) for k, v in scores.items()}
print(json.dumps({"n": len(ds), "piqe_mean": mean}, indent=1))
for key, *p in panels[:1]:
    save_png(side_by_side(p[0], p[2], p[3]), Path("experiments/gan_demo/sample_lq_gan_hq.png"))
    save_png(side_by_side(*p), Path("experiments/gan_demo/sample_lq_regression_gan_hq.png"))
    print("panel", key)
