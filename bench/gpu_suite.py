"""The GPU suite of issue 11: the generative recipes and the restorers' bf16 training, random weights in real shapes.

One script, sized for ~8 minutes on one H100 / H200 (most of it writing and reading the random-weight folders):

* ``onestep``: the OneStepSD recipe (``options/train/OneStepSD/onestep_sd_ggt100k.yml``: OSEDiff's L2 + LPIPS + VSD,
  two optimizers, gradient checkpointing, bf16) on the real SD-2.1-base UNet / VAE / CLIP, 512², batch 1 and 4;
* ``flux``: the FLUX.1-Kontext recipe, full-depth transformer (19 + 38 blocks), 1024², batch 1, bf16 and int8 base;
* ``qwen``: the Qwen-Image-Edit recipes, full-depth transformer (60 blocks), 1024², batch 1, bf16 and NF4 (the
  ``qwen_image_edit_nf4_ggt100k.yml`` variant; int8 where bitsandbytes is missing);
* ``restorers``: SwinIR and Restormer bf16 training steps, ours vs their reference implementations (basicsr,
  spandrel-extra-arches; ``bench/model_speed.py``'s builders), with gradient parity on the same weights and input.

Each generative row runs the family's real ``Step`` (``train_step``) built from the recipe's option file, on a folder
written by ``ggt_ir.testing.real_shapes`` and loaded through ``from_pretrained``; it reports s/it (median of the timed
steps after one warm-up), ``torch.cuda.max_memory_allocated`` since the step was built, and ``ggt-ir plan``'s estimate
for the same options (the planner check the issue asks for). The big text encoders (T5-XXL, Qwen2.5-VL) are written
with ``--text-layers`` layers (full depth would need ~60 GB of disk for Qwen): with ``text_encoders: offload`` the
training step does not hold them; with ``gpu`` the table names the layers used and the planner row is for the full
encoder.

    python bench/gpu_suite.py --smoke                       # CPU, tiny models: checks the script end to end
    python bench/gpu_suite.py --json bench/gpu_suite.json   # one GPU, real shapes (~8 min)
    python bench/gpu_suite.py --only flux,qwen --steps 5
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GiB = 2**30
SECTIONS = ("onestep", "flux", "qwen", "restorers")
RECIPES = {"onestep": "options/train/OneStepSD/onestep_sd_ggt100k.yml",
           "flux": "options/train/EditorLoRA/flux_kontext_ggt100k.yml",
           "qwen": "options/train/EditorLoRA/qwen_image_edit_ggt100k.yml",
           "qwen_nf4": "options/train/EditorLoRA/qwen_image_edit_nf4_ggt100k.yml"}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def reset_memory(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(dev) -> float | None:
    return torch.cuda.max_memory_allocated() / GiB if dev.type == "cuda" else None


def time_steps(fn, steps: int, dev) -> float:
    """Median seconds of ``steps`` calls after one warm-up call."""
    times = []
    for i in range(steps + 1):
        sync(dev)
        t = time.perf_counter()
        fn(i + 1)
        sync(dev)
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def planner_estimate(opt) -> float | None:
    try:
        from ggt_ir.train.plan import build_plan, per_gpu

        return per_gpu(build_plan(opt))["peak"] / GiB
    except Exception as e:  # the estimate is a comparison, never a reason to lose the measurement
        print(f"  planner failed: {type(e).__name__}: {e}", flush=True)
        return None


def recipe_step(recipe: str, overrides: list[str], dev, mixed_precision: str):
    """The recipe's Step, built from its option file with ``overrides``; (step, options)."""
    from accelerate import Accelerator

    from ggt_ir.train.options import load_options
    from ggt_ir.train.steps import STEPS

    opt = load_options(str(ROOT / recipe), overrides + [f"train.mixed_precision='{mixed_precision}'"],
                       check_paths=False)
    acc = Accelerator(mixed_precision=mixed_precision, cpu=dev.type == "cpu")
    return STEPS.get(opt.model_type)(opt, acc, None), opt


def generative_row(name, recipe, overrides, folder, res, batch, a, dev, prompt="a photo") -> dict:
    mp = "no" if a.smoke else "bf16"
    reset_memory(dev)
    t0 = time.perf_counter()
    step, opt = recipe_step(recipe, [f"network_g.pretrained={folder}"] + overrides, dev, mp)
    t_build = time.perf_counter() - t0
    batch_d = {"lq": torch.rand(batch, 3, res, res, device=dev), "gt": torch.rand(batch, 3, res, res, device=dev),
               "prompt": [prompt] * batch}
    s_it = time_steps(lambda it: step.train_step(batch_d, it), a.steps, dev)
    row = {"row": name, "resolution": res, "batch": batch, "s_per_it": s_it, "peak_gib": peak_gib(dev),
           "planner_gib": planner_estimate(opt), "build_s": t_build, "trainable_M": step.num_trainable / 1e6}
    del step
    reset_memory(dev)
    return row


def onestep_rows(a, dev, work: Path) -> list[dict]:
    from ggt_ir.testing.pipelines import save_tiny_sd
    from ggt_ir.testing.real_shapes import save_sd21_base
    from ggt_ir.testing.weights import save_random_lpips

    lp = work / "lpips"
    save_random_lpips(lp)
    if a.smoke:
        folder, res, batches = save_tiny_sd(work / "sd"), 32, (1, 2)
    else:  # the real CLIP-H text encoder is small (23 layers, 0.7 GB): full depth
        folder, res, batches = save_sd21_base(work / "sd", text_layers=23, device=str(dev)), 512, (1, 4)
    over = [f"train.lpips_opt.weights_dir={lp}", "network_g.prompt_mode=fixed"]
    rows = []
    for b in batches:
        rows.append(generative_row(f"OneStepSD + VSD + LPIPS (SD-2.1-base{' tiny' if a.smoke else ''})",
                                   RECIPES["onestep"], over + [f"datasets.train.batch_size_per_gpu={b}",
                                                               f"datasets.train.gt_size={res}"],
                                   folder, res, b, a, dev))
    shutil.rmtree(work / "sd", ignore_errors=True)
    return rows


def quantized_kind(dev) -> str:
    import importlib.util

    return "nf4" if dev.type == "cuda" and importlib.util.find_spec("bitsandbytes") else "int8"


def editor_rows(family: str, a, dev, work: Path) -> list[dict]:
    from ggt_ir.testing.pipelines import save_tiny_flux_kontext, save_tiny_qwen_image_edit
    from ggt_ir.testing.real_shapes import save_flux_kontext, save_qwen_image_edit

    folder = work / family
    if a.smoke:
        (save_tiny_flux_kontext if family == "flux" else save_tiny_qwen_image_edit)(folder)
        res = 32
    elif family == "flux":
        save_flux_kontext(folder, num_layers=19, num_single_layers=38, text_layers=a.text_layers, device=str(dev))
        res = 1024
    else:
        save_qwen_image_edit(folder, num_layers=60, text_layers=a.text_layers, device=str(dev))
        res = 1024
    base = [f"datasets.train.gt_size={res}", "network_g.buckets=none", "network_g.max_sequence_length=512"]
    if a.smoke:
        base[-1] = "network_g.max_sequence_length=16"
    label = {"flux": "FLUX.1-Kontext LoRA", "qwen": "Qwen-Image-Edit LoRA"}[family]
    depth = "tiny" if a.smoke else ("19+38 blocks" if family == "flux" else "60 blocks") + \
        f", text encoders {a.text_layers} layers"
    q = quantized_kind(dev)
    prec = "fp32" if a.smoke else "bf16"
    runs = [(f"{label} {prec} ({depth})", RECIPES[family], [])]
    if family == "flux":
        runs.append((f"{label} int8 base ({depth})", RECIPES[family], ["network_g.quantize=int8"]))
    elif q == "nf4":
        runs.append((f"{label} NF4 base + NF4 text encoder, offloaded ({depth})", RECIPES["qwen_nf4"], []))
    else:
        runs.append((f"{label} int8 base ({depth}; NF4 needs CUDA + bitsandbytes)", RECIPES["qwen"],
                     ["network_g.quantize=int8", "network_g.text_encoders=offload"]))
    rows = []
    for name, recipe, over in runs:
        try:
            rows.append(generative_row(name, recipe, base + over, folder, res, 1, a, dev,
                                       prompt="remove the rain"))
        except Exception as e:
            rows.append({"row": name, "error": f"{type(e).__name__}: {e}"})
            traceback.print_exc()
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def restorer_rows(a, dev) -> list[dict]:
    """Ours vs the reference, same weights: bf16 train-step speed and memory, gradient parity (fp32 and bf16)."""
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "bench"))
    import model_speed as ms

    if a.smoke:  # small configs: the paper ones take minutes per step on a CPU
        ms.CONFIGS = {**ms.CONFIGS, "SwinIR": dict(ms.CONFIGS["SwinIR"], embed_dim=12, depths=[1], num_heads=[2]),
                      "Restormer": dict(ms.CONFIGS["Restormer"], dim=8, num_blocks=[1, 1, 1, 1],
                                        num_refinement_blocks=1)}
    rows = []
    for model in ("SwinIR", "Restormer"):
        size, batch = (32, 1) if a.smoke else ms.GPU_SIZES[model][:2]
        torch.manual_seed(0)
        ours, ref = ms.build(model, "ours", None, size), ms.build(model, "ref", None, size)
        ref.load_state_dict(ours.state_dict())
        x = torch.rand(batch, 3, size, size, device=dev)
        y = torch.rand(batch, 3, size, size, device=dev)
        parity = {}
        for dtype_name, bf16 in (("fp32", False), ("bf16", True)):
            grads = []
            for net in (ours, ref):
                net.to(dev).train().zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    out = net(x)
                F.l1_loss(out.float(), y).backward()
                grads.append(torch.cat([p.grad.flatten().float() for p in net.parameters() if p.grad is not None]))
            parity[dtype_name] = ((grads[0] - grads[1]).abs().max() / grads[1].abs().max().clamp_min(1e-12)).item()
        for net in (ours, ref):
            net.zero_grad(set_to_none=True)
        res = {}
        for impl, net in (("ours", ours), ("ref", ref)):
            runner = ms.Runner(net, dev, bf16=True)
            reset_memory(dev)
            s_it = time_steps(lambda it: runner.train_step(x, y), a.steps, dev)
            res[impl] = (s_it, peak_gib(dev))
            del runner
        rows.append({"row": f"{model} train bf16, ours vs reference", "resolution": size, "batch": batch,
                     "s_per_it": res["ours"][0], "ref_s_per_it": res["ref"][0], "speedup": res["ref"][0] / res["ours"][0],
                     "peak_gib": res["ours"][1], "ref_peak_gib": res["ref"][1],
                     "grad_rel_maxdiff_fp32": parity["fp32"], "grad_rel_maxdiff_bf16": parity["bf16"]})
        print(json.dumps(rows[-1]), flush=True)
        del ours, ref
        reset_memory(dev)
    return rows


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    lines = ["| row | res | batch | s/it | peak GiB (max_memory_allocated) | planner GiB | reference s/it | ref peak GiB "
             "| grad parity fp32 / bf16 (rel. max) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | | | FAILED: {r['error'][:120]} | | | | | |")
            continue
        par = (f"{r['grad_rel_maxdiff_fp32']:.1e} / {r['grad_rel_maxdiff_bf16']:.1e}"
               if "grad_rel_maxdiff_fp32" in r else "")
        lines.append(f"| {r['row']} | {r['resolution']} | {r['batch']} | {fmt(r['s_per_it'], '.3f')} | "
                     f"{fmt(r.get('peak_gib'))} | {fmt(r.get('planner_gib'))} | {fmt(r.get('ref_s_per_it'), '.3f')} | "
                     f"{fmt(r.get('ref_peak_gib'))} | {par} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script end to end")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row after one warm-up (3 GPU, 1 smoke)")
    p.add_argument("--text-layers", type=int, default=4, help="layers of the T5-XXL / Qwen2.5-VL text encoders")
    p.add_argument("--workdir", default=None, help="where the random-weight folders go (default: a temp folder; "
                                                   "needs ~45 GB free for Qwen-Image-Edit)")
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    a.steps = a.steps or (1 if a.smoke else 3)
    only = [s for s in a.only.split(",") if s]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        p.error(f"--only: unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    if not a.smoke and not torch.cuda.is_available():
        p.error("no CUDA device: the suite measures GPU memory; run with --smoke to check it on the CPU")
    dev = torch.device("cpu" if a.smoke else "cuda")
    device_name = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU ({platform.machine()}, smoke)"
    print(f"device: {device_name}, torch {torch.__version__}", flush=True)
    t_all = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(dir=a.workdir)
    work = Path(tmp.name)
    rows: list[dict] = []
    for section in only:
        t0 = time.perf_counter()
        try:
            if section == "onestep":
                rows += onestep_rows(a, dev, work)
            elif section in ("flux", "qwen"):
                rows += editor_rows(section, a, dev, work)
            else:
                rows += restorer_rows(a, dev)
        except Exception as e:  # one section's failure is reported, the others still run
            traceback.print_exc()
            rows.append({"row": section, "error": f"{type(e).__name__}: {e}"})
        print(f"[{section}] {time.perf_counter() - t0:.0f} s", flush=True)
    tmp.cleanup()
    text = table(rows)
    print(f"\n{device_name}, {time.perf_counter() - t_all:.0f} s in all\n\n{text}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": device_name, "torch": torch.__version__, "smoke": a.smoke,
                                            "rows": rows}, indent=2))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
