"""``ggt-ir plan -opt X.yml [--gpu-mem 80] [--processes N] [--fsdp | --zero2 | --zero3]``: the peak GPU memory of a
generative training run, per component, before any weight is loaded -- and which options would make it fit.

How the figures are made (no weights, no GPU):

* the components are built from their real configurations on the ``meta`` device (the ``config.json`` files of
  ``network_g.pretrained`` when that folder is here, else the published ones written inline in
  ``ggt_ir/generative/model_configs.py``), with the LoRA adapters the run would add (same target rules);
* **weights, trainable tensors, gradients, optimizer state** are counted from those modules: frozen weights in the
  frozen-weight dtype (or their quantized size), trained tensors fp32 with fp32 gradients and the optimizer's
  moments (AdamW 8 bytes per parameter, AdamW8bit 2);
* **activations** come from running one training step of the family on ``meta`` tensors at the configured
  resolution and batch, with the run's gradient checkpointing, under a dispatch mode that tracks the bytes of
  every live tensor (an allocation is counted until its last view dies), so saved activations, recomputation and
  backward transients are in the peak. Attention runs as the fused kernels do on a GPU (no attention matrix);
  weights are bf16 as under autocast;
* the layout divides what it shards: FSDP / ZeRO-3 the trained module's weights, gradients and optimizer state
  (plus one gathered block in flight), ZeRO-2 gradients and optimizer state; frozen helpers stay replicated.

These are estimates of ``torch.cuda.max_memory_allocated`` (allocator fragmentation and the CUDA context are not
in them); ``bench/gpu_suite.py`` prints the two side by side wherever a GPU runs it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import weakref
from pathlib import Path

GiB = 2**30
LAYOUTS = ("single", "ddp", "fsdp", "zero2", "zero3")


# ---------------------------------------------------------------------------------------------- the meta simulator
class LiveBytes:
    """A dispatch mode that tracks the bytes of live meta tensors (storages, counted once per storage)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        sim = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                sim._track(out)
                return out

        self.mode = Mode()
        self.refs, self.size, self.current, self.peak = {}, {}, 0, 0

    def _free(self, key):
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.size.pop(key)
            del self.refs[key]

    def _track(self, out):
        import torch
        from torch.utils._pytree import tree_flatten

        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.refs:
                    self.refs[key] = 0
                    self.size[key] = storage.nbytes()
                    self.current += self.size[key]
                    self.peak = max(self.peak, self.current)
                self.refs[key] += 1
                weakref.finalize(t, self._free, key)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


@contextlib.contextmanager
def fused_attention():
    """SDPA as the fused GPU kernels run it (O(N) memory), not the math fallback the meta device would take."""
    import torch
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if key.shape[1] != query.shape[1]:  # grouped-query attention: repeat the key/value heads
            rep = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale)[0]

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


# ---------------------------------------------------------------------------------------------- components
@dataclasses.dataclass
class Part:
    """One line of the table: bytes per GPU before the layout divides anything."""

    name: str
    kind: str  # frozen | trainable | grads | optimizer | text | helper | activations | transient
    bytes: float
    shardable: bool = False  # divided by the processes under FSDP / ZeRO-3 (frozen, trainable) or ZeRO-2+ (grads, optim)
    note: str = ""


def _dtype_bytes(dtype) -> int:
    import torch

    return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 1


QUANT_BYTES = {"nf4": 0.5 + 4 / 64, "int8": 1.0 + 0.002, "fp8": 1.0 + 0.002}  # per Linear-weight element, with scales


def weight_bytes(model, dtype, quantize: str = "none") -> tuple[float, float, int, int]:
    """(frozen bytes, trained fp32 bytes, frozen params, trained params) of a meta module with LoRA marked."""
    import torch
    from torch import nn

    quantized = set()
    if quantize != "none":
        for m in model.modules():
            if isinstance(m, nn.Linear) and not hasattr(m, "lora_A"):
                quantized.add(id(m.weight))
    frozen = trained = 0.0
    nf = nt = 0
    for p in model.parameters():
        if p.requires_grad:
            trained += p.numel() * 4
            nt += p.numel()
        else:
            per = QUANT_BYTES[quantize] if id(p) in quantized else _dtype_bytes(dtype if p.is_floating_point() else torch.int8)
            frozen += p.numel() * per
            nf += p.numel()
    return frozen, trained, nf, nt


def largest_unit_bytes(model, dtype, names: list[str]) -> float:
    """Bytes of the largest wrapped block (FSDP / ZeRO-3 gather one block at a time)."""
    best = 0
    for m in model.modules():
        if type(m).__name__ in names:
            best = max(best, sum(p.numel() for p in m.parameters()) * _dtype_bytes(dtype))
    return best


# ---------------------------------------------------------------------------------------------- configs
def _component(model_cfg: dict, folder: Path | None, comp: str, **overrides):
    """(library, class, config) from the local folder when it has the component, else the inline published one."""
    from ggt_ir.generative.model_configs import config_of

    library, cls, cfg = config_of(model_cfg, comp, **overrides)
    if folder is not None and (folder / comp / "config.json").is_file():
        cfg = {k: v for k, v in json.loads((folder / comp / "config.json").read_text()).items()
               if not k.startswith("_") and k not in ("architectures", "transformers_version", "dtype", "torch_dtype")}
        cfg.update(overrides)
    return library, cls, cfg


def _source(network_g: dict, key: str) -> tuple[Path | None, str]:
    from ggt_ir.generative.model_configs import PUBLISHED

    p = Path(str(network_g.get("pretrained", ""))).expanduser()
    if p.is_dir():
        return p, f"config.json files of {p}"
    return None, f"published configs of {PUBLISHED[key]} (ggt_ir/generative/model_configs.py; {p} is not here)"


_MEMO: dict = {}


def _memo(key, compute):
    """One computation per key in this process: the suggestions vary one setting at a time, and most settings
    (quantization, placement, layout) change neither the meta models nor their simulated activations."""
    if key not in _MEMO:
        _MEMO[key] = compute()
    return _MEMO[key]


# ---------------------------------------------------------------------------------------------- families
def _lora_meta(model, targets, rank, alpha=None, regions=None):
    import warnings

    from peft import LoraConfig

    from ggt_ir.generative import lora as L

    names = L.find_targets(model, targets) if regions is None else regions
    groups = names if isinstance(names, dict) else {"default": names}
    for name, group in groups.items():
        if group:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore")
                model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=group), adapter_name=name)
    return sum(len(g) for g in groups.values())


def _mark(model, full_prefixes=()):
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in "." + n or any(n.startswith(f) for f in full_prefixes))


def plan_onestep_sd(opt) -> dict:
    import torch

    from ggt_ir.generative import lora as L
    from ggt_ir.generative.model_configs import SD21_BASE, build
    from ggt_ir.generative.onestep_sd import resolve_dtype

    g, t = opt.network_g, opt.train
    folder, source = _source(g, "OneStepSD")
    dtype = resolve_dtype(g.get("weight_dtype", "auto"), t.mixed_precision)
    ds = opt.datasets["train"]
    res, batch = int(ds.gt_size or 512), int(ds.batch_size_per_gpu)
    gc = bool(g.get("gradient_checkpointing", False))
    unet = build(*_component(SD21_BASE, folder, "unet"), dtype=torch.bfloat16)
    vae = build(*_component(SD21_BASE, folder, "vae"), dtype=torch.bfloat16)
    text = build(*_component(SD21_BASE, folder, "text_encoder"), dtype=dtype)
    rank_u, rank_v = g.get("lora_rank_unet", 4), g.get("lora_rank_vae", 4)
    n_unet = n_vae = 0
    if rank_u:
        names = L.find_targets(unet, g.get("unet_lora_targets") or L.UNET_TARGETS)
        n_unet = _lora_meta(unet, None, rank_u, g.get("lora_alpha_unet"),
                            regions=L.unet_regions(names, g.get("unet_lora_regions", True)))
    if rank_v:
        names = L.find_targets(vae, g.get("vae_lora_targets") or L.VAE_ENCODER_TARGETS, ("encoder.", "quant_conv"))
        n_vae = _lora_meta(vae, None, rank_v, g.get("lora_alpha_vae"), regions={"default_encoder": names})
    full = ("conv_in.",) if g.get("train_conv_in", True) else ()
    _mark(unet, full)
    _mark(vae)
    parts = []
    fu, tu, nfu, ntu = weight_bytes(unet, dtype)
    fv, tv, nfv, ntv = weight_bytes(vae, dtype)
    parts += [Part("UNet (frozen)", "frozen", fu, True, f"{nfu / 1e6:.1f} M params"),
              Part("VAE (frozen)", "frozen", fv, True, f"{nfv / 1e6:.1f} M"),
              Part("LoRA + conv_in (generator)", "trainable", tu + tv, True,
                   f"{(ntu + ntv) / 1e6:.2f} M fp32; {n_unet} UNet + {n_vae} VAE layers")]
    trained = ntu + ntv
    reg = None
    if t.vsd_opt is not None:
        reg = build(*_component(SD21_BASE, folder, "unet"), dtype=torch.bfloat16)
        n_reg = _lora_meta(reg, t.vsd_opt.lora_targets or L.UNET_TARGETS, t.vsd_opt.lora_rank, t.vsd_opt.lora_alpha)
        _mark(reg)
        fr, tr, nfr, ntr = weight_bytes(reg, dtype)
        parts += [Part("VSD UNet (frozen real score)", "frozen", fr, False, f"{nfr / 1e6:.1f} M"),
                  Part("VSD fake-score LoRA", "trainable", tr, False, f"{ntr / 1e6:.2f} M fp32; {n_reg} layers")]
        trained += ntr
    te_bytes = sum(p.numel() for p in text.parameters()) * _dtype_bytes(dtype)
    parts.append(Part("text encoder (CLIP)", "text", te_bytes, False, f"placement {g.get('text_encoders', 'gpu')}"))
    if t.lpips_opt is not None:
        from torchvision.models import vgg16

        with torch.device("meta"):
            vgg = vgg16(weights=None).features[:30]
        parts.append(Part("LPIPS VGG16 (fp32)", "helper", sum(p.numel() for p in vgg.parameters()) * 4))
    else:
        vgg = None
    parts += _grads_and_optimizer(trained, t.optim_g.type, shard=reg is None)

    def step():
        sim_unet = unet
        if gc:
            for m in (unet, vae) + ((reg,) if reg is not None else ()):
                m.enable_gradient_checkpointing()
        with torch.device("meta"):
            lq = torch.rand(batch, 3, res, res, dtype=torch.bfloat16)
            gt = torch.rand(batch, 3, res, res)
            emb = torch.rand(batch, 77, unet.config.cross_attention_dim, dtype=torch.bfloat16)
        with LiveBytes() as sim, fused_attention():
            z = vae.encode(lq * 2 - 1).latent_dist.sample().float() * 0.18215
            eps = sim_unet(z.bfloat16(), torch.full((batch,), 999, device="meta"), encoder_hidden_states=emb).sample
            x0 = (z - 0.9977 * eps.float()) / 0.0683
            out = (vae.decode((x0 / 0.18215).bfloat16()).sample.float().clamp(-1, 1) + 1) / 2
            loss = ((out * 2 - 1) - (gt * 2 - 1)).pow(2).mean()
            if vgg is not None:
                fa, fb = vgg(out), vgg(gt)
                loss = loss + (fa - fb).pow(2).mean()
            if reg is not None:
                tt = torch.randint(20, 980, (batch,), device="meta")
                with torch.no_grad():
                    noisy = (0.5 * x0 + 0.5 * torch.randn_like(x0)).bfloat16()
                    reg(torch.cat([noisy, noisy]), torch.cat([tt, tt]), encoder_hidden_states=torch.cat([emb, emb]))
                    grad = reg(noisy, tt, encoder_hidden_states=emb).sample.float()
                loss = loss + (x0 - (x0 - grad).detach()).pow(2).mean()
            loss.backward()
            del loss, out, x0, eps, z
            if reg is not None:
                zz = torch.randn(batch, 4, res // 8, res // 8, device="meta", dtype=torch.bfloat16)
                reg(zz, tt, encoder_hidden_states=emb).sample.float().pow(2).mean().backward()
        return sim.peak

    peak = step()
    parts.append(Part(f"activations, {res}x{res} batch {batch}{', grad ckpt' if gc else ''}", "activations", peak,
                      False, "generator + VSD + fake-score steps, meta simulation" if reg is not None else "meta simulation"))
    units = list(getattr(unet, "_no_split_modules", None) or [])
    return {"family": "OneStepSD", "source": source, "parts": parts, "units": units,
            "unit_bytes": largest_unit_bytes(unet, dtype, units), "two_models": reg is not None,
            "settings": {"resolution": res, "batch": batch, "gradient_checkpointing": gc,
                         "text_encoders": g.get("text_encoders", "gpu"), "weight dtype": str(dtype).replace("torch.", ""),
                         "optimizer": t.optim_g.type}}


def plan_editor(opt) -> dict:
    import torch

    from ggt_ir.generative import lora as L
    from ggt_ir.generative.editors import FAMILIES
    from ggt_ir.generative.model_configs import BY_NETWORK, build
    from ggt_ir.generative.onestep_sd import resolve_dtype

    g, t = opt.network_g, opt.train
    family = g.get("family", "flux_kontext")
    cfgs = BY_NETWORK[family]
    folder, source = _source(g, family)
    dtype = resolve_dtype(g.get("weight_dtype", "auto"), t.mixed_precision)
    quantize = g.get("quantize", "none")
    ds = opt.datasets["train"]
    res, batch = int(ds.gt_size or 1024), int(ds.batch_size_per_gpu)
    gc = bool(g.get("gradient_checkpointing", False))
    fam = FAMILIES.get(family)
    lora = (g.get("lora_rank", 16), tuple(g.get("lora_targets") or fam.lora_targets), g.get("lora_alpha"))
    components = ["transformer", "vae", *fam.text_encoder_names]

    def models():
        transformer = build(*_component(cfgs, folder, "transformer"), dtype=torch.bfloat16)
        n = _lora_meta(transformer, list(lora[1]), lora[0], lora[2]) if lora[0] else 0
        _mark(transformer)
        vae = build(*_component(cfgs, folder, "vae"), dtype=torch.bfloat16)
        encoders = [build(*_component(cfgs, folder, name)).requires_grad_(False) for name in fam.text_encoder_names]
        return transformer, n, vae, encoders

    model_key = ("editor", family, lora, json.dumps([_component(cfgs, folder, c) for c in components], sort_keys=True,
                                                     default=str))
    transformer, n_lora, vae, encoders = _memo(model_key, models)
    ft, tt, nft, ntt = weight_bytes(transformer, dtype, quantize)
    parts = [Part("transformer (frozen)", "frozen", ft, True,
                  f"{nft / 1e9:.2f} B params, {quantize if quantize != 'none' else str(dtype).replace('torch.', '')}"),
             Part("LoRA", "trainable", tt, True, f"{ntt / 1e6:.1f} M fp32; {n_lora} layers")]
    parts.append(Part("VAE", "helper", sum(p.numel() for p in vae.parameters()) * _dtype_bytes(dtype)))
    text_bytes, text_tokens, text_dim = 0.0, 0, transformer.config.joint_attention_dim
    placement = g.get("text_encoders", "gpu")
    qt = quantize if g.get("quantize_text_encoders", False) else "none"
    for enc in encoders:
        text_bytes += weight_bytes(enc, dtype, qt)[0]
    if family == "flux_kontext":
        text_tokens = int(g.get("max_sequence_length", 512))
        image_text_tokens = 0
    else:  # the VL encoder sees the image at the model size: (H/28)(W/28) tokens + the template and the instruction
        image_text_tokens = (res // 28) * (res // 28)
        text_tokens = image_text_tokens + 100 - fam.DROP
    parts.append(Part("text encoder(s)", "text", text_bytes, False,
                      f"placement {placement}" + (f", {qt}" if qt != "none" else "")))
    parts += _grads_and_optimizer(ntt, t.optim_g.type, shard=True)

    h = w = res // 8  # VAE factor 8 for both families
    n_img = (h // 2) * (w // 2)

    def simulate():  # -> (VAE encoding peak, training-step activations peak)
        if gc:
            transformer.enable_gradient_checkpointing()
        else:
            transformer.disable_gradient_checkpointing()
        for prm in transformer.parameters():  # a memoised model: no gradients left from its last run
            prm.grad = None
        with torch.device("meta"):
            hidden = torch.randn(batch, 2 * n_img, transformer.config.in_channels, dtype=torch.bfloat16)
            text = torch.randn(batch, text_tokens, text_dim, dtype=torch.bfloat16)
            ts = torch.full((batch,), 0.5, dtype=torch.bfloat16)
            img = torch.rand(batch, 3, res, res, dtype=torch.bfloat16)
        with LiveBytes() as vae_sim, torch.no_grad(), fused_attention():  # HQ and LQ latents (no grad)
            x = img.unsqueeze(2) if family == "qwen_image_edit" else img
            vae.encode(x).latent_dist.mode()
        with LiveBytes() as sim, fused_attention():
            if family == "flux_kontext":
                ids = torch.zeros(2 * n_img, 3, device="meta", dtype=torch.bfloat16)
                out = transformer(hidden_states=hidden, timestep=ts, guidance=torch.ones(batch, device="meta"),
                                  pooled_projections=torch.randn(batch, transformer.config.pooled_projection_dim,
                                                                 device="meta", dtype=torch.bfloat16),
                                  encoder_hidden_states=text, txt_ids=torch.zeros(text_tokens, 3, device="meta",
                                                                                  dtype=torch.bfloat16),
                                  img_ids=ids, return_dict=False)[0]
            else:
                out = transformer(hidden_states=hidden, timestep=ts, encoder_hidden_states=text,
                                  encoder_hidden_states_mask=None, img_shapes=[[(1, h // 2, w // 2)] * 2] * batch,
                                  return_dict=False)[0]
            out[:, :n_img].float().pow(2).mean().backward()
        return vae_sim.peak, sim.peak

    vae_peak, act_peak = _memo((model_key, res, batch, gc, text_tokens), simulate)
    parts.append(Part(f"activations, {res}x{res} batch {batch}{', grad ckpt' if gc else ''}", "activations", act_peak,
                      False, f"{2 * n_img} image + {text_tokens} text tokens, meta simulation"))
    # encoding the instruction (and, for Qwen, the image): the encoders' working set, estimated as a few of their
    # largest activations (prompt embeddings are cached for FLUX, so this is once; Qwen runs it every step)
    inter = 18944 if family == "qwen_image_edit" else 10240
    text_transient = 6 * batch * max(text_tokens, image_text_tokens * 4) * inter * _dtype_bytes(dtype)
    parts.append(Part("text encoding working set", "transient", text_transient, False,
                      "estimate; while the encoders run (not during the transformer step)"))
    parts.append(Part("VAE encoding working set", "transient", vae_peak, False,
                      "meta simulation, no grad; before the transformer step"))
    units = list(getattr(transformer, "_no_split_modules", None) or [])
    prompt_mode = g.get("prompt_mode", "fixed")
    # FLUX's instruction is encoded before the transformer is placed (EditorLoRA.precompute_instructions): with
    # offloaded encoders and a fixed instruction they never share the GPU with it; per-sample instructions
    # (prompt_mode batch) may miss the cache mid-run, next to the transformer
    text_alone = not fam.text_sees_image and placement == "offload" and prompt_mode == "fixed"
    return {"family": f"EditorLoRA ({family})", "source": source, "parts": parts, "units": units,
            "text_phase_alone": text_alone,
            "unit_bytes": largest_unit_bytes(transformer, dtype, units) * (QUANT_BYTES[quantize] / _dtype_bytes(dtype)
                                                                           if quantize != "none" else 1),
            "two_models": False,
            "settings": {"resolution": res, "batch": batch, "gradient_checkpointing": gc, "text_encoders": placement,
                         "prompt_mode": prompt_mode, "quantize": quantize, "weight dtype": str(dtype).replace("torch.", ""),
                         "optimizer": t.optim_g.type}}


def _grads_and_optimizer(trained: int, optim: str, shard: bool) -> list[Part]:
    per = 2 if optim == "AdamW8bit" else 8
    return [Part("gradients (fp32)", "grads", trained * 4, shard),
            Part(f"optimizer state ({optim})", "optimizer", trained * per, shard)]


# ---------------------------------------------------------------------------------------------- layouts
def per_gpu(plan: dict, layout: str = "single", processes: int = 1) -> dict:
    """{part name: bytes per GPU} and the peak for a process layout."""
    n = max(1, processes) if layout in ("fsdp", "zero2", "zero3") else 1
    rows = {}
    for p in plan["parts"]:
        b = p.bytes
        if p.shardable and (layout in ("fsdp", "zero3") or (layout == "zero2" and p.kind in ("grads", "optimizer"))):
            b = b / n
        rows[p.name] = (p, b)
    extra = {}
    if layout in ("fsdp", "zero3") and n > 1:
        extra["gathered blocks in flight (2)"] = 2 * plan["unit_bytes"]
    if layout == "ddp":
        extra["DDP gradient buckets"] = sum(p.bytes for p in plan["parts"] if p.kind == "grads")
    resident = sum(b for p, b in rows.values() if p.kind in ("frozen", "trainable", "grads", "optimizer", "helper"))
    resident += sum(extra.values())
    text = sum(b for p, b in rows.values() if p.kind == "text")
    act = sum(b for p, b in rows.values() if p.kind == "activations")
    transients = [b for p, b in rows.values() if p.kind == "transient"]
    placement = plan["settings"].get("text_encoders", "gpu")
    on_gpu_text = text if placement == "gpu" else 0.0
    helpers = sum(b for p, b in rows.values() if p.kind == "helper")
    text_phase = ((helpers if plan.get("text_phase_alone") else resident) + (text if placement != "cpu" else 0.0)
                  + (transients[0] if transients else 0.0))
    other_transients = max(transients[1:], default=0.0)
    train_phase = resident + on_gpu_text + max(act, other_transients)
    return {"rows": rows, "extra": extra, "peak": max(train_phase, text_phase), "train_phase": train_phase,
            "text_phase": text_phase, "layout": layout, "processes": processes}


def build_plan(opt) -> dict:
    kind = opt.network_g.get("type")
    if kind == "OneStepSD":
        return plan_onestep_sd(opt)
    if kind == "EditorLoRA":
        return plan_editor(opt)
    raise ValueError(f"ggt-ir plan: network_g.type {kind!r} is not a generative restorer (OneStepSD or EditorLoRA); "
                     "pixel networks: see bench/model_speed.py")


def suggestions(opt_path: str, overrides: list[str], plan: dict, layout: str, processes: int, gpu_gib: float) -> list[str]:
    """Single option changes (and the planner's figure for each) that bring the peak under ``gpu_gib``."""
    from ggt_ir.train.options import load_options

    s = plan["settings"]
    candidates = []
    if not s["gradient_checkpointing"]:
        candidates.append(("network_g.gradient_checkpointing=true", {}))
    if s.get("text_encoders", "gpu") == "gpu":
        candidates.append(("network_g.text_encoders=offload", {}))
    if plan["family"].endswith("(flux_kontext)") and not plan.get("text_phase_alone"):
        candidates.append(("network_g.text_encoders=offload network_g.prompt_mode=fixed", {}))
    if "quantize" in s and s["quantize"] == "none":
        candidates += [("network_g.quantize=int8", {}), ("network_g.quantize=nf4", {}),
                       ("network_g.quantize=nf4 network_g.quantize_text_encoders=true network_g.text_encoders=offload", {})]
    if s["batch"] > 1:
        candidates.append((f"datasets.train.batch_size_per_gpu={s['batch'] // 2} "
                           f"train.gradient_accumulation_steps={2 * opt_accum(opt_path, overrides)}", {}))
    if not plan["two_models"] and layout not in ("fsdp", "zero3"):
        candidates.append(("", {"layout": "fsdp", "processes": 8}))
    out = []
    for sets, lay in candidates:
        try:
            o = load_options(opt_path, overrides + sets.split(), check_paths=False)
            p = build_plan(o) if sets else plan
            g = per_gpu(p, lay.get("layout", layout), lay.get("processes", processes))
        except Exception as e:  # noqa: BLE001 - a candidate that does not apply
            out.append(f"  ({sets or lay}: not evaluated: {str(e).splitlines()[0]})")
            continue
        what = (f"--set {sets}" if sets else "") + (f" with --processes {lay['processes']} --fsdp" if lay else "")
        mark = "fits" if g["peak"] <= gpu_gib * GiB else "still over"
        out.append(f"  {what.strip():<95} -> {g['peak'] / GiB:6.1f} GiB ({mark})")
    return out


def opt_accum(opt_path, overrides) -> int:
    from ggt_ir.train.options import load_options

    return load_options(opt_path, overrides, check_paths=False).train.gradient_accumulation_steps


def render(plan: dict, g: dict, gpu_gib: float | None) -> str:
    lines = [f"{plan['family']} -- {plan['source']}",
             "settings: " + ", ".join(f"{k} {v}" for k, v in plan["settings"].items()),
             f"layout: {g['layout']}" + (f", {g['processes']} processes" if g["processes"] > 1 else ""), "",
             f"| {'component':<46} | {'GiB/GPU':>8} | note |", f"|{'-' * 48}|{'-' * 10}|------|"]
    for name, (p, b) in g["rows"].items():
        lines.append(f"| {name:<46} | {b / GiB:8.2f} | {p.note} |")
    for name, b in g["extra"].items():
        lines.append(f"| {name:<46} | {b / GiB:8.2f} | layout |")
    lines += ["", f"estimated peak per GPU: {g['peak'] / GiB:.2f} GiB ({g['peak'] / 1e9:.1f} GB) "
                  f"(training step {g['train_phase'] / GiB:.2f} GiB, text encoding {g['text_phase'] / GiB:.2f} GiB"
                  + (", before the transformer is placed" if plan.get("text_phase_alone") else "") + ")"]
    s = plan["settings"]
    if s.get("text_encoders") == "offload" and not plan.get("text_phase_alone") and plan["family"].endswith("(flux_kontext)"):
        lines.append("  (prompt_mode batch: a new per-sample instruction brings the encoders to the GPU next to the "
                     "transformer; with prompt_mode fixed they are used once, before it is placed)")
    if gpu_gib:
        lines.append(f"{'fits' if g['peak'] <= gpu_gib * GiB else 'does NOT fit'} a {gpu_gib:g} GiB GPU")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ggt-ir plan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-opt", "--opt", required=True, help="a OneStepSD or EditorLoRA option file")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="dotted overrides, as for train.py")
    p.add_argument("--gpu-mem", type=float, help="GPU memory in GiB (e.g. 80): say whether it fits, and what would")
    p.add_argument("--processes", type=int, default=1)
    lay = p.add_mutually_exclusive_group()
    for name in ("fsdp", "zero2", "zero3", "ddp"):
        lay.add_argument(f"--{name}", action="store_true", help=f"{name} layout over --processes GPUs")
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args(argv)
    from ggt_ir.config import OptionsError
    from ggt_ir.train.options import load_options

    layout = next((n for n in ("fsdp", "zero2", "zero3", "ddp") if getattr(a, n)), "ddp" if a.processes > 1 else "single")
    try:
        opt = load_options(a.opt, a.set, check_paths=False)
        plan = build_plan(opt)
    except (OptionsError, ValueError, KeyError) as e:
        print(f"ggt-ir plan: error: {e}", file=sys.stderr)
        return 2
    g = per_gpu(plan, layout, a.processes)
    print(render(plan, g, a.gpu_mem))
    if a.gpu_mem and g["peak"] > a.gpu_mem * GiB:
        print("\noptions that change the figure (one at a time):")
        print("\n".join(suggestions(a.opt, a.set, plan, layout, a.processes, a.gpu_mem)))
    if a.json:
        Path(a.json).write_text(json.dumps({"family": plan["family"], "source": plan["source"],
                                            "settings": plan["settings"], "layout": layout, "processes": a.processes,
                                            "rows_gib": {k: b / GiB for k, (_, b) in g["rows"].items()},
                                            "extra_gib": {k: b / GiB for k, b in g["extra"].items()},
                                            "peak_gib": g["peak"] / GiB}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
