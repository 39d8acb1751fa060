"""The synthesis run: LQ images -> prompts -> candidates -> QC 1 -> QC 2 -> a GGT dataset + manifest.

Run folder (``<output.root>/<name>/``)::

    options.yml, commands.txt          the resolved options; every command that started or resumed the run
    work/<stem>/<cand>.png|.json       every candidate as generated (+ .qc.png when QC 1 resized / re-aligned it)
    prompts/<hash>.json                adaptive prompts (content-addressed cache)
    manifest/rank-<r>.jsonl            one line per finished image, appended by process r
    manifest.jsonl, summary.json       merged at the end (sorted by key), statistics per stage and category
    dataset/<split>/<category>/{LQ,GT,prompt}/<stem>.*   the pairs that passed QC 1 and QC 2
    logs/api-rank<r>.jsonl             API requests and responses (no key, no image data)

**Resume.** A line in ``manifest/`` marks an image done; it is written after the image's files. A rerun
(after a kill, a crash, a preemption) skips done images whose recorded configuration matches, and reuses
every candidate already on disk with the same generator settings, prompt and seed (an API call is never paid
twice). A half-written last line is ignored and cut off before appending.

**Processes.** Under ``accelerate launch`` each process takes every ``world_size``-th image that is not done;
the processes share nothing but barriers at the start and the end, where process 0 merges the manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ggt_ir.config import plain_options
from ggt_ir.synth.options import SynthOptions
from ggt_ir.utils.fs import atomic_write, atomic_write_json, atomic_write_text


class SynthError(RuntimeError):
    """A run cannot go on (bad input, a generator or VLM that cannot be built); one line."""


# --------------------------------------------------------------------------- manifest files
def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(complete records, byte length of the complete part). A last line without its newline is partial."""
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out, end


def read_records(run_dir: Path) -> dict[str, dict]:
    """The newest record of every key across ``manifest/rank-*.jsonl``."""
    best: dict[str, dict] = {}
    for f in sorted((run_dir / "manifest").glob("rank-*.jsonl")):
        for rec in read_jsonl(f)[0]:
            k = rec.get("key")
            if k is not None and (k not in best or rec.get("finished_at", 0) >= best[k].get("finished_at", 0)):
                best[k] = rec
    return best


class ManifestWriter:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _, end = read_jsonl(path)
        if path.is_file() and path.stat().st_size != end:  # a partial line from a killed writer
            with open(path, "r+b") as f:
                f.truncate(end)
        self._lock = threading.Lock()

    def append(self, rec: dict) -> None:
        line = (json.dumps(rec, ensure_ascii=False, default=_json_default) + "\n").encode()
        with self._lock, open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# --------------------------------------------------------------------------- configuration fingerprint
def config_fingerprint(opt: SynthOptions) -> str:
    """What decides an image's outcome; a done image whose record has another fingerprint is processed again
    (its candidates come from the cache when their own settings did not change)."""
    from ggt_ir.synth.generators.base import output_options

    gens = [output_options(g) | {"name": g.name, "candidates": g.candidates} for g in opt.generators]
    p = opt.prompting
    vlm = output_options(p.vlm) if p.vlm is not None else None
    qv = opt.qc.vlm
    judge = output_options(qv.vlm) if qv.vlm is not None else None
    blob = {"generators": gens, "candidates": plain_options(opt.candidates), "prompting": {
        "mode": p.mode, "fixed": p.fixed, "meta": p.meta_prompt, "vlm": vlm, "max_chars": p.max_chars},
        "qc_metrics": plain_options(opt.qc.metrics), "qc_vlm": {**plain_options(qv), "vlm": judge}, "split": opt.output.split}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- progress
def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """``[synth r0] 12/48 (25%) | 1.92 s/img | ETA 0:01:09 | cost $0.804 (~$3.22 for 48)``; API cost is what
    this run paid (cached candidates are free)."""

    def __init__(self, total: int, rank: int, every: int, log, show_cost: bool):
        self.total, self.rank, self.every, self.log, self.show_cost = total, rank, max(1, every), log, show_cost
        self.done, self.cost, self.t0 = 0, 0.0, time.monotonic()
        self._lock = threading.Lock()

    def step(self, cost: float, key: str, status: str) -> None:
        with self._lock:
            self.done += 1
            self.cost += cost
            if self.done % self.every and self.done != self.total:
                return
            el = time.monotonic() - self.t0
            rate = el / self.done
            line = (f"[synth r{self.rank}] {self.done}/{self.total} ({100 * self.done / max(1, self.total):.0f}%) | "
                    f"{rate:.2f} s/img | ETA {_fmt_time(rate * (self.total - self.done))}")
            if self.show_cost:
                line += f" | cost ${self.cost:.3f} (~${self.cost / self.done * self.total:.2f} for {self.total})"
            self.log(f"{line} | {key}: {status}")


# --------------------------------------------------------------------------- the run
def write_png(path: Path, img: np.ndarray) -> Path:
    """float RGB [0, 1] -> an 8-bit PNG, written atomically (a killed run never leaves half an image)."""
    from ggt_ir.utils.image_io import save_png

    u8 = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return atomic_write(path, lambda tmp: save_png(u8, tmp))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class SynthRun:
    """One run. ``resources`` (a dict) keeps built generators, VLMs and the QC-1 metrics between runs of one
    process (``compare`` arms share them: a 20B editor is loaded once, not once per prompting mode)."""

    def __init__(self, opt: SynthOptions, state, log=print, command: str = "", resources: dict | None = None):
        self.opt, self.state, self.log = opt, state, log
        self.resources = resources if resources is not None else {}
        self.rank, self.world = state.process_index, state.num_processes
        self.run_dir = opt.run_dir
        self.fingerprint = config_fingerprint(opt)
        self.command = command
        self.generators = []
        self.prompter = None
        self.qc1 = None
        self.judge_vlm = None
        self._gen_locks: dict[str, threading.Lock] = {}
        self._qc_lock = threading.Lock()

    # -- building (only on processes with work)
    def _ctx(self):
        from ggt_ir.synth.generators.base import GenContext

        api_log = self.run_dir / "logs" / f"api-rank{self.rank}.jsonl" if self.opt.runtime.api_log else None
        return GenContext(device=str(self.state.device), run_dir=self.run_dir, rank=self.rank, api_log=api_log,
                          log=self.log)

    def build(self, need_vlm_prompt: bool) -> None:
        from ggt_ir.synth import GENERATORS, VLMS
        from ggt_ir.synth.prompting import Prompter
        from ggt_ir.synth.qc_metrics import MetricQC

        ctx = self._ctx()
        res = self.resources
        for g in self.opt.generators:
            rkey = ("generator", json.dumps(plain_options(g), sort_keys=True, default=str))
            if rkey not in res:
                try:
                    res[rkey] = GENERATORS.get(g.type)(g, ctx)
                except Exception as e:
                    raise SynthError(f"generator {g.name!r} ({g.type}): "
                                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
            gen = res[rkey]
            self.generators.append(gen)
            self._gen_locks[gen.name] = threading.Lock()
        p = self.opt.prompting
        prompt_vlm = None
        if need_vlm_prompt:
            prompt_vlm = self._vlm(p.vlm, "prompting.vlm", VLMS, ctx)
        self.prompter = Prompter(p, prompt_vlm, p.cache_dir or self.run_dir / "prompts", log=self.log)
        qv = self.opt.qc.vlm
        if qv.enabled:
            block = qv.vlm or p.vlm
            self.judge_vlm = prompt_vlm if (qv.vlm is None and prompt_vlm is not None) else \
                self._vlm(block, "qc.vlm.vlm" if qv.vlm is not None else "prompting.vlm", VLMS, ctx)
        if self.opt.qc.metrics.enabled:
            rkey = ("qc1", json.dumps(plain_options(self.opt.qc.metrics), sort_keys=True, default=str))
            if rkey not in res:
                res[rkey] = MetricQC(self.opt.qc.metrics, device=str(self.state.device), log=self.log,
                                     src=self.opt.source_file or "options")
            self.qc1 = res[rkey]

    def _vlm(self, block, where, VLMS, ctx):
        rkey = ("vlm", json.dumps(plain_options(block), sort_keys=True, default=str))
        if rkey not in self.resources:
            try:
                self.resources[rkey] = VLMS.get(block.type)(block, ctx)
            except Exception as e:
                raise SynthError(f"{where} ({block.type}): "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        return self.resources[rkey]

    # -- one candidate
    def _candidate(self, item, lq: np.ndarray, gen, seed: int, prompt: str, cid: str, attempt: int,
                   parent: str | None = None) -> tuple[dict, np.ndarray | None]:
        from ggt_ir.synth.http import APIError, GenerationRefused
        from ggt_ir.utils.image_io import read_image

        work = self.run_dir / "work" / item.flat
        png, meta_file = work / f"{cid}.png", work / f"{cid}.json"
        fp = gen.fingerprint(prompt, seed)
        c = {"id": cid, "generator": gen.name, "type": gen.opts.type, "seed": seed, "seeded": gen.seeded,
             "prompt": prompt, "attempt": attempt, "fingerprint": fp}
        if parent:
            c["regenerated_from"] = parent
        if meta_file.is_file():
            try:
                cached = json.loads(meta_file.read_text())
            except json.JSONDecodeError:
                cached = {}
            if cached.get("fingerprint") == fp and (cached.get("status") != "ok" or png.is_file()):
                c.update({k: cached[k] for k in ("status", "error", "cost_usd", "time_s", "meta", "path")
                          if k in cached})
                c["cached"] = True
                img = read_image(png) if c.get("status") == "ok" else None
                return c, img
        t0 = time.monotonic()
        img = None
        try:
            if gen.kind == "local":
                with self._gen_locks[gen.name]:
                    res = gen.generate(lq, prompt, seed)
            else:
                res = gen.generate(lq, prompt, seed)
            img = np.clip(res.image, 0, 1).astype(np.float32)
            c.update(status="ok", cost_usd=float(res.cost_usd), meta=res.meta,
                     expected_aspect=res.expected_aspect, path=str(png.relative_to(self.run_dir)))
            write_png(png, img)
        except GenerationRefused as e:
            c.update(status="refused", error=str(e), cost_usd=float(getattr(e, "cost_usd", 0.0)),
                     meta=getattr(e, "meta", {}))
        except (APIError, OSError, ValueError, RuntimeError) as e:
            if self.opt.runtime.fail_fast:
                raise SynthError(f"{item.key}: {e}") from e
            c.update(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                     cost_usd=0.0)
        c["time_s"] = round(time.monotonic() - t0, 3)
        c["cost_this_run"] = c.get("cost_usd", 0.0)
        if c["status"] in ("ok", "refused"):  # errors are retried on resume; answers are kept
            atomic_write_json(meta_file, {k: c[k] for k in ("id", "generator", "type", "seed", "prompt", "fingerprint",
                                                            "status", "error", "cost_usd", "time_s", "meta", "path",
                                                            "expected_aspect") if k in c})
        return c, img

    def _qc1(self, item, lq, lq_nr, c: dict, img) -> np.ndarray | None:
        """Runs QC 1 on one candidate (in place); returns the processed image."""
        if img is None:
            return None
        if self.qc1 is None:
            c["qc1"] = {"passed": True, "skipped": True}
            return img
        t0 = time.monotonic()
        with self._qc_lock:
            r = self.qc1.evaluate(lq, img, key=f"{item.key}/{c['id']}", category=item.category, lq_nr=lq_nr,
                                  expected_aspect=c.get("expected_aspect"))
        c["qc1"] = {"passed": r.passed, "reasons": r.reasons, "scores": r.scores, "checks": r.checks,
                    "processed": r.processed, "select_score": r.select_score, "time_s": round(time.monotonic() - t0, 3)}
        if r.errors:
            c["qc1"]["errors"] = r.errors
        if r.processed:
            qc_png = self.run_dir / "work" / item.flat / f"{c['id']}.qc.png"
            write_png(qc_png, r.image)
            c["processed_path"] = str(qc_png.relative_to(self.run_dir))
        return r.image

    # -- one image
    def process(self, item) -> dict:
        from ggt_ir.synth.qc_vlm import judge

        t_all = time.monotonic()
        tm: dict[str, float] = {}
        rec = {"key": item.key, "category": item.category, "lq_source": item.source, "rank": self.rank,
               "config": self.fingerprint}
        try:
            t0 = time.monotonic()
            lq_bytes = item.read_bytes()
            lq = item.load()
            sha = _sha(lq_bytes)
            rec.update(lq_sha256=sha, size=[int(lq.shape[1]), int(lq.shape[0])])
            preview = self.run_dir / "work" / item.flat / "lq.png"  # for the review and compare pages
            if not preview.is_file():
                write_png(preview, lq)
            rec["lq_preview"] = str(preview.relative_to(self.run_dir))
            tm["load"] = time.monotonic() - t0
        except Exception as e:  # noqa: BLE001 - one unreadable image must not stop a 100k run
            return self._finish(rec, item, None, [], status="error", stage="load",
                                reason=f"cannot read the LQ image: {e}", tm=tm, t_all=t_all)
        t0 = time.monotonic()
        prompt, pinfo = self.prompter.prompt_for(item, lq, sha)
        tm["prompt"] = time.monotonic() - t0
        rec["prompt_info"] = pinfo
        rec["prompt"] = prompt
        lq_nr = {}
        t0 = time.monotonic()
        if self.qc1 is not None:
            with self._qc_lock:
                lq_nr = self.qc1.score_lq(lq, item.key)
        tm["qc1"] = time.monotonic() - t0
        rec["lq_scores"] = lq_nr

        # candidates: generators x seeds
        cands: list[dict] = []
        images: dict[str, np.ndarray] = {}
        t_gen = 0.0
        for gen in self.generators:
            n = gen.opts.candidates or self.opt.candidates.per_generator
            for i in range(n):
                seed = self.opt.candidates.seed + i
                t0 = time.monotonic()
                c, img = self._candidate(item, lq, gen, seed, prompt, f"{_safe(gen.name)}-s{seed}", 0)
                t_gen += time.monotonic() - t0
                t0 = time.monotonic()
                proc = self._qc1(item, lq, lq_nr, c, img)
                tm["qc1"] += time.monotonic() - t0
                if proc is not None:
                    images[c["id"]] = proc
                cands.append(c)
        tm["generate"] = t_gen
        ok = [c for c in cands if c.get("status") == "ok"]
        if not ok:
            return self._finish(rec, item, None, cands, status="rejected", stage="generate",
                                reason="no generator returned an image", tm=tm, t_all=t_all, lq_bytes=lq_bytes)

        def order(cs):
            return sorted(cs, key=lambda c: -(c["qc1"].get("select_score") if c["qc1"].get("select_score")
                                             is not None else -1e300))

        passing = order([c for c in ok if c.get("qc1", {}).get("passed")])
        if not passing:
            return self._finish(rec, item, None, cands, status="rejected", stage="qc1",
                                reason="no candidate passed QC 1", tm=tm, t_all=t_all, lq_bytes=lq_bytes)
        qv = self.opt.qc.vlm
        if self.judge_vlm is None:
            chosen = passing[0]
            tm["qc2"] = 0.0
            return self._finish(rec, item, chosen, cands, status="accepted", stage="qc1",
                                reason="best QC-1 candidate (QC 2 off)", tm=tm, t_all=t_all, lq_bytes=lq_bytes,
                                image=images[chosen["id"]])
        # QC 2
        t0 = time.monotonic()
        queue, accepted, regens = list(passing), [], 0
        gens = {g.name: g for g in self.generators}
        while queue:
            c = queue.pop(0)
            v = judge(self.judge_vlm, lq, images[c["id"]], prompt=c["prompt"], category=item.category,
                      template=qv.judge_prompt, seed=regens)
            verdict = v["verdict"]
            if verdict in ("unparsable", "error"):
                v["counted_as"] = qv.on_unparsable
                verdict = qv.on_unparsable
            c.setdefault("vlm", []).append(v)
            if verdict == "accept":
                accepted.append(c)
                if qv.mode == "best_first":
                    break
            elif verdict == "regenerate":
                if regens >= qv.max_regenerations:
                    v["note"] = f"regeneration limit {qv.max_regenerations} reached; counted as reject"
                    continue
                regens += 1
                gen = gens[c["generator"]]
                n = gen.opts.candidates or self.opt.candidates.per_generator
                seed = self.opt.candidates.seed + n + regens - 1
                new_prompt = v.get("corrected_prompt") or c["prompt"]
                t1 = time.monotonic()
                nc, img = self._candidate(item, lq, gen, seed, new_prompt, f"{_safe(gen.name)}-s{seed}-r{regens}",
                                          regens, parent=c["id"])
                tm["generate"] += time.monotonic() - t1
                proc = self._qc1(item, lq, lq_nr, nc, img)
                cands.append(nc)
                if proc is not None:
                    images[nc["id"]] = proc
                    if nc["qc1"].get("passed"):
                        queue.insert(0, nc)
        tm["qc2"] = time.monotonic() - t0
        rec["qc2"] = {"regenerations": regens, "judged": sum(len(c.get("vlm", [])) for c in cands)}
        if not accepted:
            return self._finish(rec, item, None, cands, status="rejected", stage="qc2",
                                reason="the VLM accepted no candidate", tm=tm, t_all=t_all, lq_bytes=lq_bytes)
        chosen = order(accepted)[0]
        return self._finish(rec, item, chosen, cands, status="accepted", stage="qc2", reason="accepted by the VLM",
                            tm=tm, t_all=t_all, lq_bytes=lq_bytes, image=images[chosen["id"]])

    def _dataset_paths(self, item) -> dict[str, Path]:
        base = self.run_dir / "dataset" / self.opt.output.split / item.category
        return {"lq": base / "LQ" / f"{item.flat}{item.ext}", "hq": base / "GT" / f"{item.flat}.png",
                "prompt": base / "prompt" / f"{item.flat}.txt"}

    def _finish(self, rec, item, chosen, cands, *, status, stage, reason, tm, t_all, lq_bytes=None, image=None):
        t0 = time.monotonic()
        paths = self._dataset_paths(item)
        if status == "accepted":
            if self.opt.output.copy_lq:
                atomic_write(paths["lq"], lambda tmp: tmp.write_bytes(lq_bytes))
            else:
                paths["lq"].parent.mkdir(parents=True, exist_ok=True)
                if paths["lq"].is_symlink() or paths["lq"].exists():
                    paths["lq"].unlink()
                paths["lq"].symlink_to(Path(item.source).resolve())
            write_png(paths["hq"], image)
            atomic_write_text(paths["prompt"], chosen["prompt"] + "\n")
            rec.update(lq=str(paths["lq"].relative_to(self.run_dir)), hq=str(paths["hq"].relative_to(self.run_dir)),
                       generator=chosen["generator"], seed=chosen["seed"], candidate=chosen["id"],
                       prompt=chosen["prompt"])
        else:
            for p in paths.values():  # an earlier run (other settings) may have accepted it
                if p.exists() or p.is_symlink():
                    p.unlink()
            rec.update(lq=None, hq=None, generator=None, seed=None, candidate=None)
        tm["write"] = time.monotonic() - t0
        tm["total"] = time.monotonic() - t_all
        cost_gen = sum(c.get("cost_usd", 0.0) for c in cands)
        cost_judge = sum(v.get("cost_usd", 0.0) for c in cands for v in c.get("vlm", []))
        cost_prompt = float((rec.get("prompt_info") or {}).get("cost_usd", 0.0) or 0.0)
        this_run = sum(c.get("cost_this_run", 0.0) for c in cands) + cost_judge + cost_prompt
        rec.update(status=status, stage=stage, reason=reason, candidates=cands,
                   qc1={"passed": sum(1 for c in cands if c.get("qc1", {}).get("passed")),
                        "of": sum(1 for c in cands if c.get("status") == "ok")},
                   timings={k: round(v, 4) for k, v in tm.items()},
                   cost_usd={"generate": round(cost_gen, 6), "vlm_prompt": round(cost_prompt, 6),
                             "vlm_judge": round(cost_judge, 6), "total": round(cost_gen + cost_prompt + cost_judge, 6),
                             "this_run": round(this_run, 6)},
                   finished_at=time.time(), time=time.strftime("%Y-%m-%dT%H:%M:%S"))
        rec.setdefault("qc2", None)
        return rec

    # -- driver
    def run(self, items) -> dict:
        opt = self.opt
        st = self.state
        if st.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from ggt_ir.config import options_to_yaml

            atomic_write_text(self.run_dir / "options.yml", f"# {self.command}\n# {time.strftime('%Y-%m-%d %H:%M:%S')}"
                              f"\n{options_to_yaml(opt)}")
            with open(self.run_dir / "commands.txt", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.command}\n")
        st.wait_for_everyone()
        records = read_records(self.run_dir)
        done = {k for k, r in records.items() if r.get("config") == self.fingerprint}
        stale = sum(1 for k, r in records.items() if r.get("config") != self.fingerprint)
        todo = [i for i in items if i.key not in done]
        st.wait_for_everyone()  # every process has read the same manifest before anyone appends
        mine = todo[self.rank::self.world]
        if st.is_main_process:
            self.log(f"[synth] {opt.name}: {len(items)} images, {len(items) - len(todo)} already done"
                     + (f" ({stale} done with other settings are redone)" if stale else "")
                     + f", {len(todo)} to do on {self.world} process(es) -> {self.run_dir}")
        if mine:
            need_vlm = opt.prompting.mode == "adaptive"
            self.build(need_vlm)
            writer = ManifestWriter(self.run_dir / "manifest" / f"rank-{self.rank}.jsonl")
            prog = Progress(len(mine), self.rank, opt.runtime.log_every, self.log,
                            any(g.kind == "api" for g in self.generators) or
                            getattr(self.prompter.vlm, "kind", "") == "api" or
                            getattr(self.judge_vlm, "kind", "") == "api")

            def one(item):
                rec = self.process(item)
                writer.append(rec)
                prog.step(rec["cost_usd"]["this_run"], item.key, f"{rec['status']} ({rec['stage']})")
                return rec

            if opt.runtime.workers > 1:
                with ThreadPoolExecutor(opt.runtime.workers) as pool:
                    futures = [pool.submit(one, it) for it in mine]
                    for f in as_completed(futures):
                        f.result()
            else:
                for it in mine:
                    one(it)
        st.wait_for_everyone()
        summary = {}
        if st.is_main_process:
            summary = merge_run(self.run_dir, [i.key for i in items], self.fingerprint, opt, self.qc1, log=self.log)
        st.wait_for_everyone()
        return summary


# --------------------------------------------------------------------------- merge and statistics
def stage_counts(records: list[dict]) -> dict:
    """Images per stage: input -> with an image -> passed QC 1 -> accepted (auto)."""
    n = len(records)
    gen = sum(1 for r in records if any(c.get("status") == "ok" for c in r.get("candidates", [])))
    qc1 = sum(1 for r in records if any(c.get("qc1", {}).get("passed") for c in r.get("candidates", [])))
    acc = sum(1 for r in records if r.get("status") == "accepted")
    return {"input": n, "generated": gen, "passed_qc1": qc1, "accepted": acc,
            "rejected_at": {s: sum(1 for r in records if r.get("status") != "accepted" and r.get("stage") == s)
                            for s in ("load", "generate", "qc1", "qc2")}}


def summarize(records: list[dict]) -> dict:
    by_cat: dict[str, list] = {}
    for r in records:
        by_cat.setdefault(r.get("category", "unknown"), []).append(r)
    gens: dict[str, dict] = {}
    for r in records:
        for c in r.get("candidates", []):
            g = gens.setdefault(c["generator"], {"candidates": 0, "ok": 0, "refused": 0, "error": 0,
                                                 "passed_qc1": 0, "vlm_accept": 0, "chosen": 0, "cost_usd": 0.0,
                                                 "time_s": 0.0})
            g["candidates"] += 1
            g[c.get("status", "error") if c.get("status") in ("ok", "refused", "error") else "error"] += 1
            g["passed_qc1"] += bool(c.get("qc1", {}).get("passed"))
            g["vlm_accept"] += any(v.get("verdict") == "accept" for v in c.get("vlm", []))
            g["chosen"] += r.get("candidate") == c["id"]
            g["cost_usd"] += c.get("cost_usd", 0.0)
            g["time_s"] += c.get("time_s", 0.0)
    total_cost = sum(r.get("cost_usd", {}).get("total", 0.0) for r in records)
    return {"stages": stage_counts(records), "per_category": {c: stage_counts(rs) for c, rs in sorted(by_cat.items())},
            "generators": gens, "cost_usd": round(total_cost, 6),
            "cost_per_image_usd": round(total_cost / max(1, len(records)), 6),
            "time_per_image_s": round(sum(r.get("timings", {}).get("total", 0.0) for r in records)
                                      / max(1, len(records)), 4)}


def stage_table(summary: dict, title: str = "") -> str:
    rows = [("all", summary["stages"])] + list(summary["per_category"].items())
    head = "| category | input | generated | passed QC 1 | accepted | rejected at (gen/qc1/qc2) |\n|---|---:|---:|---:|---:|---|"
    body = "\n".join(f"| {c} | {s['input']} | {s['generated']} | {s['passed_qc1']} | {s['accepted']} | "
                     f"{s['rejected_at']['generate']}/{s['rejected_at']['qc1']}/{s['rejected_at']['qc2']} |"
                     for c, s in rows)
    return (f"{title}\n" if title else "") + head + "\n" + body


def merge_run(run_dir: Path, keys: list[str], fingerprint: str, opt, qc1=None, log=print) -> dict:
    records = read_records(run_dir)
    merged = [records[k] for k in sorted(keys) if k in records and records[k].get("config") == fingerprint]
    missing = [k for k in keys if k not in records or records[k].get("config") != fingerprint]
    text = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in merged)
    atomic_write_text(run_dir / "manifest.jsonl", text)
    summary = summarize(merged)
    summary.update(name=opt.name, run_dir=str(run_dir), complete=not missing, missing=len(missing),
                   config=fingerprint, dataset=str(run_dir / "dataset"),
                   metrics=qc1.variants() if qc1 is not None else {},
                   skipped_metrics=qc1.skipped() if qc1 is not None else {},
                   time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(run_dir / "summary.json", summary)
    log(stage_table(summary, f"[synth] {opt.name}: {len(merged)} images"
                             + ("" if not missing else f" ({len(missing)} not finished)")))
    log(f"[synth] cost ${summary['cost_usd']:.4f} (${summary['cost_per_image_usd']:.4f}/image), "
        f"{summary['time_per_image_s']:.2f} s/image | manifest {run_dir / 'manifest.jsonl'} | "
        f"dataset {run_dir / 'dataset'}")
    return summary


def run_synth(opt: SynthOptions, state=None, log=print, command: str = "", resources: dict | None = None) -> dict:
    from ggt_ir.synth.inputs import InputError, read_inputs

    if state is None:
        from accelerate import PartialState

        state = PartialState()
    try:
        items, notes = read_inputs(opt.input.type, opt.input.path, default_category=opt.input.default_category,
                                   categories=opt.input.categories, limit=opt.input.limit,
                                   per_category=opt.input.per_category)
    except (InputError, OSError) as e:
        raise SynthError(str(e)) from None
    if state.is_main_process:
        for n in notes:
            log(f"[synth] note: {n}")
    return SynthRun(opt, state, log=log, command=command, resources=resources).run(items)


__all__ = ["SynthError", "SynthRun", "run_synth", "read_records", "read_jsonl", "summarize", "stage_table",
           "config_fingerprint", "merge_run", "Progress", "write_png"]
