"""Prompts for the generators: fixed per category, the input's own, or adaptive (a VLM writes one per LQ image).

Adaptive prompts are cached by content: ``<cache_dir>/<sha256(VLM identity, meta-prompt, category, LQ
bytes)>.json``. A rerun, a resumed run, or another run sharing the cache (``ggt-ir synth compare`` arms) asks the
VLM once per image. Every prompt is recorded in the manifest with where it came from.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np

from ggt_ir.utils.fs import atomic_write_json


def clean_prompt(text: str, max_chars: int) -> str:
    """A VLM reply as an instruction: no code fences, quotes, 'Instruction:' labels or line breaks; cut at a
    sentence end before ``max_chars`` when possible."""
    t = re.sub(r"```[a-zA-Z]*", " ", text or "")
    t = re.sub(r"^\s*(instruction|prompt|edit instruction)\s*:\s*", "", t.strip(), flags=re.IGNORECASE)
    t = " ".join(t.split()).strip().strip("\"'“”").strip()
    if len(t) > max_chars:
        cut = t[:max_chars]
        end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
        t = cut[: end + 1] if end > max_chars // 2 else cut.rstrip()
    return t


def usable(text: str) -> bool:
    """At least two words of letters (a random or broken VLM can answer with byte soup)."""
    return len(re.findall(r"[A-Za-z]{2,}", text or "")) >= 2


class Prompter:
    def __init__(self, opts, vlm=None, cache_dir: str | Path | None = None, log=print):
        self.opts, self.vlm, self.log = opts, vlm, log
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._meta_sha = hashlib.sha256(opts.meta_prompt.encode()).hexdigest()[:16]

    def fixed_for(self, category: str) -> str:
        f = self.opts.fixed
        p = f.get(category) or f.get("default")
        if not p:
            raise KeyError(f"no fixed prompt for category {category!r}: add prompting.fixed.{category} or "
                           "prompting.fixed.default (options/synth/_base.yml ships one per GGT category)")
        return p

    def cache_key(self, lq_sha: str, category: str) -> str:
        ident = json.dumps({"vlm": self.vlm.identity(), "meta": self.opts.meta_prompt, "cat": category,
                            "lq": lq_sha}, sort_keys=True, default=str)
        return hashlib.sha256(ident.encode()).hexdigest()

    def prompt_for(self, item, lq: np.ndarray, lq_sha: str, mode: str | None = None) -> tuple[str, dict]:
        """(prompt, info: source, cache hit, VLM reply, cost, time)."""
        mode = mode or self.opts.mode
        fixed = self.fixed_for(item.category)
        if mode == "fixed":
            return fixed, {"source": "fixed"}
        if mode == "input":
            return (item.prompt, {"source": "input"}) if item.prompt.strip() else (fixed, {"source": "fixed",
                                                                                          "note": "no input prompt"})
        key = self.cache_key(lq_sha, item.category)
        path = self.cache_dir / f"{key}.json" if self.cache_dir else None
        if path is not None and path.is_file():
            try:
                cached = json.loads(path.read_text())
                return cached["prompt"], {"source": cached["source"], "cache_hit": True, "vlm": cached["vlm"],
                                          "cache": path.name, "reply": cached.get("reply", ""), "cost_usd": 0.0}
            except (json.JSONDecodeError, KeyError):
                pass  # a damaged cache entry is simply asked again
        text = self.opts.meta_prompt.replace("{category}", item.category).replace("{fixed_prompt}", fixed)
        t0 = time.monotonic()
        try:
            reply = self.vlm.chat([lq], text, seed=0)
        except Exception as e:  # noqa: BLE001 - the fixed prompt stands in; the reason is recorded
            return fixed, {"source": "fixed", "note": f"adaptive prompt failed: {type(e).__name__}: "
                                                      f"{str(e).splitlines()[0][:200]}",
                           "vlm": self.vlm.name}
        prompt = clean_prompt(reply.text, self.opts.max_chars)
        source = "adaptive"
        if not usable(prompt):
            prompt, source = fixed, "fixed (adaptive reply unusable)"
        entry = {"prompt": prompt, "source": source, "vlm": self.vlm.name, "vlm_identity": self.vlm.identity(),
                 "meta_prompt_sha": self._meta_sha, "category": item.category, "lq_sha256": lq_sha,
                 "reply": reply.text[:2000], "cost_usd": reply.cost_usd, "elapsed_s": round(time.monotonic() - t0, 3),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if path is not None:
            atomic_write_json(path, entry)
        return prompt, {"source": source, "cache_hit": False, "vlm": self.vlm.name, "cache": path.name if path else None,
                        "reply": reply.text[:500], "cost_usd": reply.cost_usd, "elapsed_s": entry["elapsed_s"]}
