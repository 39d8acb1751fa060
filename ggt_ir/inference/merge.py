"""``ggt-ir merge``: fold exported LoRA adapters into full diffusers weights.

    ggt-ir merge experiments/<run>/models/net_g_latest --output merged/ [--base /path/to/sd21]

Reads ``ggt_ir_adapter.json`` (base model id + revision, adapters), loads the base components with
the same loader as training (never downloading silently), merges every adapter into its layer and
writes a complete diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/`` + the JSON as
``ggt_ir_merged.json``). Use it with ``network_g: {type: OneStepSD, pretrained: merged/,
lora_rank_unet: 0, lora_rank_vae: 0}``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def merge_adapters(adapter_dir: str | Path, output: str | Path, base: str | None = None,
                   dtype: str = "fp32") -> Path:
    from diffusers import DDPMScheduler

    from ggt_ir.inference.loader import load_restorer
    from ggt_ir.utils.fs import atomic_dir

    adapter_dir, output = Path(adapter_dir), Path(output)
    over = {"weight_dtype": dtype, **({"pretrained": base} if base else {})}
    restorer = load_restorer(adapter_dir, overrides=over)
    net, kwargs = restorer.model, restorer.info["network_g"]
    if not hasattr(net, "merge_lora"):
        raise ValueError(f"{adapter_dir}: merge supports OneStepSD adapters; this folder holds {kwargs['type']!r}")
    n = net.merge_lora()
    info = json.loads((adapter_dir / "ggt_ir_adapter.json").read_text())
    info.update(merged_layers=n, merged_from=str(adapter_dir), merged_dtype=dtype)

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        net.unet.save_pretrained(str(tmp / "unet"))
        net.vae.save_pretrained(str(tmp / "vae"))
        net.text_encoder.save_pretrained(str(tmp / "text_encoder"))
        net.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        DDPMScheduler.from_config(_scheduler_config(kwargs)).save_pretrained(str(tmp / "scheduler"))
        src = Path(kwargs["pretrained"])
        if (src / "model_index.json").is_file():
            shutil.copyfile(src / "model_index.json", tmp / "model_index.json")
        (tmp / "ggt_ir_merged.json").write_text(json.dumps(info, indent=2))

    return atomic_dir(output, write)


def _scheduler_config(kwargs: dict) -> dict:
    from diffusers import DDPMScheduler

    from ggt_ir.generative.onestep_sd import SD_SUBFOLDERS
    from ggt_ir.generative.pretrained import load_component

    s = load_component(DDPMScheduler, kwargs["pretrained"], "scheduler", revision=kwargs.get("revision"),
                       allow_download=kwargs.get("allow_download", False), all_subfolders=SD_SUBFOLDERS)
    return s.config


def main(argv: list[str] | None = None) -> int:
    from ggt_ir.config import add_import_argument

    p = argparse.ArgumentParser(prog="ggt-ir merge", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapters", help="an exported adapter folder (experiments/<run>/models/net_g_<iter>)")
    p.add_argument("--output", "-o", required=True, help="folder to write the merged diffusers weights to")
    p.add_argument("--base", help="base model folder or Hub id (default: the one recorded in ggt_ir_adapter.json)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="dtype of the written weights")
    add_import_argument(p)
    args = p.parse_args(argv)
    from ggt_ir.config import OptionsError, import_modules

    try:
        import_modules(args.imports, "--import")
        out = merge_adapters(args.adapters, args.output, args.base, args.dtype)
    except (FileNotFoundError, ValueError, KeyError, OptionsError) as e:
        print(f"ggt-ir merge: error: {e}", file=sys.stderr)
        return 2
    print(f"merged weights written to {out}")
    return 0
