"""``ggt-ir restore``: restore one image or a folder of images with any model.

    ggt-ir restore photo.jpg -o out/ --run experiments/restormer_ggt100k
    ggt-ir restore photo.jpg -o out/ --opt options/train/Restormer/restormer_ggt100k.yml --weights net_g.safetensors
    ggt-ir restore lq_dir/ -o out/ --arch NAFNet --arch-kwargs '{"width": 32}' --weights NAFNet.pth --tile 512
    ggt-ir restore lq_dir/ -o out/ --adapter experiments/osediff/models/net_g_5000 --vae-tile 512

The model comes from a run folder (``--run``: its options and newest export), an option file's ``network_g``
(``--opt``; its ``path.pretrain_network_g`` is the default ``--weights``), ``--arch`` + ``--arch-kwargs``, or an
exported generative adapter folder (``--adapter``); all go through ``ggt_ir.inference.loader.load_restorer``.

Outputs are PNGs named after the inputs: 8-bit, or 16-bit for 16-bit inputs; an alpha channel is carried
over unchanged; gray inputs give gray outputs (the network sees RGB). Two inputs with the same stem
(``x.png``, ``x.jpg``) are written as ``x_png.png`` and ``x_jpg.png``. A file that cannot be read or restored
is reported by name and skipped; the others are restored (exit code 1 when any was skipped).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from ggt_ir.config import add_import_argument
from ggt_ir.utils.image_io import IMAGE_EXTS


class RestoreError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ggt-ir restore", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    add_import_argument(p)
    net = p.add_mutually_exclusive_group(required=True)
    net.add_argument("--run", help="a training run folder (experiments/<name>): its network and newest export")
    net.add_argument("--opt", help="option file whose network_g (and path.pretrain_network_g) to use")
    net.add_argument("--arch", help="architecture name (e.g. Restormer, NAFNet, SwinIR, PromptIR)")
    net.add_argument("--adapter", help="a generative export folder (OneStepSD / EditorLoRA LoRA adapters)")
    p.add_argument("--arch-kwargs", default="{}", help="JSON constructor arguments for --arch")
    p.add_argument("--weights", help="checkpoint (.pth/.ckpt/.safetensors, or an adapter folder); default: the "
                                     "run's newest export or the option file's path.pretrain_network_g")
    p.add_argument("--param-key", default=None, help="auto | params | params_ema | state_dict | none "
                                                     "(default: the option file's path.param_key_g, else auto)")
    p.add_argument("--no-strict", action="store_true", help="load even with missing/unexpected keys (reported)")
    p.add_argument("--tile", type=int, default=None, help="tile size in input pixels; 0 = whole images")
    p.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in input pixels (default 32)")
    p.add_argument("--tile-batch", type=int, default=None, help="tiles per forward pass")
    p.add_argument("--self-ensemble", action="store_true", default=None,
                   help="average over the 8 flips/rotations (8x slower)")
    p.add_argument("--half", action="store_true", default=None, help="fp16 weights and inputs (CUDA only)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--suffix", default="", help="appended to output file names, e.g. _restormer")
    p.add_argument("--recursive", action="store_true", help="also images in sub-folders (mirrored in --output)")
    g = p.add_argument_group("generative restorers (--adapter, or a generative --run)")
    g.add_argument("--prompt", default=None, help="prompt / instruction (default: the one recorded at training)")
    g.add_argument("--vae-tile", type=int, default=None, help="OneStepSD: VAE tile in pixels (0 = whole image)")
    g.add_argument("--latent-tile", type=int, default=None, help="OneStepSD: UNet tile in latent pixels")
    g.add_argument("--color-fix", choices=["none", "adain", "wavelet"], default=None, help="OneStepSD colour fix")
    g.add_argument("--steps", type=int, default=None, help="EditorLoRA: number of sampling steps")
    g.add_argument("--guidance", type=float, default=None, help="EditorLoRA: guidance scale")
    g.add_argument("--seed", type=int, default=None, help="EditorLoRA: sampling seed")
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


def output_names(items: list[tuple[Path, Path]], suffix: str) -> list[Path]:
    """Relative output paths; inputs that share a folder and a stem keep their extension in the name."""
    stems = Counter((rel.parent, rel.stem) for _, rel in items)
    out = []
    for _, rel in items:
        stem = rel.stem + (f"_{rel.suffix[1:].lower()}" if stems[(rel.parent, rel.stem)] > 1 else "")
        out.append(rel.with_name(stem + suffix + ".png"))
    return out


def load_from_args(args):
    from ggt_ir.inference.loader import load_restorer

    overrides = {k: v for k, v in (("vae_tile", args.vae_tile), ("latent_tile", args.latent_tile),
                                   ("color_fix", args.color_fix), ("num_inference_steps", args.steps),
                                   ("guidance_scale", args.guidance), ("inference_seed", args.seed)) if v is not None}
    source, network_g = args.run or args.opt or args.adapter, None
    if args.arch:
        try:
            kwargs = json.loads(args.arch_kwargs)
        except json.JSONDecodeError as e:
            raise RestoreError(f"--arch-kwargs is not valid JSON: {e}") from None
        if not isinstance(kwargs, dict):
            raise RestoreError("--arch-kwargs must be a JSON object, e.g. '{\"width\": 32}'")
        network_g = {"type": args.arch, **kwargs}
    if args.adapter and not Path(args.adapter, "ggt_ir_adapter.json").is_file():
        raise RestoreError(f"--adapter {args.adapter}: no ggt_ir_adapter.json; expected an export folder "
                           "experiments/<run>/models/net_g_<iter> of a OneStepSD or EditorLoRA run")
    return load_restorer(source, args.weights, network_g=network_g, overrides=overrides or None,
                         param_key=args.param_key, strict=False if args.no_strict else None, device=args.device,
                         require_weights=True, tile=args.tile, tile_overlap=args.tile_overlap,
                         tile_batch=args.tile_batch, self_ensemble=args.self_ensemble, half=args.half,
                         prompt=args.prompt)


def run(args) -> int:
    import torch

    from ggt_ir.utils.image_io import read_image_file, to_tensor, write_image_file

    items = list_inputs(Path(args.input), args.recursive)
    if args.half and args.device == "cpu":
        raise RestoreError("--half needs a CUDA device (fp16 convolutions are slow or missing on CPU)")
    restorer = load_from_args(args)
    print(restorer.info.get("load_report") or f"{restorer.info['network_g']['type']} from "
          f"{restorer.info.get('checkpoint')}", file=sys.stderr)
    out_dir = Path(args.output)
    failed: list[str] = []
    from ggt_ir.utils.progress import progress

    bar = progress(list(zip(items, output_names(items, args.suffix))), desc="restore", unit="img", file=sys.stderr)
    for (src, _), rel_out in bar:
        try:
            f = read_image_file(src)
            y = restorer.restore(to_tensor(f.rgb)[None])
            write_image_file(out_dir / rel_out, y[0].permute(1, 2, 0).cpu().numpy(), f.alpha, f.bit_depth, f.gray)
        except (OSError, RuntimeError, ValueError) as e:  # one bad file must not stop the folder
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            failed.append(msg if str(src) in msg else f"{src}: {msg}")
            bar.write(f"ggt-ir restore: skipped {failed[-1]}", file=sys.stderr)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    bar.close()
    print(f"restored {len(items) - len(failed)} of {len(items)} image(s) into {out_dir}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} skipped:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    from ggt_ir.config import import_modules
    from ggt_ir.inference.loader import RestorerError

    args = build_parser().parse_args(argv)
    try:
        import_modules(args.imports, "--import")
        return run(args)
    except (RestoreError, RestorerError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ggt-ir restore: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
