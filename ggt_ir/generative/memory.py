"""Precision and memory options shared by the generative restorers (``network_g`` keys).

* :func:`run_in_fp32` -- a layer held and run in fp32 whatever the frozen-weight dtype and autocast
  (``precise_x0``: the layers whose output feeds the one-step x0, see ``onestep_sd.py``);
* :func:`quantization_config` -- ``quantize: nf4 | int8 | fp8``: the frozen base loaded quantized by
  ``from_pretrained`` (bitsandbytes NF4, torchao int8 / fp8 weight-only), LoRA on top in fp32;
* :func:`set_attention` -- ``attention: sdpa | xformers | flash | ...`` (diffusers' attention backends);
* :func:`set_vae_memory` -- ``vae_tiling`` / ``vae_slicing`` (diffusers' tiled / per-image VAE passes);
* :class:`TextEncoders` -- ``text_encoders: gpu | offload | cpu``: where frozen text encoders live between
  uses (prompt embeddings are cached, so a fixed instruction is encoded once and the encoders leave the GPU).
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

QUANTIZE = ("none", "nf4", "int8", "fp8")
TEXT_PLACEMENTS = ("gpu", "offload", "cpu")


# ---------------------------------------------------------------------------------------------- precision
def _fp32_forward(forward, keep_dtype, x, *args, **kwargs):
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = forward(x.float(), *args, **kwargs)
    return out.to(x.dtype) if keep_dtype else out


def run_in_fp32(module: nn.Module, output: str = "fp32") -> nn.Module:
    """Hold ``module``'s weights in fp32 and run it in fp32: autocast off, input upcast. ``output="fp32"``: its
    output stays fp32, not rounded to bf16/fp16 (the layers feeding x0); ``"input"``: cast back to the input's
    dtype (a fully trained fp32 layer inside a bf16 network, e.g. the UNet's conv_in). Apply after LoRA adapters
    are added (the whole peft layer runs in fp32)."""
    if getattr(module, "_ggt_fp32", False):
        return module
    module.float()
    module.forward = functools.partial(_fp32_forward, module.forward, output == "input")
    module._ggt_fp32 = True
    return module


# ---------------------------------------------------------------------------------------------- quantization
def quantization_config(kind: str, library: str, compute_dtype: torch.dtype):
    """The ``quantization_config`` for ``from_pretrained`` of a diffusers (``library="diffusers"``) or
    transformers model; None for ``none``. One-line errors when the library or the device is missing."""
    if kind in (None, "none"):
        return None
    if kind not in QUANTIZE:
        raise ValueError(f"network_g.quantize must be one of {', '.join(QUANTIZE)}; got {kind!r}")
    lib = __import__(library)
    if kind == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ImportError("network_g.quantize: nf4 needs bitsandbytes (pip install 'ggt-ir[quant]', "
                              "i.e. bitsandbytes==0.50.2); or quantize: int8 (torchao)") from e
        if not torch.cuda.is_available():
            raise RuntimeError("network_g.quantize: nf4 loads through the bitsandbytes quantizer of "
                               f"{library}, which needs a CUDA GPU; on CPU use quantize: int8 (torchao)")
        # quant storage in the compute dtype: FSDP2 can shard the 4-bit weights (accelerate fsdp_utils)
        return lib.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=compute_dtype)
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig
    except ImportError as e:
        raise ImportError(f"network_g.quantize: {kind} needs torchao (pip install 'ggt-ir[quant]', i.e. "
                          "torchao==0.18.0)") from e
    return lib.TorchAoConfig(Int8WeightOnlyConfig() if kind == "int8" else Float8WeightOnlyConfig())


def quantized_linear_count(model: nn.Module) -> int:
    """Linear layers whose weight is stored quantized (bitsandbytes Params4bit or a torchao tensor subclass)."""
    n = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.Linear) and w is not None and type(w).__name__ not in ("Parameter", "Tensor"):
            n += 1
    return n


# ---------------------------------------------------------------------------------------------- attention, VAE
ATTENTION = {"sdpa": "native", "flash": "flash", "flash_varlen": "flash_varlen", "sage": "sage",
             "xformers": "xformers", "native_flash": "_native_flash", "native_efficient": "_native_efficient"}


def set_attention(model: nn.Module, attention: str, key: str = "network_g.attention", dispatcher: bool = True) -> None:
    """``sdpa`` (PyTorch's fused attention; the default) or another attention backend: diffusers' attention
    dispatcher (``set_attention_backend``; FLUX, Qwen-Image) or, for models without it (``dispatcher=False``:
    the SD UNet / VAE), only ``xformers`` through ``enable_xformers_memory_efficient_attention``."""
    if attention not in ATTENTION:
        raise ValueError(f"{key} must be one of {', '.join(ATTENTION)}; got {attention!r}")
    if attention == "sdpa":
        return  # diffusers' default processors call torch's scaled_dot_product_attention
    try:
        if not dispatcher:
            if attention != "xformers":
                raise ValueError(f"this model supports sdpa or xformers, not {attention}")
            model.enable_xformers_memory_efficient_attention()
        else:
            model.set_attention_backend(ATTENTION[attention])
    except Exception as e:  # noqa: BLE001 - diffusers raises several kinds
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f"{key}: {attention} is not usable here ({first}); use attention: sdpa "
                           "(PyTorch's fused attention, the default)") from None


def set_vae_memory(vae: nn.Module, tiling: bool, slicing: bool, tile: int = 0) -> None:
    """diffusers' tiled VAE passes (``tiling``; ``tile`` pixels, 0 = the VAE's default) and per-image passes
    over a batch (``slicing``). Both are differentiable, so they work in training as well."""
    if tiling:
        vae.enable_tiling()
        if tile and hasattr(vae, "tile_sample_min_height"):  # AutoencoderKLQwenImage: size and stride
            vae.tile_sample_min_height = vae.tile_sample_min_width = tile
            vae.tile_sample_stride_height = vae.tile_sample_stride_width = tile * 3 // 4
        elif tile:  # AutoencoderKL: size, overlap 1/4
            vae.tile_sample_min_size = tile
            vae.tile_latent_min_size = tile // 2 ** (len(vae.config.block_out_channels) - 1)
    if slicing:
        vae.enable_slicing()


# ---------------------------------------------------------------------------------------------- text encoders
class TextEncoders:
    """Where frozen text encoders live: ``gpu`` (with the model), ``offload`` (CPU RAM; moved to the compute
    device only while encoding -- with cached prompts that is a cache miss, so a fixed instruction puts them on
    the GPU once), ``cpu`` (always run on the CPU; slow for large encoders, never on the GPU)."""

    def __init__(self, placement: str, key: str = "network_g.text_encoders"):
        if placement not in TEXT_PLACEMENTS:
            raise ValueError(f"{key} must be one of {', '.join(TEXT_PLACEMENTS)}; got {placement!r}")
        self.placement = placement
        self.encodes = 0  # how often the encoders ran (tests, logs)

    @property
    def stays_on_cpu(self) -> bool:
        return self.placement != "gpu"

    @contextlib.contextmanager
    def ready(self, modules: list[nn.Module], device: torch.device):
        """Context in which ``modules`` can encode; yields the device to put their inputs on."""
        self.encodes += 1
        if self.placement == "gpu":
            yield device
            return
        if self.placement == "cpu" or device.type == "cpu":
            yield torch.device("cpu")
            return
        for m in modules:
            m.to(device)
        try:
            yield device
        finally:
            for m in modules:
                m.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()
