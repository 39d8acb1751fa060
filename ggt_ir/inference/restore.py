"""``ggt-ir restore``: restore one image or a folder of images with any zoo model.

    ggt-ir restore photo.jpg -o out/ --opt options/train/Restormer/restormer_ggt100k.yml --weights net_g.safetensors
    ggt-ir restore lq_dir/ -o out/ --arch NAFNet --arch-kwargs '{"width": 32}' --weights NAFNet.pth --tile 512

The network comes from an option file's ``network_g`` (``--opt``; its ``path.pretrain_network_g`` is
the default ``--weights``) or from ``--arch`` + ``--arch-kwargs``; a generative restorer comes from its
exported adapter folder (``--adapter experiments/<run>/models/net_g_<iter>``: OneStepSD or EditorLoRA,
rebuilt from the base model and options recorded in its ``ggt_ir_adapter.json``). Weights load through
``ggt_ir.archs.weights.load_weights`` (official ``.pth``, Lightning ``.ckpt``, our ``.safetensors``).
Outputs are 8-bit RGB PNGs named after the inputs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ggt_ir.utils.image_io import IMAGE_EXTS


class RestoreError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ggt-ir restore", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    net = p.add_mutually_exclusive_group(required=True)
    net.add_argument("--opt", help="option file whose network_g (and path.pretrain_network_g) to use")
    net.add_argument("--arch", help="architecture name (e.g. Restormer, NAFNet, SwinIR, PromptIR)")
    net.add_argument("--adapter", help="a generative export folder (OneStepSD / EditorLoRA LoRA adapters)")
    p.add_argument("--arch-kwargs", default="{}", help="JSON constructor arguments for --arch")
    p.add_argument("--weights", help="checkpoint (.pth/.ckpt/.safetensors); default: the option file's "
                                     "path.pretrain_network_g")
    p.add_argument("--param-key", default=None, help="auto | params | params_ema | state_dict | none "
                                                     "(default: the option file's path.param_key_g, else auto)")
    p.add_argument("--no-strict", action="store_true", help="load even with missing/unexpected keys (reported)")
    p.add_argument("--tile", type=int, default=0, help="tile size in input pixels; 0 = whole images")
    p.add_argument("--tile-overlap", type=int, default=32)
    p.add_argument("--tile-batch", type=int, default=1, help="tiles per forward pass")
    p.add_argument("--self-ensemble", action="store_true", help="average over the 8 flips/rotations (8x slower)")
    p.add_argument("--half", action="store_true", help="fp16 weights and inputs (CUDA only)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--suffix", default="", help="appended to output file names, e.g. _restormer")
    p.add_argument("--recursive", action="store_true", help="also images in sub-folders (mirrored in --output)")
    g = p.add_argument_group("generative restorers (--adapter)")
    g.add_argument("--prompt", default=None, help="prompt / instruction (default: the one recorded at training)")
    g.add_argument("--vae-tile", type=int, default=None, help="OneStepSD: VAE tile in pixels (0 = whole image)")
    g.add_argument("--latent-tile", type=int, default=None, help="OneStepSD: UNet tile in latent pixels")
    g.add_argument("--color-fix", choices=["none", "adain", "wavelet"], default=None, help="OneStepSD colour fix")
    g.add_argument("--steps", type=int, default=None, help="EditorLoRA: number of sampling steps")
    g.add_argument("--guidance", type=float, default=None, help="EditorLoRA: guidance scale")
    g.add_argument("--seed", type=int, default=0, help="EditorLoRA: sampling seed")
    return p


def list_inputs(path: Path, recursive: bool) -> list[tuple[Path, Path]]:
    """(image, its path relative to the input folder)."""
    if not path.exists():
        raise RestoreError(f"input not found: {path}")
    if path.is_file():
        return [(path, Path(path.name))]
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise RestoreError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {path}"
                           + ("" if recursive else " (use --recursive for sub-folders)"))
    return [(f, f.relative_to(path)) for f in files]


def network_spec(args) -> tuple[dict, str | None, str, bool]:
    """(network_g, weights, param_key, strict) from --opt or --arch."""
    if args.opt:
        from ggt_ir.config import OptionsError, read_yaml_with_includes

        try:
            raw = read_yaml_with_includes(args.opt)
        except OptionsError as e:
            raise RestoreError(str(e)) from None
        net = raw.get("network_g")
        if not isinstance(net, dict) or "type" not in net:
            raise RestoreError(f"{args.opt}: no network_g with a 'type'")
        path = raw.get("path") or {}
        weights = args.weights or path.get("pretrain_network_g")
        key = args.param_key or path.get("param_key_g") or "auto"
        strict = bool(path.get("strict_load_g", True)) and not args.no_strict
        return dict(net), weights, key, strict
    try:
        kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as e:
        raise RestoreError(f"--arch-kwargs is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise RestoreError("--arch-kwargs must be a JSON object, e.g. '{\"width\": 32}'")
    return {"type": args.arch, **kwargs}, args.weights, args.param_key or "auto", not args.no_strict


def build_model(spec: dict, weights: str | None, param_key: str, strict: bool, device, half: bool):
    from ggt_ir.archs import ARCHS, build_network
    from ggt_ir.archs.weights import load_weights

    if spec["type"] not in ARCHS:
        ARCHS.get(spec["type"])  # raises with the known names and a suggestion
    if not weights:
        raise RestoreError("no weights: give --weights (or path.pretrain_network_g in the option file)")
    if not Path(weights).is_file():
        raise RestoreError(f"weights file not found: {weights}")
    try:
        net = build_network(spec)
    except TypeError as e:
        raise RestoreError(f"cannot build {spec['type']} with {spec}: {e}") from None
    report = load_weights(net, weights, param_key, strict=strict)
    net.eval().to(device)
    if half:
        net.half()
    return net, report


def build_generative(args, device):
    """(callable lq -> output, description) for an exported OneStepSD / EditorLoRA adapter folder."""
    folder = Path(args.adapter)
    meta = folder / "ggt_ir_adapter.json"
    if not meta.is_file():
        raise RestoreError(f"--adapter {folder}: no ggt_ir_adapter.json; expected an export folder "
                           "experiments/<run>/models/net_g_<iter> of a OneStepSD or EditorLoRA run")
    kind = json.loads(meta.read_text()).get("network")
    prompts = None if args.prompt is None else [args.prompt]
    if kind == "OneStepSD":
        from ggt_ir.generative.onestep_sd import OneStepSD

        over = {k: v for k, v in (("vae_tile", args.vae_tile), ("latent_tile", args.latent_tile),
                                  ("color_fix", args.color_fix)) if v is not None}
        model = OneStepSD.from_export(folder, **over).eval().to(device)
        return (lambda x: model.restore(x, prompts)), f"OneStepSD adapters from {folder} ({over or 'recorded options'})"
    if kind == "EditorLoRA":
        from ggt_ir.generative.editor import EditorLoRA

        model = EditorLoRA.from_export(folder).eval().to(device)
        kw = {k: v for k, v in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance)) if v is not None}
        return (lambda x: model.restore(x, prompts, seed=args.seed, **kw)), f"EditorLoRA adapters from {folder}"
    raise RestoreError(f"--adapter {folder}: unknown network {kind!r} in ggt_ir_adapter.json")


def resolve_device(name: str, half: bool):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RestoreError("--device cuda: no CUDA device is available")
    if half and device.type != "cuda":
        raise RestoreError("--half needs a CUDA device (fp16 convolutions are slow or missing on CPU)")
    return device


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from ggt_ir.utils.image_io import read_image, to_tensor
    from ggt_ir.inference.tiling import restore
    from ggt_ir.utils.image_io import save_png

    items = list_inputs(Path(args.input), args.recursive)
    device = resolve_device(args.device, args.half)
    if args.adapter:
        if args.half or args.self_ensemble or args.tile:
            raise RestoreError("--half/--self-ensemble/--tile apply to zoo models; generative restorers tile "
                               "with --vae-tile/--latent-tile")
        generate, report = build_generative(args, device)
    else:
        spec, weights, key, strict = network_spec(args)
        net, report = build_model(spec, weights, key, strict, device, args.half)
    print(report, file=sys.stderr)
    out_dir = Path(args.output)
    dtype = torch.float16 if args.half else torch.float32
    for src, rel in tqdm(items, desc="restore", unit="img", file=sys.stderr):
        try:
            x = to_tensor(read_image(src))[None].to(device, dtype)
        except OSError as e:
            raise RestoreError(str(e)) from None
        with torch.inference_mode():
            if args.adapter:
                y = generate(x)
            else:
                y = restore(net, x, args.tile, args.tile_overlap, args.self_ensemble, args.tile_batch)
        save_png(y[0], (out_dir / rel).with_name(rel.stem + args.suffix + ".png"))
    print(f"restored {len(items)} image(s) into {out_dir}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (RestoreError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ggt-ir restore: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
