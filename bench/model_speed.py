"""Model-zoo speed and memory: ours vs an independent reference implementation, same weights, same run.

For each model (the paper configuration used in options/train/<model>/), measures

* the training step: forward + L1 loss + backward + AdamW step, on ``--train-batch`` crops of
  ``--train-size``;
* inference (eval, ``torch.inference_mode``) on one ``--infer-size`` image;

and prints it/s, peak memory and the ours/reference ratio as a Markdown table. Ours and the
reference are timed alternately (AB BA AB ...), so load from other processes hits both alike, and
the best run of each is kept (the least disturbed). Peak memory: on CUDA ``max_memory_allocated``;
on CPU the peak RSS growth of a child process that builds the model and runs the same step (one
child per measurement).

References: SwinIR -> basicsr 1.4.2, Restormer -> spandrel-extra-arches 0.2.0, NAFNet -> spandrel
0.4.2. No package implements PromptIR: give the official ``net/model.py`` with ``--promptir-ref``
(github.com/va1shn9v/PromptIR), otherwise PromptIR is timed alone.

    python bench/model_speed.py                        # CPU defaults: small sizes, a few minutes
    python bench/model_speed.py --device cuda --bf16              # recipe crops x 8, 1024² inference
    python bench/model_speed.py --gan --iters 3        # GAN step (RRDBNet + U-Net D + VGG) vs BasicSR's
                                                       # RealESRGANModel, batch 4 of 128² crops, same weights
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# paper configurations (the same as options/train/<model>/base.yml)
CONFIGS = {
    "SwinIR": dict(img_size=128, window_size=8, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, mlp_ratio=2,
                   upscale=1, upsampler="", resi_connection="1conv"),
    "Restormer": dict(dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4, heads=[1, 2, 4, 8],
                      ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias"),
    "NAFNet": dict(width=64, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]),
    "PromptIR": dict(decoder=True),
}
# (train crop, train batch, inference size). GPU: the recipes' crops, batch 8, 1024² inference.
# CPU: small, so the whole run takes minutes on 2 cores.
GPU_SIZES = {"SwinIR": (128, 8, 1024), "Restormer": (128, 8, 1024), "NAFNet": (256, 8, 1024), "PromptIR": (128, 8, 1024)}
CPU_SIZES = {"SwinIR": (32, 2, 64), "Restormer": (128, 1, 128), "NAFNet": (64, 2, 256), "PromptIR": (64, 1, 128)}


def build(model: str, impl: str, promptir_ref: str | None, train_size: int):
    cfg = dict(CONFIGS[model])
    if model == "SwinIR":
        cfg["img_size"] = train_size  # as in training: the stored shift mask matches the crop
    if impl == "ours":
        from ggt_ir.archs import ARCHS

        return ARCHS.get(model)(**cfg)
    if model == "SwinIR":
        from ggt_ir._compat import patch_basicsr_imports

        patch_basicsr_imports()
        from basicsr.archs.swinir_arch import SwinIR

        return SwinIR(**cfg)
    if model == "Restormer":
        from spandrel_extra_arches.architectures.Restormer.__arch.restormer_arch import Restormer

        return Restormer(**cfg)
    if model == "NAFNet":
        from spandrel.architectures.NAFNet.__arch.NAFNet_arch import NAFNet

        return NAFNet(**cfg)
    if model == "PromptIR" and promptir_ref:
        spec = importlib.util.spec_from_file_location("promptir_official", promptir_ref)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.PromptIR(**cfg)
    return None


def pad_for_reference(model: str, x: torch.Tensor) -> torch.Tensor:
    """The references (except NAFNet) need sizes padded outside the model, as their test scripts do."""
    m = {"SwinIR": 8, "Restormer": 8, "PromptIR": 8}.get(model)
    if not m:
        return x
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="reflect") if (h % m or w % m) else x


class Runner:
    def __init__(self, net, device, bf16: bool):
        self.net = net.to(device)
        self.opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
        self.device, self.bf16 = device, bf16

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self, x, y):
        self.net.train()
        with self._autocast():
            out = self.net(x)
        loss = F.l1_loss(out.float()[..., : y.shape[-2], : y.shape[-1]], y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    @torch.inference_mode()
    def infer(self, x):
        self.net.eval()
        with self._autocast():
            return self.net(x)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def inputs(args, device, mode):
    g = torch.Generator().manual_seed(0)
    if mode == "train":
        s, b = args.train_size, args.train_batch
    else:
        s, b = args.infer_size, 1
    x = torch.rand(b, 3, s, s, generator=g).to(device)
    return x, (x * 0.9).contiguous()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    """One measurement in a fresh process: peak RSS growth (MiB) over the post-import baseline."""
    device = torch.device("cpu")
    try:  # forget the peak of importing torch (Linux: 5 resets VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = rss_mb()
    torch.manual_seed(0)
    net = build(args.child_model, args.child_impl, args.promptir_ref, args.train_size)
    r = Runner(net, device, args.bf16)
    x, y = inputs(args, device, args.child_mode)
    xr = x if args.child_impl == "ours" else pad_for_reference(args.child_model, x)
    for _ in range(2):
        r.train_step(xr, y) if args.child_mode == "train" else r.infer(xr)
    print(json.dumps({"peak_mb": peak_rss_mb() - base}))


def cpu_peak_mb(args, model, impl, mode) -> float | None:
    cmd = [sys.executable, __file__, "--child-model", model, "--child-impl", impl, "--child-mode", mode,
           "--train-size", str(args.train_size), "--train-batch", str(args.train_batch),
           "--infer-size", str(args.infer_size), "--threads", str(args.threads)]
    if args.promptir_ref:
        cmd += ["--promptir-ref", args.promptir_ref]
    if args.bf16:
        cmd += ["--bf16"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def measure(args, model: str, device) -> list[dict]:
    args = argparse.Namespace(**vars(args))
    gpu = device.type == "cuda"
    ts, tb, inf = (GPU_SIZES if gpu else CPU_SIZES)[model]
    args.train_size, args.train_batch, args.infer_size = args.train_size or ts, args.train_batch or tb, args.infer_size or inf
    torch.manual_seed(0)
    ours = build(model, "ours", None, args.train_size)
    ref = build(model, "ref", args.promptir_ref, args.train_size)
    if ref is not None:  # same weights in both
        ref.load_state_dict(ours.state_dict())
    impls = {"ours": Runner(ours, device, args.bf16)}
    if ref is not None:
        impls["ref"] = Runner(ref, device, args.bf16)
    rows = []
    for mode in ("train", "infer"):
        x, y = inputs(args, device, mode)
        xs = {"ours": x, "ref": pad_for_reference(model, x)}
        call = {k: (lambda r=r, xi=xs[k]: r.train_step(xi, y)) if mode == "train" else
                   (lambda r=r, xi=xs[k]: r.infer(xi)) for k, r in impls.items()}
        maxdiff = None
        if mode == "infer" and "ref" in impls:  # also a correctness check of the benchmark itself
            impls["ref"].net.load_state_dict(impls["ours"].net.state_dict())  # training steps made them drift
            d = (impls["ours"].infer(x).float() - impls["ref"].infer(xs["ref"]).float()[..., : x.shape[-2], : x.shape[-1]])
            maxdiff = d.abs().max().item()
        for fn in call.values():
            for _ in range(args.warmup):
                fn()
        times: dict[str, list[float]] = {k: [] for k in call}
        for i in range(args.iters):
            for k in (list(call) if i % 2 == 0 else list(call)[::-1]):
                times[k].append(timed(call[k], device))
        peak = {}
        for k, fn in call.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                fn()
                peak[k] = torch.cuda.max_memory_allocated() / 2**20
            elif args.memory:
                peak[k] = cpu_peak_mb(args, model, k, mode)
            else:
                peak[k] = None
        med = {k: min(v) for k, v in times.items()}  # best run: the least disturbed by other processes
        row = {"model": model, "mode": mode, "size": f"{args.train_batch}x{args.train_size}" if mode == "train"
               else f"1x{args.infer_size}", "ours_it_s": 1 / med["ours"], "ours_peak_mb": peak["ours"],
               "ref_it_s": 1 / med["ref"] if "ref" in med else None, "ref_peak_mb": peak.get("ref"),
               "maxdiff": maxdiff}
        row["speedup"] = row["ours_it_s"] / row["ref_it_s"] if row["ref_it_s"] else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def mdta_variants(device, iters: int) -> str:
    """Restormer's channel attention, forward + backward, three ways, at its level-1 shape
    (2 x 48 channels x 128^2): the reference (normalise q and k, matmul), ours (norms on the
    c x c logits) and SDPA on normalised q, k (temperature folded into q)."""
    from ggt_ir.archs.restormer_arch import channel_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, 48, 128 * 128, generator=g).to(device).requires_grad_() for _ in range(3))
    t = torch.ones(1, 1, 1, device=device, requires_grad=True)

    def ref():
        a = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * t
        return a.softmax(-1) @ v

    def sdpa():
        return F.scaled_dot_product_attention(F.normalize(q, dim=-1) * t, F.normalize(k, dim=-1), v, scale=1.0)

    fns = {"reference": ref, "ours": lambda: channel_attention(q, k, v, t), "sdpa": sdpa}
    times = {n: [] for n in fns}
    for i in range(iters + 1):
        for n, fn in fns.items():
            dt = timed(lambda: fn().sum().backward(), device)
            if i:
                times[n].append(dt)
    return "MDTA fwd+bwd ms (median): " + ", ".join(f"{n} {1e3 * statistics.median(v):.1f}" for n, v in times.items())


def hardware(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def table(rows, args, device) -> str:
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    lines = [f"Hardware: {hardware(device)}; torch {torch.__version__}; "
             f"{'bf16 autocast' if args.bf16 else 'fp32'}; train step = forward + L1 + backward + AdamW; "
             f"best of {args.iters} alternating runs (ours, ref, ref, ours, ...).", "",
             "| model | step | batch x size² | ours it/s | ref it/s | ours/ref | ours peak MiB | ref peak MiB | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['size']} | {f(r['ours_it_s'], '.3f')} | {f(r['ref_it_s'], '.3f')} | "
                     f"{f(r['speedup'], '.2f')}x | {f(r['ours_peak_mb'], '.0f')} | {f(r['ref_peak_mb'], '.0f')} | "
                     f"{f(r['maxdiff'], '.1e')} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ GAN step
GAN_LAYERS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


def _random_vgg19(path: Path) -> Path:
    """torchvision's vgg19 layout with random weights (random weights: the step's cost, not its values)."""
    import torchvision.models as tvm

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(tvm.vgg19(weights=None).state_dict(), path)
    return path


def gan_steps(args, device, tmp: Path):
    """{ours, ours_cl (train.channels_last), ref (BasicSR)} callables doing one GAN training iteration each: RRDBNet (23 blocks, scale 1) + U-Net
    discriminator (spectral norm) + L1 + VGG19 perceptual + vanilla GAN, Real-ESRGAN's settings, on the same
    random weights and the same batch (``--gan-batch`` crops of ``--gan-size``²)."""
    import logging

    import yaml
    from accelerate import Accelerator

    from ggt_ir._compat import patch_basicsr_imports

    patch_basicsr_imports()
    import basicsr.archs.vgg_arch as vgg_arch
    from basicsr.models.realesrgan_model import RealESRGANModel

    vgg = _random_vgg19(tmp / "checkpoints" / "vgg19-dcbb9e9d.pth")
    vgg_arch.VGG_PRETRAIN_PATH = str(vgg)  # basicsr reads its VGG from there (else it downloads)
    adam = {"type": "Adam", "lr": 1e-4, "weight_decay": 0, "betas": [0.9, 0.99]}
    train = {"ema_decay": 0.999, "optim_g": dict(adam), "optim_d": dict(adam), "total_iter": 400000,
             "scheduler": {"type": "MultiStepLR", "milestones": [400000], "gamma": 0.5},
             "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
             "gan_opt": {"type": "GANLoss", "gan_type": "vanilla", "real_label_val": 1.0, "fake_label_val": 0.0,
                         "loss_weight": 0.1},
             "net_d_iters": 1, "net_d_init_iters": 0}
    percep = {"type": "PerceptualLoss", "layer_weights": GAN_LAYERS, "vgg_type": "vgg19", "use_input_norm": True,
              "perceptual_weight": 1.0, "style_weight": 0.0, "range_norm": False, "criterion": "l1"}
    net_d = {"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 64, "skip_connection": True}
    ref_opt = {"is_train": True, "dist": False, "num_gpu": 0 if device.type == "cpu" else 1, "scale": 1,
               "model_type": "RealESRGANModel", "high_order_degradation": False, "queue_size": 180,
               "l1_gt_usm": True, "percep_gt_usm": True, "gan_gt_usm": False,
               "network_g": {"type": "RRDBNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 23,
                             "num_grow_ch": 32, "scale": 1},
               "network_d": dict(net_d),
               "path": {"pretrain_network_g": None, "pretrain_network_d": None, "strict_load_g": True,
                        "resume_state": None},
               "train": {**train, "warmup_iter": -1, "perceptual_opt": dict(percep)}}
    cuda = torch.nn.Module.cuda
    if device.type == "cpu":  # RealESRGANModel puts its DiffJPEG / USMSharp on .cuda() unconditionally
        torch.nn.Module.cuda = lambda self, *a, **k: self
    try:
        torch.manual_seed(0)
        ref = RealESRGANModel(ref_opt)
    finally:
        torch.nn.Module.cuda = cuda
    g_file, d_file = tmp / "net_g.pth", tmp / "net_d.pth"
    torch.save({"params": ref.net_g.state_dict()}, g_file)  # basicsr's new-arch keys: spandrel converts them
    torch.save({"params": ref.net_d.state_dict()}, d_file)
    ours_opt = {"name": "bench_gan", "model_type": "gan", "scale": 1,
                "datasets": {"train": {"type": "PairedFolder", "dataroot": str(tmp / "unused")}},
                "network_g": {"type": "Spandrel", "arch": "RRDBNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 64,
                              "num_block": 23, "scale": 1},
                "network_d": dict(net_d),
                "path": {"pretrain_network_g": str(g_file), "pretrain_network_d": str(d_file),
                         "experiments_root": str(tmp / "exp")},
                "train": {**train, "losses": [{**percep, "weights_dir": str(tmp)}], "l1_gt_usm": True,
                          "percep_gt_usm": True, "mixed_precision": "bf16" if args.bf16 else "no"},
                "logger": {"trackers": []}}
    from ggt_ir.train.options import load_options
    from ggt_ir.train.steps.gan import GANStep

    acc = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if args.bf16 else "no")
    steps = {}
    for name, channels_last in (("ours", False), ("ours_cl", True)):  # the default, and train.channels_last
        ours_opt["train"]["channels_last"] = channels_last
        (tmp / f"{name}.yml").write_text(yaml.safe_dump(ours_opt))
        steps[name] = GANStep(load_options(tmp / f"{name}.yml", check_paths=False), acc, logging.getLogger("bench"))
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(args.gan_batch, 3, args.gan_size, args.gan_size, generator=g)
    lq = (gt + 0.05 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    batch = {"lq": lq.to(device), "gt": gt.to(device)}
    it = {"ours": 0, "ours_cl": 0, "ref": 0}

    def ours(name):
        def run():
            it[name] += 1
            return {k: float(v) for k, v in steps[name].train_step(batch, it[name]).items()}
        return run

    def run_ref():
        it["ref"] += 1
        ref.feed_data({"lq": batch["lq"], "gt": batch["gt"]})
        ref.optimize_parameters(it["ref"])
        return {k: float(v) for k, v in ref.log_dict.items()}

    return {"ours": ours("ours"), "ours_cl": ours("ours_cl"), "ref": run_ref}


def measure_gan(args, device) -> list[dict]:
    """Ours (default, and with ``train.channels_last``) vs BasicSR's RealESRGANModel, rotated (ABC BCA CAB ...),
    best run of each kept."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = gan_steps(args, device, Path(tmp))
        for i in range(args.warmup):
            first = {name: fn() for name, fn in runs.items()}
            if i == 0:  # same weights, same batch: the first iteration's losses agree
                for name in ("ours", "ref"):
                    print(f"first iteration losses, {name}:", {k: round(v, 5) for k, v in first[name].items()},
                          flush=True)
        times = {name: [] for name in runs}
        names = list(runs)
        for i in range(args.iters):
            for name in names[i % 3:] + names[:i % 3]:
                times[name].append(timed(runs[name], device))
    best = {k: min(v) for k, v in times.items()}
    rows = []
    for name, label in (("ours", "fp32 (default)"), ("ours_cl", "train.channels_last: true")):
        rows.append({"model": f"GAN step (RRDBNet + UNetDiscriminatorSN + VGG19 + L1), ours {label}",
                     "mode": "train", "size": f"{args.gan_batch}x{args.gan_size}²", "ours_s": best[name],
                     "ref_s": best["ref"], "median_ours_s": statistics.median(times[name]),
                     "median_ref_s": statistics.median(times["ref"]), "ratio": best["ref"] / best[name],
                     "median_ratio": statistics.median(times["ref"]) / statistics.median(times[name]),
                     "iters": args.iters})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def gan_table(rows, args, device) -> str:
    prec = "bf16 autocast" if args.bf16 else "fp32"
    lines = [f"{hardware(device)}, {prec}, best of {args.iters} timed iterations after {args.warmup} warm-up", "",
             "| step | batch | ours s/it (median) | BasicSR RealESRGANModel s/it (median) | ours / BasicSR speed "
             "(median) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['ours_s']:.3f} ({r['median_ours_s']:.3f}) | "
                     f"{r['ref_s']:.3f} ({r['median_ref_s']:.3f}) | {r['ratio']:.2f}x ({r['median_ratio']:.2f}x) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="SwinIR,Restormer,NAFNet,PromptIR")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-size", type=int, default=None, help="crop size (default: GPU_SIZES / CPU_SIZES)")
    p.add_argument("--train-batch", type=int, default=None, help="default: GPU_SIZES / CPU_SIZES")
    p.add_argument("--infer-size", type=int, default=None, help="default: GPU_SIZES / CPU_SIZES")
    p.add_argument("--iters", type=int, default=None, help="timed runs per model and mode (default 10 GPU, 6 CPU)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="CPU: skip the memory children")
    p.add_argument("--promptir-ref", default=None, help="path to the official PromptIR net/model.py")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--mdta", action="store_true", help="only time Restormer's channel attention three ways")
    p.add_argument("--gan", action="store_true", help="only the GAN training step vs BasicSR's RealESRGANModel")
    p.add_argument("--gan-batch", type=int, default=4)
    p.add_argument("--gan-size", type=int, default=128)
    p.add_argument("--child-model", help=argparse.SUPPRESS)
    p.add_argument("--child-impl", help=argparse.SUPPRESS)
    p.add_argument("--child-mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    args.iters = args.iters or (10 if gpu else 6)
    if args.child_model:
        child(args)
        return 0
    device = torch.device(args.device)
    if args.mdta:
        print(mdta_variants(device, max(args.iters, 5)))
        return 0
    if args.gan:
        rows = measure_gan(args, device)
        print()
        print(gan_table(rows, args, device))
        if args.json:
            Path(args.json).write_text(json.dumps({"hardware": hardware(device), "rows": rows}, indent=1))
        return 0
    rows = []
    for model in args.models.split(","):
        rows += measure(args, model.strip(), device)
    print()
    print(table(rows, args, device))
    if args.json:
        Path(args.json).write_text(json.dumps({"hardware": hardware(device), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
