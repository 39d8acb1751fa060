"""Checkpoint folders (accelerate ``save_state``) that are checked before they are trusted, plus weight exports.

Writing (:func:`save_checkpoint`, a collective): every rank saves into ``checkpoints/.tmp-checkpoint-<iter>``;
then the main process writes the iteration's weight exports (``models/net_g_<iter>``), lists every file of
the folder with its size in ``ggt_ir_checkpoint.json`` (the completion marker) and renames the folder to
``checkpoint-<iter>``. A rename is atomic, so a killed write leaves only a ``.tmp-*`` folder (ignored, and
removed by the next save), and a checkpoint that exists always has its export.

Reading (:func:`resolve_resume`, :func:`verify_checkpoint`): a checkpoint is used only when its marker is
there and every listed file has its recorded size. ``latest`` takes the newest checkpoint that checks out
and says in one line why any newer one was passed over; an explicit path that fails is an error naming the
file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from ggt_ir.utils.fs import atomic_write, atomic_write_json

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
MARKER = "ggt_ir_checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from; the message names the file and what is wrong."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    pass


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
    return sorted(found)


def _file_sizes(folder: Path) -> dict[str, int]:
    return {f.relative_to(folder).as_posix(): f.stat().st_size
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != MARKER}


def verify_checkpoint(folder: Path) -> str | None:
    """None when ``folder`` is a complete checkpoint; otherwise one line naming the file and the fault."""
    marker = folder / MARKER
    if not marker.is_file():
        return f"{marker.name} is missing (the folder was not written by a completed save)"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        return f"{marker.name} is unreadable ({e})"
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return f"{marker.name} lists no files"
    for rel, size in files.items():
        f = folder / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes, {size} expected (truncated or replaced)"
    return None


def resolve_resume(spec: str | None, ckpt_root: Path, warn: Callable[[str], None] = print) -> Path | None:
    """``latest`` -> newest checkpoint that checks out (None if there is none at all); a path -> that folder,
    verified. Damaged newer checkpoints are reported through ``warn`` and passed over."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(ckpt_root)
        for _, path in reversed(found):
            fault = verify_checkpoint(path)
            if fault is None:
                return path
            warn(f"--resume latest: skipping damaged {path}: {fault}")
        if found:
            raise CheckpointError(f"no usable checkpoint in {ckpt_root}: all {len(found)} are damaged (see above); "
                                  "remove them to start afresh")
        return None
    p = Path(spec)
    if not p.is_dir():
        raise CheckpointNotFoundError(f"resume checkpoint not found: {p} (expected a folder like "
                              f"{ckpt_root}/checkpoint-1000, or 'latest')")
    if p.name.startswith(".tmp-"):
        raise CheckpointError(f"{p} is an incomplete checkpoint (its write was interrupted); use a checkpoint-* folder")
    fault = verify_checkpoint(p)
    if fault is not None:
        raise CheckpointError(f"cannot resume from {p}: {fault}")
    return p


def save_checkpoint(accelerator, ckpt_root: Path, it: int, keep_last: int,
                    before_complete: Callable[[], None] | None = None) -> Path:
    """Collective: every rank must call it (DeepSpeed/FSDP shard their states; RNG states are per rank).
    ``before_complete`` runs on every rank after the state is saved and before the checkpoint is marked
    complete (the trainer writes the weight exports there)."""
    final = ckpt_root / f"checkpoint-{it}"
    tmp = ckpt_root / f".tmp-checkpoint-{it}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if before_complete is not None:
        before_complete()
    if accelerator.is_main_process:
        atomic_write_json(tmp / MARKER, {"iter": it, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "num_processes": accelerator.num_processes, "files": _file_sizes(tmp)})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep_last > 0:
            for _, old in list_checkpoints(ckpt_root)[:-keep_last]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def copy_as_latest(export: Path, stem: str, latest_stem: str) -> Path:
    """``models/net_g_<iter>.*`` (a file or an adapter folder) copied to ``net_g_latest.*``, atomically."""
    from ggt_ir.utils.fs import atomic_dir

    target = export.with_name(latest_stem + export.name[len(stem):])
    if export.is_dir():
        return atomic_dir(target, lambda tmp: shutil.copytree(export, tmp))
    return atomic_write(target, lambda tmp: shutil.copyfile(export, tmp))


def export_generator(path_stem, params: dict, params_ema: dict | None, it: int, network_g: dict,
                     also_pth: bool = False) -> list[str]:
    """Official-layout export: safetensors with ``params.<k>`` / ``params_ema.<k>`` (and a BasicSR
    ``{'params':..., 'params_ema':...}`` .pth on request). ``archs.weights.load_weights`` reads both."""
    from safetensors.torch import save_file

    path_stem = Path(path_stem)
    # contiguous copies: safetensors refuses other strides (train.channels_last keeps weights NHWC)
    flat = {f"params.{k}": v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in params.items()}
    if params_ema is not None:
        flat.update({f"params_ema.{k}": v.detach().cpu().clone(memory_format=torch.contiguous_format)
                     for k, v in params_ema.items()})
    meta = {"format": "ggt-ir generator", "iter": str(it), "network_g": json.dumps(network_g),
            "groups": "params,params_ema" if params_ema is not None else "params"}
    out = [str(path_stem.with_suffix(".safetensors"))]
    atomic_write(Path(out[0]), lambda p: save_file(flat, str(p), metadata=meta))
    if also_pth:
        obj = {"params": {k: flat[f"params.{k}"] for k in params}}
        if params_ema is not None:
            obj["params_ema"] = {k: flat[f"params_ema.{k}"] for k in params_ema}
        out.append(str(path_stem.with_suffix(".pth")))
        atomic_write(Path(out[1]), lambda p: torch.save(obj, str(p)))
    return out
