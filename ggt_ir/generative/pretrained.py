"""Load pretrained diffusers components from a local folder or a Hub id -- never downloading silently.

``pretrained`` is either a folder in diffusers layout (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, or ``transformer/`` ... for editors) or a Hub id such as
``stabilityai/stable-diffusion-2-1-base``. A Hub id is resolved from the local Hugging Face cache
only (``local_files_only=True``) unless ``allow_download`` is set. When the files are absent the
error names the id and revision and says how to pre-download them or point at a folder.
"""
from __future__ import annotations

import os
from pathlib import Path


class PretrainedNotFoundError(FileNotFoundError):
    """The pretrained weights are not on this machine (and downloading is off or impossible)."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def missing_message(name: str, revision: str | None, component: str, subfolders: list[str], cause: str) -> str:
    rev = revision or "main"
    return (
        f"pretrained weights {name!r} (revision {rev}) are not on this machine: {component} could not be loaded "
        f"({cause}). ggt-ir never downloads weights silently"
        + (" and HF_HUB_OFFLINE=1 is set" if _offline() else "")
        + f". Either pre-download them on a machine with network:\n"
        f"    hf download {name} --revision {rev} --local-dir /path/to/{name.split('/')[-1]}\n"
        f"  (older huggingface_hub: huggingface-cli download {name} --revision {rev} --local-dir ...)\n"
        f"and set network_g.pretrained: /path/to/{name.split('/')[-1]} (a folder with "
        + ", ".join(f"{s}/" for s in subfolders)
        + "); or set network_g.allow_download: true to let diffusers download it into the Hugging Face cache "
        "(needs network and HF_HUB_OFFLINE unset)."
    )


def resolve(name: str, subfolders: list[str], revision: str | None = None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is_local_folder). Checks a local folder's layout up front."""
    p = Path(name).expanduser()
    if p.is_dir():
        missing = [s for s in subfolders if not (p / s).is_dir()]
        if missing:
            raise PretrainedNotFoundError(
                f"{p}: not a complete diffusers folder, missing {', '.join(s + '/' for s in missing)} "
                f"(expected {', '.join(s + '/' for s in subfolders)}; write one with pipeline.save_pretrained(...) "
                "or `hf download <id> --local-dir <folder>`)")
        return str(p), True
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise PretrainedNotFoundError(f"pretrained folder not found: {name} (network_g.pretrained must be a "
                                      "folder in diffusers layout or a Hub id such as "
                                      "stabilityai/stable-diffusion-2-1-base)")
    return name, False


def load_component(cls, name: str, subfolder: str, *, revision: str | None = None, variant: str | None = None,
                   allow_download: bool = False, torch_dtype=None, all_subfolders: list[str] | None = None, **kw):
    """``cls.from_pretrained(name, subfolder=...)`` with a clear error when the weights are absent."""
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
        return cls.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        if local:
            if variant and "variant" in str(e):
                raise PretrainedNotFoundError(f"{src}/{subfolder}: no weights with variant {variant!r} ({e}); "
                                              "remove network_g.variant or download that variant") from e
            raise
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PretrainedNotFoundError(missing_message(name, revision, f"{cls.__name__} ({subfolder}/)",
                                                      all_subfolders, text)) from e
