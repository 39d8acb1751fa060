"""One-step SD restorer: training-step speed/memory (with VSD) and tiled-inference memory.

Random-initialised components in diffusers layout (no weights needed for timing), loaded through the
same ``from_pretrained`` path as real weights, trained through the real ``onestep_sd`` step
(generator + VSD + fake-score update, two optimizers).

    python bench/generative_step.py                                   # CPU smoke check, tiny config
    python bench/generative_step.py --device cuda --size real --res 512 --vsd --grad-ckpt --bf16 \\
        --infer-res 1024 --vae-tile 512 --latent-tile 64              # SD-2.1-base sized (GPU targets)

GPU targets (issue #5): SD-2.1-sized, 512^2, VSD, batch 1, gradient checkpointing + bf16: peak <= 16 GB;
1024^2 tiled inference: peak <= 8 GB. Peak memory on CUDA is ``torch.cuda.max_memory_allocated``;
on CPU the process's peak RSS (``ru_maxrss``) is printed for reference only.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _peak(device) -> str:
    if device == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (cuda max_memory_allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (CPU peak RSS, whole process)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", default="tiny", choices=["tiny", "real"])
    p.add_argument("--res", type=int, default=None, help="training crop (default 32 tiny / 512 real)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--vsd", action="store_true")
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--infer-res", type=int, default=None, help="inference image size (default 64 tiny / 1024 real)")
    p.add_argument("--vae-tile", type=int, default=None)
    p.add_argument("--latent-tile", type=int, default=None)
    p.add_argument("--sd-dir", help="reuse a components folder (default: write random ones to a temp folder)")
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    tiny = a.size == "tiny"
    res = a.res or (32 if tiny else 512)
    infer_res = a.infer_res or (64 if tiny else 1024)
    vae_tile = a.vae_tile if a.vae_tile is not None else (32 if tiny else 512)
    latent_tile = a.latent_tile if a.latent_tile is not None else (8 if tiny else 64)

    from accelerate import Accelerator

    from ggt_ir.testing.pipelines import save_tiny_sd
    from ggt_ir.train.options import load_options
    from ggt_ir.train.steps.onestep_sd import OneStepSDStep

    tmp = tempfile.TemporaryDirectory()
    t0 = time.time()
    sd_dir = Path(a.sd_dir) if a.sd_dir else save_tiny_sd(Path(tmp.name) / "sd", a.size)
    t_write = time.time() - t0
    mp = "bf16" if a.bf16 else "no"
    opt_d = {"name": "bench", "model_type": "onestep_sd",
             "network_g": {"type": "OneStepSD", "pretrained": str(sd_dir), "prompt": "a photo",
                           "gradient_checkpointing": a.grad_ckpt, "vae_tile": vae_tile, "latent_tile": latent_tile},
             "train": {"total_iter": 1000, "optim_g": {"type": "AdamW", "lr": 5e-5}, "pixel_opt": {"type": "MSELoss"},
                       "mixed_precision": mp, "scheduler": {"type": "ConstantLR"}},
             "logger": {"trackers": []}}
    if a.vsd:
        opt_d["train"]["vsd_opt"] = {"lora_rank": 4, "cfg": 7.5}
    (Path(tmp.name) / "o.yml").write_text(yaml.safe_dump(opt_d))
    opt = load_options(Path(tmp.name) / "o.yml", check_paths=False)
    acc = Accelerator(mixed_precision=mp, cpu=a.device == "cpu")
    t0 = time.time()
    step = OneStepSDStep(opt, acc, None)
    t_build = time.time() - t0
    dev = acc.device
    batch = {"lq": torch.rand(a.batch, 3, res, res, device=dev), "gt": torch.rand(a.batch, 3, res, res, device=dev),
             "prompt": ["a photo"] * a.batch}
    times = []
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(a.steps + 1):
        _sync(a.device)
        t0 = time.time()
        step.train_step(batch, i + 1)
        _sync(a.device)
        if i:  # first step = warm-up
            times.append(time.time() - t0)
    train_peak = _peak(a.device)

    if a.device == "cuda":
        step.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    lq = torch.rand(1, 3, infer_res, infer_res, device=dev)
    _sync(a.device)
    t0 = time.time()
    out = step.restore(lq)
    _sync(a.device)
    t_inf = time.time() - t0
    infer_peak = _peak(a.device)
    assert out.shape == lq.shape

    rows = {
        "device": torch.cuda.get_device_name() if a.device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "config": f"{a.size} (SD-2.1-base shapes)" if not tiny else "tiny random config (smoke check only)",
        "train": f"{res}x{res}, batch {a.batch}, VSD {'on' if a.vsd else 'off'}, grad ckpt {'on' if a.grad_ckpt else 'off'}, {mp}",
        "train step (median)": f"{statistics.median(times):.3f} s/it over {len(times)} steps",
        "train peak memory": train_peak,
        "inference": f"{infer_res}x{infer_res}, VAE tile {vae_tile}px, latent tile {latent_tile}",
        "inference time": f"{t_inf:.3f} s",
        "inference peak memory": infer_peak,
        "setup": f"write components {t_write:.1f} s, build step {t_build:.1f} s",
        "trainable": f"{step.num_trainable / 1e6:.3f} M LoRA parameters (generator)",
    }
    w = max(map(len, rows))
    print("\n".join(f"{k:<{w}} : {v}" for k, v in rows.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
