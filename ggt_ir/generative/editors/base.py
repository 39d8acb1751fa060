"""What every editor family provides to :class:`~ggt_ir.generative.editor.EditorLoRA`, and what they share.

A family object loads its components, keeps the frozen helpers (VAE, text encoder(s), tokenizers) and
knows the family's conventions. The transformer it loads is handed to EditorLoRA, which owns it (the one
registered, trained and prepared module) and passes it back into :meth:`EditorFamily.predict`.

Shared here: loading (``from_pretrained`` through ``pretrained.py``, the flow-match scheduler), the 2x2
patch sequence (:meth:`pack` / :meth:`unpack`), the device, the noise shape and plain CFG.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class EditorFamily:
    pipeline: str = ""  # the diffusers pipeline class (its LoRA file format; docs)
    subfolders: tuple[str, ...] = ()  # the diffusers folder layout the family loads
    lora_targets: tuple[str, ...] = ()  # default LoRA layer-name suffixes (diffusers' LoRA scripts)
    text_encoder_names: tuple[str, ...] = ("text_encoder",)  # the keys of :attr:`frozen` that encode instructions
    text_sees_image: bool = True  # the instruction encoding depends on the image (no cache; encoded every step)
    patch: int = 2  # latents are packed in patch x patch tokens

    def __init__(self, dtype: torch.dtype, *, max_sequence_length: int = 512, max_cached_prompts: int = 1024,
                 text_encoders: str = "gpu"):
        """``dtype``: frozen weights. Instruction-encoding options: each family uses those that apply to it;
        ``text_encoders``: where the text encoders live (``memory.TextEncoders``)."""
        from ggt_ir.generative.memory import TextEncoders

        self.dtype = dtype
        self.max_sequence_length, self.max_cached_prompts = max_sequence_length, max_cached_prompts
        self.text = TextEncoders(text_encoders)
        self.frozen: dict[str, nn.Module] = {}  # moved with the EditorLoRA, never trained or wrapped
        self.vae_factor: int = 1  # image pixels per latent pixel (set by load_components)
        self.latent_channels: int = 0

    # ------------------------------------------------------------------ loading
    def load(self, pretrained: str, *, revision: str | None = None, variant: str | None = None,
             allow_download: bool = False, quantize: str = "none", quantize_text_encoders: bool = False,
             transformer_on_meta: bool = False) -> nn.Module:
        """Load the components from ``pretrained`` (folder or Hub id, never downloading silently); returns
        the transformer, keeps the frozen helpers in :attr:`frozen` and the scheduler in :attr:`scheduler`.
        ``quantize``: the transformer (and with ``quantize_text_encoders`` the text encoders) loaded quantized
        (``memory.quantization_config``); ``transformer_on_meta``: built from its config on ``meta``, no weights read."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        from ggt_ir.generative.memory import quantization_config
        from ggt_ir.generative.pretrained import load_component, load_component_on_meta

        common = dict(revision=revision, variant=variant, allow_download=allow_download,
                      all_subfolders=list(self.subfolders))
        if quantize != "none" and transformer_on_meta:
            raise ValueError("network_g.quantize with FSDP's fsdp_cpu_ram_efficient_loading is not supported; "
                             "set fsdp_cpu_ram_efficient_loading: false in the accelerate config")

        def weights(cls, subfolder: str, role: str | None = None):
            """A network in the frozen-weight dtype (and the variant); ``role``: transformer | text."""
            if role == "transformer" and transformer_on_meta:
                return load_component_on_meta(cls, pretrained, subfolder, torch_dtype=self.dtype, **common)
            kind = quantize if role == "transformer" or (role == "text" and quantize_text_encoders) else "none"
            library = "diffusers" if cls.__module__.startswith("diffusers") else "transformers"
            q = quantization_config(kind, library, self.dtype)
            return load_component(cls, pretrained, subfolder, torch_dtype=self.dtype, **common,
                                  **({"quantization_config": q} if q is not None else {}))

        def files(cls, subfolder: str):  # tokenizers, processors, the scheduler
            return load_component(cls, pretrained, subfolder, **{**common, "variant": None})

        transformer = self.load_components(weights, files)
        self.scheduler = files(FlowMatchEulerDiscreteScheduler, "scheduler")
        return transformer

    def load_components(self, weights: Callable, files: Callable) -> nn.Module:
        """Load the family's networks with ``weights(cls, subfolder)`` and its tokenizers with
        ``files(cls, subfolder)``; fill :attr:`frozen`, :attr:`vae_factor`, :attr:`latent_channels`;
        return the transformer."""
        raise NotImplementedError

    def __getattr__(self, name: str):  # self.vae, self.text_encoder, ...: the frozen helpers
        frozen = self.__dict__.get("frozen")
        if frozen is not None and name in frozen:
            return frozen[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def device(self) -> torch.device:
        """The compute device (the VAE's; text encoders may be placed on the CPU)."""
        return next(self.frozen["vae"].parameters()).device

    def text_encoders_ready(self):
        """Context for encoding: the text encoders on the device they run on (``text_encoders`` placement);
        yields the device for their inputs."""
        return self.text.ready([self.frozen[k] for k in self.text_encoder_names], self.device)

    # ------------------------------------------------------------------ the family's conventions
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3, H, W) -> normalised latents (B, C, H/f, W/f), as the pipeline does."""
        raise NotImplementedError

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images in [0, 1]."""
        raise NotImplementedError

    def encode_text(self, prompts: list[str], images: torch.Tensor) -> dict:
        """The transformer's text conditioning for one instruction per image (``images``: the model-size
        LQ images, for encoders that see them)."""
        raise NotImplementedError

    def predict(self, transformer: nn.Module, hidden: torch.Tensor, t: torch.Tensor, guidance: torch.Tensor | None,
                text: dict, h: int, w: int) -> torch.Tensor:
        """The transformer's output for ``hidden`` = [noisy tokens | LQ tokens] of an h x w latent, at
        timestep ``t`` (sigma), embedded ``guidance`` (or None)."""
        raise NotImplementedError

    def bucket(self, ratio: float, area: int) -> tuple[float, float]:
        """(width, height) the family runs an input of aspect ratio ``ratio`` (w / h) at, for ~``area`` pixels
        (before rounding to the multiple)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared defaults
    @property
    def multiple(self) -> int:
        """Image sizes the model runs at are multiples of this (VAE factor x patch)."""
        return self.vae_factor * self.patch

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, h/2 * w/2, 4C): the 2x2 patch sequence."""
        b, c, h, w = z.shape
        p = self.patch
        return z.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)

    def unpack(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, d = x.shape
        p = self.patch
        c = d // (p * p)
        return x.view(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def noise_shape(self, b: int, h: int, w: int) -> tuple[int, ...]:
        """The shape the pipeline draws its initial noise in (the same numbers whatever the shape)."""
        return (b, self.latent_channels, h, w)

    def guide(self, v: torch.Tensor, v_neg: torch.Tensor, scale: float) -> torch.Tensor:
        """True classifier-free guidance from the conditional and the negative-prompt velocities."""
        return v_neg + scale * (v - v_neg)
