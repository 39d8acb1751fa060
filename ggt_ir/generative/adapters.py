"""The record of an adapter export folder (``ggt_ir_adapter.json``), shared by the generative restorers.

An export folder (``experiments/<run>/models/net_g_<iter>/``) holds the LoRA files and this record: what
the folder holds, the base model, the step, and the ``network_g`` options that rebuild the network, so
``<Network>.from_export(folder)`` needs nothing else.
"""
from __future__ import annotations

import json
from pathlib import Path

ADAPTER_JSON = "ggt_ir_adapter.json"


def write_export_record(folder: str | Path, net, *, network: str, fmt: str, step: int, adapters: dict,
                        extra: dict | None = None, **fields) -> dict:
    """Write ``folder/ggt_ir_adapter.json`` for ``net`` (a network with ``config`` = its ``network_g``
    arguments and ``adapter_info()``); ``adapters``: {sub-folder: {component, adapter}}; ``fields``: the
    network's own entries; ``extra``: the caller's (step options such as ``ema``)."""
    from ggt_ir.generative.lora import write_json

    cfg = net.config
    info = {
        "format": fmt,
        "network": network,
        **fields,
        "base_model": cfg["pretrained"],
        "revision": cfg["revision"],
        "variant": cfg["variant"],
        "step": step,
        "adapters": adapters,
        "ranks_targets": net.adapter_info(),
        "network_g": {"type": network, **{k: v for k, v in cfg.items() if k != "adapters"}},
        **(extra or {}),
    }
    write_json(Path(folder) / ADAPTER_JSON, info)
    return info


def read_export_record(folder: str | Path, network: str) -> dict:
    """The record of an export folder of ``network``; a clear error for a folder that is not one."""
    meta = Path(folder) / ADAPTER_JSON
    if not meta.is_file():
        raise FileNotFoundError(f"{folder}: no {ADAPTER_JSON}; expected an export folder of a {network} run "
                                "(experiments/<name>/models/net_g_<iter>)")
    info = json.loads(meta.read_text())
    if info.get("network") != network:
        raise ValueError(f"{folder}: not an export of {network} (its {ADAPTER_JSON} names {info.get('network')!r})")
    return info


def rebuild_arguments(folder: str | Path, network: str, overrides: dict) -> dict:
    """Constructor arguments that rebuild the exported network: its recorded ``network_g``, the folder's
    adapters, then ``overrides``."""
    info = read_export_record(folder, network)
    kwargs = {k: v for k, v in info["network_g"].items() if k != "type"}
    kwargs.update(adapters=str(folder), **overrides)
    return kwargs
