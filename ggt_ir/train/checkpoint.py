"""Checkpoint folders (accelerate ``save_state``) written atomically, plus weight exports.

A checkpoint is written to ``checkpoints/.tmp-checkpoint-<iter>`` by every rank, then renamed
to ``checkpoints/checkpoint-<iter>`` by the main process once all ranks are done. A rename is
atomic, so a folder named ``checkpoint-*`` is always complete; a killed write leaves only a
``.tmp-*`` folder, which ``latest`` ignores and the next save removes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import torch

from ggt_ir.utils.fs import atomic_write

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
    return sorted(found)


def resolve_resume(spec: str | None, ckpt_root: Path) -> Path | None:
    """``latest`` -> newest complete checkpoint (None if there is none); a path -> that folder."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(ckpt_root)
        return found[-1][1] if found else None
    p = Path(spec)
    if not p.is_dir():
        raise FileNotFoundError(f"resume checkpoint not found: {p} (expected a folder like "
                                f"{ckpt_root}/checkpoint-1000, or 'latest')")
    if p.name.startswith(".tmp-"):
        raise ValueError(f"{p} is an incomplete checkpoint (its write was interrupted); use a checkpoint-* folder")
    return p


def save_checkpoint(accelerator, ckpt_root: Path, it: int, keep_last: int) -> Path:
    """Collective: every rank must call it (DeepSpeed/FSDP shard their states; RNG states are per rank)."""
    final = ckpt_root / f"checkpoint-{it}"
    tmp = ckpt_root / f".tmp-checkpoint-{it}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "ggt_ir_checkpoint.json").write_text(json.dumps({"iter": it, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                                 "num_processes": accelerator.num_processes}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep_last > 0:
            for _, old in list_checkpoints(ckpt_root)[:-keep_last]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def export_generator(path_stem, params: dict, params_ema: dict | None, it: int, network_g: dict,
                     also_pth: bool = False) -> list[str]:
    """Official-layout export: safetensors with ``params.<k>`` / ``params_ema.<k>`` (and a BasicSR
    ``{'params':..., 'params_ema':...}`` .pth on request). ``archs.weights.load_weights`` reads both."""
    from safetensors.torch import save_file

    path_stem = Path(path_stem)
    flat = {f"params.{k}": v.detach().cpu().clone() for k, v in params.items()}
    if params_ema is not None:
        flat.update({f"params_ema.{k}": v.detach().cpu().clone() for k, v in params_ema.items()})
    meta = {"format": "ggt-ir generator", "iter": str(it), "network_g": json.dumps(network_g),
            "groups": "params,params_ema" if params_ema is not None else "params"}
    out = [str(path_stem.with_suffix(".safetensors"))]
    atomic_write(Path(out[0]), lambda p: save_file(flat, str(p), metadata=meta))
    if also_pth:
        obj = {"params": {k: v.detach().cpu() for k, v in params.items()}}
        if params_ema is not None:
            obj["params_ema"] = {k: v.detach().cpu() for k, v in params_ema.items()}
        out.append(str(path_stem.with_suffix(".pth")))
        atomic_write(Path(out[1]), lambda p: torch.save(obj, str(p)))
    return out
