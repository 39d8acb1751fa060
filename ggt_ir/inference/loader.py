"""One way to load a restorer, for every model family: ``ggt-ir restore``, ``ggt-ir eval``, ``ggt-ir merge``
and the trainer (``path.pretrain_network_g``) all come here.

    r = load_restorer("experiments/swinir_ggt")                  # a run: options.yml + newest models/net_g_*
    r = load_restorer("options/train/SwinIR/swinir_ggt100k.yml", weights="SwinIR.pth", tile=512)
    r = load_restorer("experiments/osediff/models/net_g_5000")   # an exported adapter folder
    r = load_restorer(network_g={"type": "NAFNet", "width": 32}, weights="NAFNet.pth")
    out = r.restore(lq)             # (B, 3, H, W) in [0, 1] -> float32 in [0, 1]
    out = r.restore(lq, sample)     # sample: the dataset's dict (a prompt, for models that take one)

The family is found through the architecture registry, never by name here: a network class with
``from_export`` (OneStepSD, EditorLoRA) is rebuilt from its exported adapter folder and restores with
``restore(lq, prompts)``; any other network is a pixel network (zoo models, GAN generators, spandrel
architectures), built from ``network_g`` with weights through :func:`ggt_ir.archs.weights.load_weights`
and run whole or tiled (``tile``), optionally with the x8 self-ensemble; a pixel network that defines
``restore(x)`` (a sampler, e.g. diffusion-based restorers) is run through that instead of ``forward``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol

import torch

ADAPTER_JSON = "ggt_ir_adapter.json"  # written by every adapter export (generative families)
_NET_G_RE = re.compile(r"^net_g_(\d+)$")
PIXEL_OPTIONS = {"tile": 0, "tile_overlap": 32, "tile_batch": 1, "self_ensemble": False, "half": False, "seed": None}
ADAPTER_OPTIONS = {"prompt": None, "seed": None}
# generative restorers' inference settings, recorded with what they restored (tiling, sampling)
INFERENCE_SETTINGS = ("vae_tile", "latent_tile", "tile_overlap", "color_fix", "num_inference_steps", "guidance_scale",
                      "true_cfg_scale", "negative_prompt", "buckets", "bucket_area", "inference_seed",
                      "max_sequence_length")
SEED_RULE = ("ggt_ir.eval.metrics.image_seed(base_seed, key, 'restore') for sample 0, "
             "image_seed(base_seed, key, 'restore:<s>') for sample s > 0; base_seed alone without image keys")


class RestorerError(ValueError):
    """The restorer cannot be built from what was given (the message names the file or option)."""


class Restorer(Protocol):
    info: dict

    def restore(self, lq: torch.Tensor, sample: dict | None = None) -> torch.Tensor: ...


def sample_prompts(sample: dict | list[dict] | None) -> list[str] | None:
    """The prompt(s) a dataset sample, a batch dict or a list of samples carries, as a list; None without any."""
    if isinstance(sample, list):
        prompts = [s.get("prompt") for s in sample]
        return prompts if any(prompts) else None
    if sample is None or sample.get("prompt") is None:
        return None
    p = sample["prompt"]
    return [p] if isinstance(p, str) else list(p)


def sample_seeds(sample: dict | list[dict] | None, base: int) -> list[int] | None:
    """One seed per image from its key (and ``sample_index``, for N-sample evaluation): the same image gets
    the same noise whatever its batch, rank or position; None when the samples carry no keys."""
    from ggt_ir.eval.metrics import image_seed

    if isinstance(sample, dict):
        keys = sample.get("key")
        sample = [{"key": k, "sample_index": sample.get("sample_index", 0)}
                  for k in ([keys] if isinstance(keys, str) else list(keys or []))]
    if not sample or any(not s.get("key") for s in sample):
        return None
    return [image_seed(base, s["key"], "restore" if not s.get("sample_index") else f"restore:{s['sample_index']}")
            for s in sample]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RestorerError(f"device {name}: no CUDA device is available")
    return device


def is_adapter_export(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / ADAPTER_JSON).is_file()


def newest_export(models_dir: Path) -> Path:
    """The newest ``net_g_<iter>`` of a run: a weights file (``.safetensors`` before ``.pth``) or an
    adapter folder; ``net_g_latest`` when no numbered one exists."""
    found = []
    for p in models_dir.glob("net_g_*"):
        m = _NET_G_RE.match(p.stem if p.is_file() else p.name)
        if not m:
            continue
        if p.is_file() and p.suffix in (".safetensors", ".pth"):
            found.append((int(m.group(1)), p.suffix != ".safetensors", p))
        elif p.is_dir() and is_adapter_export(p):
            found.append((int(m.group(1)), False, p))
    if found:
        return sorted(found)[-1][2]
    for p in (models_dir / "net_g_latest.safetensors", models_dir / "net_g_latest.pth", models_dir / "net_g_latest"):
        if p.is_file() or is_adapter_export(p):
            return p
    raise RestorerError(f"no exported weights (net_g_<iter>.safetensors or an adapter folder net_g_<iter>/) in "
                        f"{models_dir}; pass the weights explicitly")


def _read_yaml(path: Path) -> dict:
    from ggt_ir.config import OptionsError, read_options

    try:
        raw, _ = read_options(path)
    except OptionsError as e:
        raise RestorerError(str(e)) from None
    return raw


def describe_source(source: str | Path | None, weights: str | Path | None, network_g: dict | None):
    """(network_g, weights, path options, info) from a run folder, an option file or an adapter export."""
    from ggt_ir.utils.fs import sha256_file

    info: dict[str, Any] = {"kind": "model"}
    net: dict = {}
    path_opts: dict = {}
    if source is not None:
        src = Path(source)
        if is_adapter_export(src):
            meta = json.loads((src / ADAPTER_JSON).read_text())
            net = dict(meta.get("network_g") or {"type": meta.get("network")})
            weights = weights or src
        elif src.is_dir():
            opts_file = src / "options.yml"
            if not opts_file.is_file():
                raise RestorerError(f"{src}: neither a run folder (no options.yml) nor an adapter export "
                                    f"(no {ADAPTER_JSON})")
            raw = _read_yaml(opts_file)
            net, path_opts = dict(raw.get("network_g") or {}), dict(raw.get("path") or {})
            path_opts.pop("pretrain_network_g", None)  # a run's own exports supersede what it started from
            weights = weights or newest_export(src / "models")
            info.update(run=str(src), run_options=str(opts_file), run_options_sha256=sha256_file(opts_file),
                        run_name=raw.get("name"))
        elif src.suffix in (".yml", ".yaml"):  # an option file (read_options says when it is missing)
            raw = _read_yaml(src)
            net, path_opts = dict(raw.get("network_g") or {}), dict(raw.get("path") or {})
            weights = weights or path_opts.get("pretrain_network_g")
            info.update(run_options=str(src), run_options_sha256=sha256_file(src), run_name=raw.get("name"))
        else:
            raise RestorerError(f"not found: {src} (expected a run folder, an option file or an adapter export)")
    net = {**net, **(network_g or {})}
    if not net.get("type"):
        raise RestorerError("no network_g with a 'type' (give a run folder, an option file, or network_g)")
    return net, (str(weights) if weights else None), path_opts, info


def load_network(network_g: dict, weights: str | Path | None = None, param_key: str = "auto", strict: bool = True):
    """A pixel network from ``{type, **kwargs}`` with optional weights: (network, LoadReport or None)."""
    from ggt_ir.archs import ARCHS
    from ggt_ir.archs.weights import load_weights

    kwargs = {k: v for k, v in network_g.items() if k != "type"}
    cls = ARCHS.get(network_g["type"])
    try:
        net = cls(**kwargs)
    except TypeError as e:
        raise RestorerError(f"cannot build {network_g['type']} with {kwargs}: {e}") from None
    report = None
    if weights:
        if not Path(weights).is_file():
            raise RestorerError(f"weights file not found: {weights}")
        report = load_weights(net, weights, param_key, strict=strict)
    return net, report


class PixelRestorer:
    """A pixel network on LQ batches: whole or tiled, optionally x8 self-ensemble, fp16 on CUDA."""

    def __init__(self, net: torch.nn.Module, device: torch.device, info: dict, tile: int = 0, tile_overlap: int = 32,
                 tile_batch: int = 1, self_ensemble: bool = False, half: bool = False, seed: int | None = None):
        from ggt_ir.utils.tiling import model_pad_multiple, model_scale

        if half and device.type != "cuda":
            raise RestorerError("half precision needs a CUDA device (fp16 convolutions are slow or missing on CPU)")
        self.net = net.eval().to(device)
        if half:
            self.net.half()
        self.device, self.dtype = device, torch.float16 if half else torch.float32
        self.tile, self.tile_overlap, self.tile_batch, self.self_ensemble = tile, tile_overlap, tile_batch, self_ensemble
        self.scale, self.pad_multiple = model_scale(self.net), model_pad_multiple(self.net)
        self.info = {**info, "scale": self.scale, "tile": tile, "tile_overlap": tile_overlap,
                     "self_ensemble": self_ensemble, "half": half}
        # a sampler-based network (its own restore) may draw random numbers: each image under its own seed
        self.sampler = hasattr(self.net, "restore")
        self.base_seed = 0 if seed is None else int(seed)
        if self.sampler:
            self.info.update(stochastic=True, seeding={"base_seed": self.base_seed, "per_image": SEED_RULE,
                                                       "how": "global RNGs seeded per image (utils.seeding.seeded)"})

    @torch.inference_mode()
    def restore(self, lq: torch.Tensor, sample: dict | list[dict] | None = None) -> torch.Tensor:
        from ggt_ir.utils.seeding import seeded
        from ggt_ir.utils.tiling import self_ensemble, tiled_forward

        fn = getattr(self.net, "restore", self.net)  # a sampler-based network restores through its own method
        run = lambda t: tiled_forward(fn, t, self.tile, self.tile_overlap, tile_batch=self.tile_batch,  # noqa: E731
                                      scale=self.scale, pad_multiple=self.pad_multiple)
        whole = lambda t: self_ensemble(run, t) if self.self_ensemble else run(t)  # noqa: E731
        x = lq.to(self.device, self.dtype)
        seeds = sample_seeds(sample, self.base_seed) if self.sampler else None
        if seeds is None:
            out = whole(x)
        else:  # one image at a time, so an image's randomness does not depend on its batch
            outs = []
            for i, s in enumerate(seeds):
                with seeded(s, self.device):
                    outs.append(whole(x[i:i + 1]))
            out = torch.cat(outs)
        return out.float().clamp_(0, 1)


class AdapterRestorer:
    """A generative restorer rebuilt from its exported adapters: ``model.restore(lq, prompts)``; the
    prompt is the sample's (per image) unless one is forced with ``prompt``."""

    def __init__(self, model: torch.nn.Module, device: torch.device, info: dict, prompt: str | None = None,
                 seed: int | None = None):
        import inspect

        self.model = model.eval().to(device)
        self.device, self.prompt = device, prompt
        self.info = {**info, "prompt": prompt,
                     "inference": {k: getattr(model, k) for k in INFERENCE_SETTINGS
                                   if isinstance(getattr(model, k, None), (int, float, str, bool))}}
        # a restorer that takes `seed` (EditorLoRA: its noise) gets one per image, derived from the image key
        self.seedable = "seed" in inspect.signature(model.restore).parameters
        self.base_seed = int(seed if seed is not None else (getattr(model, "inference_seed", 0) or 0))
        if self.seedable:
            self.info.update(stochastic=True, seeding={"base_seed": self.base_seed, "per_image": SEED_RULE})

    @torch.inference_mode()
    def restore(self, lq: torch.Tensor, sample: dict | list[dict] | None = None) -> torch.Tensor:
        prompts = [self.prompt] * lq.shape[0] if self.prompt is not None else sample_prompts(sample)
        kwargs = {}
        if self.seedable:
            seeds = sample_seeds(sample, self.base_seed)
            kwargs["seed"] = seeds if seeds is not None else self.base_seed
        return self.model.restore(lq.to(self.device), prompts, **kwargs).float().clamp_(0, 1)


def _take(options: dict, allowed: dict, family: str) -> dict:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise RestorerError(f"{', '.join(unknown)} do(es) not apply to {family}; it takes "
                            f"{', '.join(sorted(allowed)) or 'no inference options'}")
    return {**allowed, **options}


def load_restorer(source: str | Path | None = None, weights: str | Path | None = None, *,
                  network_g: dict | None = None, overrides: dict | None = None, param_key: str | None = None,
                  strict: bool | None = None, device: str | torch.device = "cpu", require_weights: bool = False,
                  **options) -> Restorer:
    """Build a restorer (see the module docstring).

    ``source``: a run folder, an option file or an adapter export folder (or None with ``network_g``).
    ``weights``: a weights file or adapter folder; default: the run's newest export, the option file's
    ``path.pretrain_network_g``, or the export folder itself. ``network_g``: keys merged over the source's
    network options; ``overrides``: constructor options of a generative family (``vae_tile``,
    ``num_inference_steps``, ``pretrained``, ...). ``options`` (None = unset): pixel networks take
    ``tile``, ``tile_overlap``, ``tile_batch``, ``self_ensemble``, ``half``; generative ones ``prompt``.
    ``require_weights``: a pixel network without weights is an error (else it is randomly initialised).
    """
    from ggt_ir.archs import ARCHS
    from ggt_ir.utils.fs import sha256_file, sha256_tree

    net_opts, weights, path_opts, info = describe_source(source, weights, network_g)
    options = {k: v for k, v in options.items() if v is not None}
    dev = resolve_device(device)
    cls = ARCHS.get(net_opts["type"])
    if hasattr(cls, "from_export"):
        opts = _take(options, ADAPTER_OPTIONS, f"{net_opts['type']} (a generative restorer)")
        over = dict(overrides or {})
        if weights and is_adapter_export(weights):
            model = cls.from_export(weights, **over)
            info.update(checkpoint=str(weights), checkpoint_sha256=sha256_tree(weights))
        else:  # no adapters: the base (or merged) weights named by network_g
            if weights:
                raise RestorerError(f"{weights}: {net_opts['type']} loads LoRA adapters from an export folder "
                                    f"(with {ADAPTER_JSON}), not a weights file")
            model = cls(**{**{k: v for k, v in net_opts.items() if k != "type"}, **over})
            info.update(checkpoint=None)
        info.update(network_g={**net_opts, **over})
        return AdapterRestorer(model, dev, info, **opts)
    if overrides:
        raise RestorerError(f"{', '.join(overrides)}: {net_opts['type']} is a pixel network; give its "
                            "constructor options in network_g")
    opts = _take(options, PIXEL_OPTIONS, f"{net_opts['type']} (a pixel network)")
    if require_weights and not weights:
        raise RestorerError("no weights: give --weights (or path.pretrain_network_g in the option file)")
    key = param_key or path_opts.get("param_key_g") or "auto"
    strict = bool(path_opts.get("strict_load_g", True)) if strict is None else strict
    net, report = load_network(net_opts, weights, key, strict)
    if report is not None:
        info.update(checkpoint=str(weights), checkpoint_sha256=sha256_file(weights), param_key=report.param_key,
                    load_report=str(report))
    else:
        info.update(checkpoint=None, note="no checkpoint: randomly initialised network")
    info.update(network_g=net_opts)
    return PixelRestorer(net, dev, info, **opts)
