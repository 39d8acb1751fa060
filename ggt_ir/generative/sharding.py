"""The generative restorers under FSDP2 and DeepSpeed (accelerate), LoRA-only training.

What this module makes true (docs/generative.md, "Large models"):

* **the launch is known at option-load time**: :func:`launched_with` reads the environment that
  ``accelerate launch`` sets for its children (``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED``), so a
  step's ``check_options`` can refuse a combination before any folder is touched;
* **frozen weights are sharded, not replicated**: the trained module is never moved to the GPU before
  ``accelerator.prepare`` under FSDP (``fully_shard`` moves and shards one wrapped block at a time); with
  ``fsdp_cpu_ram_efficient_loading`` only rank 0 reads the weights, the other ranks build the transformer on the
  ``meta`` device (:func:`load_on_meta`), and accelerate broadcasts rank 0's tensors into each rank's shards.
  The LoRA-only ``state_dict`` hook is switched off while accelerate snapshots the model
  (:func:`prepare_trained`), so that snapshot is complete;
* **DeepSpeed gets its batch figures from the options** (:func:`configure_deepspeed`): micro-batch, global
  batch, accumulation and clipping, instead of "auto" (which needs a DataLoader in ``prepare``);
* **inference runs through the wrapped module**: ``restore`` is registered as an FSDP forward method
  (:func:`register_inference`), so the root's parameters are gathered for it as for ``forward``.
"""
from __future__ import annotations

import contextlib
import os

from torch import nn


def launched_with() -> str:
    """``deepspeed``, ``fsdp`` or ``other``, from the environment of ``accelerate launch`` (option-load time)."""
    flag = lambda k: os.environ.get(k, "false").lower() in ("1", "true", "yes")  # noqa: E731
    if flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return "other"


def kind(accelerator) -> str:
    """``deepspeed``, ``fsdp`` or ``other`` for a built accelerator."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp"
    return "other"


def zero_stage(accelerator) -> int | None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else int(plugin.zero_stage)


def fsdp_ram_efficient(accelerator) -> bool:
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return bool(plugin is not None and plugin.cpu_ram_efficient_loading)


def load_on_meta(accelerator) -> bool:
    """True on the ranks that need not read the trained module's weights (FSDP RAM-efficient loading, rank > 0)."""
    return kind(accelerator) == "fsdp" and fsdp_ram_efficient(accelerator) and not accelerator.is_main_process


def configure_deepspeed(accelerator, batch_size: int, accumulation: int, grad_clip: float) -> dict | None:
    """Fill DeepSpeed's batch figures from the options (they are ``auto`` in the shipped configs). A value set
    to something else in the config file must agree with the options, else a one-line error names both."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    cfg = plugin.deepspeed_config
    want = {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": accumulation,
            "train_batch_size": batch_size * accumulation * accelerator.num_processes}
    if grad_clip > 0:
        want["gradient_clipping"] = grad_clip
    for key, value in want.items():
        have = cfg.get(key, "auto")
        if have in ("auto", None):
            cfg[key] = value
        elif float(have) != float(value):
            raise ValueError(f"DeepSpeed config: {key} is {have} but the options give {value} "
                             "(datasets.train.batch_size_per_gpu, train.gradient_accumulation_steps, train.grad_clip); "
                             f"set {key}: auto in the accelerate config")
    return {k: cfg[k] for k in want}


@contextlib.contextmanager
def prepare_trained(module: nn.Module):
    """Around ``accelerator.prepare(module, ...)``: the module's ``state_dict`` is complete (FSDP's
    RAM-efficient loading reloads the whole model from it after sharding on ``meta``)."""
    from ggt_ir.generative.lora import full_state_dict

    with full_state_dict(module):
        yield module


def register_inference(module: nn.Module, accelerator, methods=("restore",)) -> None:
    """Under FSDP2, make ``module.<method>`` gather the root's parameters like ``forward`` does."""
    if kind(accelerator) != "fsdp":
        return
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    if isinstance(module, FSDPModule):
        for name in methods:
            register_fsdp_forward_method(module, name)


def sharded_summary(module: nn.Module) -> dict:
    """Counts of parameters held as sharded DTensors vs plain tensors, and this rank's share of the elements."""
    from torch.distributed.tensor import DTensor

    n_sharded = n_plain = local = full = 0
    for p in module.parameters():
        if isinstance(p, DTensor):
            n_sharded += 1
            local += p.to_local().numel()
        else:
            n_plain += 1
            local += p.numel()
        full += p.numel()
    return {"sharded": n_sharded, "plain": n_plain, "local_elements": local, "elements": full}


def partition_zero3(module: nn.Module, accelerator) -> bool:
    """ZeRO-3: partition ``module``'s parameters where they are (CPU) before DeepSpeed places it, so no GPU ever
    holds the whole frozen base (``deepspeed.zero.Init(module=...)``). True when it did."""
    if zero_stage(accelerator) != 3:
        return False
    import deepspeed

    cfg = accelerator.state.deepspeed_plugin.deepspeed_config
    deepspeed.zero.Init(module=module, config_dict_or_path=cfg)
    return True


def gather_lora_zero3(module: nn.Module) -> dict:
    """The LoRA tensors of a ZeRO-3 module, gathered (collective: every rank calls it); full copies on CPU."""
    import deepspeed

    named = [(n, p) for n, p in module.named_parameters() if ".lora_" in n]
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        return {n: p.detach().float().cpu().clone() for n, p in named}
