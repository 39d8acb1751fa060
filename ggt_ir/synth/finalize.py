"""``ggt-ir synth finalize RUN --decisions d.json``: the final dataset after manual verification (QC 3).

For every image of the run's manifest: a manual ``accept`` keeps it with the candidate the reviewer picked
(which may be one the automatic stages rejected); a manual ``reject`` drops it; an undecided image keeps its
automatic decision (``--undecided auto``) or is dropped (``--undecided drop``). Writes, in ``--out`` (default
``RUN/final``; replaced as a whole)::

    <split>/<category>/{LQ,GT,prompt}/<stem>.*    the GGT layout (``ggt-ir shards build`` / PairedFolder read it)
    manifest.jsonl                                 the kept images: manifest record + the manual decision
    stats.json                                     images kept after each stage, per category
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ggt_ir.synth.review import ReviewError, _load_manifest, load_decisions
from ggt_ir.utils.fs import atomic_dir, atomic_write_json, atomic_write_text

STAGES = ("input", "generated", "passed_qc1", "passed_qc2", "reviewed", "manual_accept", "manual_reject",
          "final")


class FinalizeError(ValueError):
    pass


def _stats_row() -> dict:
    return {s: 0 for s in STAGES}


def stats_table(stats: dict) -> str:
    head = "| category | " + " | ".join(s.replace("_", " ") for s in STAGES) + " |\n|---|" + "---:|" * len(STAGES)
    rows = [("all", stats["all"])] + sorted((k, v) for k, v in stats["per_category"].items())
    return head + "\n" + "\n".join(f"| {c} | " + " | ".join(str(s[k]) for k in STAGES) + " |" for c, s in rows)


def finalize(run: str | Path, decisions: str | Path | None = None, *, out: str | Path | None = None,
             undecided: str = "auto", log=print) -> dict:
    run = Path(run)
    try:
        records = _load_manifest(run)
    except ReviewError as e:
        raise FinalizeError(str(e)) from None
    dec_path = Path(decisions) if decisions else run / "review" / "decisions.json"
    if decisions is None and not dec_path.is_file():
        log(f"[finalize] no decisions file ({dec_path}); every image keeps its automatic decision")
        dec = {}
    else:
        try:
            dec = load_decisions(dec_path)
        except ReviewError as e:
            raise FinalizeError(str(e)) from None
    if undecided not in ("auto", "drop"):
        raise FinalizeError(f"--undecided must be auto or drop, got {undecided!r}")
    by_key = {r["key"]: r for r in records}
    unknown = [k for k in dec if k not in by_key]
    if unknown:
        raise FinalizeError(f"{dec_path}: decision for {unknown[0]!r}, which is not an image of {run} "
                            f"({len(unknown)} unknown key(s)); was it made for another run?")
    split = _split_of(run)
    out = Path(out) if out else run / "final"
    stats = {"all": _stats_row(), "per_category": {}}
    kept: list[dict] = []

    def write(tmp: Path) -> None:
        for r in records:
            cat = r.get("category", "unknown")
            rows = [stats["all"], stats["per_category"].setdefault(cat, _stats_row())]
            ok = [c for c in r.get("candidates", []) if c.get("status") == "ok"]
            flags = {"input": True, "generated": bool(ok),
                     "passed_qc1": any(c.get("qc1", {}).get("passed") for c in ok),
                     "passed_qc2": r.get("status") == "accepted"}
            d = dec.get(r["key"])
            flags["reviewed"] = d is not None
            flags["manual_accept"] = bool(d and d["decision"] == "accept")
            flags["manual_reject"] = bool(d and d["decision"] == "reject")
            if d is not None:
                keep, cand_id, how = d["decision"] == "accept", d.get("candidate") or r.get("candidate"), "manual"
            else:
                keep, cand_id, how = (r.get("status") == "accepted" and undecided == "auto"), r.get("candidate"), \
                    f"automatic ({undecided})"
            cand = next((c for c in ok if c["id"] == cand_id), None)
            if keep and cand is None:
                if d is not None and d["decision"] == "accept":
                    raise FinalizeError(f"{dec_path}: {r['key']!r} is accepted with candidate {cand_id!r}, which is "
                                        f"not an image candidate of it (ok: {', '.join(c['id'] for c in ok) or 'none'})")
                keep = False
            flags["final"] = keep
            for row in rows:
                for s, v in flags.items():
                    row[s] += bool(v)
            if not keep:
                continue
            stem = Path(r["lq"]).stem if r.get("lq") else r["key"].replace("/", "__")
            base = tmp / split / cat
            lq_src = run / r["lq"] if r.get("lq") else Path(r["lq_source"].partition("#")[0])
            if r.get("lq") is None and "#" in r.get("lq_source", ""):  # shards input, auto-rejected: the preview
                lq_src = run / r["lq_preview"]
            lq_dst = base / "LQ" / f"{stem}{lq_src.suffix}"
            lq_dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lq_src, lq_dst)
            hq_src = run / (cand.get("processed_path") or cand["path"])
            (base / "GT").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hq_src, base / "GT" / f"{stem}.png")
            (base / "prompt").mkdir(parents=True, exist_ok=True)
            (base / "prompt" / f"{stem}.txt").write_text(cand.get("prompt", r.get("prompt", "")) + "\n")
            kept.append({**{k: v for k, v in r.items() if k != "candidates"},
                         "lq": str(lq_dst.relative_to(tmp)), "hq": str((base / "GT" / f"{stem}.png").relative_to(tmp)),
                         "generator": cand["generator"], "seed": cand.get("seed"), "candidate": cand["id"],
                         "prompt": cand.get("prompt", r.get("prompt")), "decision": how,
                         "manual": d, "chosen_candidate": cand})
        atomic_write_text(tmp / "manifest.jsonl", "".join(json.dumps(k, ensure_ascii=False) + "\n" for k in kept))
        atomic_write_json(tmp / "stats.json", {"run": str(run), "decisions": str(dec_path) if dec else None,
                                               "undecided": undecided, "stages": list(STAGES), **stats})

    atomic_dir(out, write)
    log(f"[finalize] {stats['all']['final']} of {len(records)} images kept -> {out}")
    log(stats_table(stats))
    return stats


def _split_of(run: Path) -> str:
    opts = run / "options.yml"
    if opts.is_file():
        import yaml

        try:
            return (yaml.safe_load(opts.read_text()) or {}).get("output", {}).get("split", "train")
        except yaml.YAMLError:
            pass
    return "train"
