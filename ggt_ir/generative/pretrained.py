"""Load pretrained diffusers components from a local folder or a Hub id -- never downloading silently.

``pretrained`` is either a folder in diffusers layout (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, or ``transformer/`` ... for editors) or a Hub id such as
``stabilityai/stable-diffusion-2-1-base``. A Hub id is resolved from the local Hugging Face cache
only (``local_files_only=True``) unless ``allow_download`` is set. A name is a folder when it starts with
``/ ./ ../ ~``, has more than one ``/``, starts with a folder that exists here (``pretrained/...``), or ends in
one of the project's default folder names (:data:`KNOWN_BASES`, e.g. ``pretrained/sd21-base``).

Every error is one line naming what is missing and how to get it (the ``hf download ... --local-dir``
command with the right Hub id). :func:`preflight` checks every file a training run will read -- all
components, tokenizers, schedulers -- before anything is loaded, and lists everything missing at once.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

# default local folder name (as in the recipes and docs) -> the Hub id it is downloaded from
KNOWN_BASES = {
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "flux1-kontext-dev": "black-forest-labs/FLUX.1-Kontext-dev",
    "qwen-image-edit": "Qwen/Qwen-Image-Edit",
}

# what a sub-folder must hold to load: any one of the files in each group
_NETWORK_FILES = ("diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model{v}.bin",
                  "diffusion_pytorch_model{v}.safetensors.index.json", "model{v}.safetensors", "pytorch_model{v}.bin",
                  "model{v}.safetensors.index.json", "diffusion_pytorch_model.safetensors.index{v}.json")
_FILES = {
    "scheduler": [("scheduler_config.json",)],
    "tokenizer": [("tokenizer.json", "vocab.json", "spiece.model", "tokenizer_config.json")],
    "processor": [("preprocessor_config.json", "processor_config.json")],
}


class PretrainedNotFoundError(FileNotFoundError):
    """The pretrained weights are not on this machine (and downloading is off or impossible)."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_id_for(name: str) -> str | None:
    """The Hub id a name refers to: itself for a Hub id, the known id for a default folder, else None."""
    base = Path(name).name
    if base in KNOWN_BASES:
        return KNOWN_BASES[base]
    return None if looks_local(name) else name


def looks_local(name: str) -> bool:
    """True when ``name`` is meant as a local folder (see the module docstring), even if it does not exist."""
    if name.startswith(("/", "./", "../", "~")) or name.count("/") != 1 or Path(name).expanduser().exists():
        return True  # a Hub id of a pipeline is always owner/name
    first = name.split("/")[0]
    return Path(first).is_dir() or Path(name).name in KNOWN_BASES or first == "pretrained"


def download_hint(name: str, revision: str | None = None) -> str:
    """``hf download <id> --local-dir <folder>`` for ``name`` (the Hub id it maps to), one line."""
    hub = hub_id_for(name)
    rev = f" --revision {revision}" if revision and revision != "main" else ""
    if hub is None:
        return "write the folder with pipeline.save_pretrained(...) or download it with `hf download <hub id> --local-dir <folder>`"
    folder = name if looks_local(name) else f"pretrained/{Path(hub).name.lower()}"
    return (f"download it on a machine with network: `hf download {hub}{rev} --local-dir {folder}` and set "
            f"network_g.pretrained: {folder}")


def missing_message(name: str, revision: str | None, component: str, subfolders: list[str], cause: str) -> str:
    rev = revision or "main"
    return (f"pretrained weights {name!r} (revision {rev}) are not on this machine: {component} could not be loaded "
            f"({cause}); ggt-ir never downloads weights silently"
            + (" and HF_HUB_OFFLINE=1 is set" if _offline() else "")
            + f". {download_hint(name, revision)} (a folder with {', '.join(s + '/' for s in subfolders)}), "
            "or set network_g.allow_download: true (needs network and HF_HUB_OFFLINE unset)")


def resolve(name: str, subfolders: list[str], revision: str | None = None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is_local_folder). Checks a local folder's layout up front."""
    p = Path(name).expanduser()
    if p.is_dir():
        missing = [s for s in subfolders if not (p / s).is_dir()]
        if missing:
            raise PretrainedNotFoundError(
                f"{p}: not a complete diffusers folder, missing {', '.join(s + '/' for s in missing)} "
                f"(expected {', '.join(s + '/' for s in subfolders)}); {download_hint(name, revision)}")
        return str(p), True
    if looks_local(name):
        raise PretrainedNotFoundError(
            f"network_g.pretrained: folder not found: {name} (from {Path.cwd()}); {download_hint(name, revision)}, "
            "or set network_g.pretrained to a Hub id such as stabilityai/stable-diffusion-2-1-base")
    return name, False


def load_component(cls, name: str, subfolder: str, *, revision: str | None = None, variant: str | None = None,
                   allow_download: bool = False, torch_dtype=None, all_subfolders: list[str] | None = None, **kw):
    """``cls.from_pretrained(name, subfolder=...)`` with a one-line error when the weights are absent."""
    all_subfolders = all_subfolders or [subfolder]
    src, local = resolve(name, all_subfolders, revision)
    kwargs = dict(subfolder=subfolder, **kw)
    if not local:
        kwargs["revision"] = revision
        kwargs["local_files_only"] = not allow_download or _offline()
    if variant:
        kwargs["variant"] = variant
    if torch_dtype is not None:  # transformers 5 calls it dtype
        kwargs["dtype" if cls.__module__.startswith("transformers") else "torch_dtype"] = torch_dtype
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return cls.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if local:
            if variant and "variant" in str(e):
                raise PretrainedNotFoundError(f"{src}/{subfolder}: no weights with variant {variant!r} ({text}); "
                                              "remove network_g.variant or download that variant") from None
            raise PretrainedNotFoundError(f"{src}/{subfolder}: {cls.__name__} could not be loaded ({text}); "
                                          f"{download_hint(name, revision)}") from None
        raise PretrainedNotFoundError(missing_message(name, revision, f"{cls.__name__} ({subfolder}/)",
                                                      all_subfolders, text)) from None


def load_component_on_meta(cls, name: str, subfolder: str, *, revision: str | None = None, variant: str | None = None,
                           allow_download: bool = False, torch_dtype=None, all_subfolders: list[str] | None = None):
    """The component built from its ``config.json`` with its parameters on ``meta``: no weight is read (the ranks > 0 of
    FSDP's RAM-efficient loading, which receive their shards from rank 0). A diffusers model class."""
    from accelerate import init_empty_weights

    src, local = resolve(name, all_subfolders or [subfolder], revision)
    kwargs = {} if local else {"revision": revision, "local_files_only": not allow_download or _offline()}
    try:
        config = cls.load_config(src, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PretrainedNotFoundError(f"{name}/{subfolder}: config.json could not be read ({text}); "
                                      f"{download_hint(name, revision)}") from None
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers and other tensors computed
        model = cls.from_config(config)
    return model.to(torch_dtype) if torch_dtype is not None else model


# ---------------------------------------------------------------------------------------------- pre-flight
def _cached_snapshot(name: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (several error kinds)
        return None


def _missing_in(folder: Path, sub: str, kind: str, variant: str | None) -> str | None:
    """Why ``folder/sub`` cannot load (None when it can): no folder, no config, no weights, missing shards."""
    d = folder / sub
    if not d.is_dir():
        return f"{d}/ (no folder)"
    if kind == "network":
        if not (d / "config.json").is_file():
            return f"{d}/config.json"
        v = f".{variant}" if variant else ""
        names = [f.format(v=v) for f in _NETWORK_FILES]
        found = [n for n in names if (d / n).is_file()]
        if not found:
            return f"{d}/ has no weights (expected {names[0]} or a sharded index)"
        index = next((n for n in found if n.endswith(".json")), None)
        if index and not any(n.endswith((".safetensors", ".bin")) for n in found):
            shards = sorted(set(json.loads((d / index).read_text()).get("weight_map", {}).values()))
            gone = [s for s in shards if not (d / s).is_file()]
            if gone:
                return f"{d}/{gone[0]} (+{len(gone) - 1} more of {len(shards)} shards)" if len(gone) > 1 else f"{d}/{gone[0]}"
        return None
    for group in _FILES[kind]:
        if not any((d / f).is_file() for f in group):
            return f"{d}/{group[0]}"
    return None


def preflight(name: str, components: dict[str, str], *, revision: str | None = None, variant: str | None = None,
              allow_download: bool = False) -> list[str]:
    """Every file of ``components`` ({sub-folder: "network" | "tokenizer" | "scheduler" | "processor"}) that is
    missing for ``name``; [] when all are there (or a Hub id may be downloaded)."""
    p = Path(name).expanduser()
    if not p.is_dir():
        if looks_local(name):
            return [f"{name}/ (no such folder; {download_hint(name, revision)})"]
        snap = _cached_snapshot(name, revision)
        if snap is None:
            if allow_download and not _offline():
                return []
            return [f"{name} (Hub id, revision {revision or 'main'}: not in the local Hugging Face cache; "
                    f"{download_hint(name, revision)})"]
        p = snap
    out = []
    for sub, kind in components.items():
        why = _missing_in(p, sub, kind, variant if kind == "network" else None)
        if why:
            out.append(why)
    return out


def preflight_error(missing: list[str], what: str = "training") -> str:
    """One line listing everything :func:`preflight` (and other checks) found missing."""
    return (f"{len(missing)} {what} weight file(s) missing, nothing was loaded: " + "; ".join(missing)
            + " (see docs/generative.md, 'Pretrained weights')")
