"""QC stage 3: a static review page for a run, and a tiny local server that writes decisions back.

``write_review(run)`` writes ``<run>/review/index.html``: one image at a time, LQ | candidate with a slider,
every candidate with its QC-1 scores and checks and its VLM verdicts, the prompt. Keys: ``a`` accept,
``r`` reject, ``u`` undo, ``1``-``9`` pick the candidate that becomes the HQ, ``←``/``→`` (or ``j``/``k``) move,
``n`` next undecided, ``d`` download ``decisions.json``. Decisions live in the browser's localStorage; opened
through ``serve(run)`` (``ggt-ir synth review RUN --serve``) the page also saves them to
``<run>/review/decisions.json`` after every key press. ``#replay=a,ArrowRight,r`` in the URL replays keys on
load (scripted reviews, tests). ``ggt-ir synth finalize RUN`` reads the file.

Decisions format::

    {"format": "ggt-ir-synth-decisions", "version": 1, "run": NAME, "saved": ISO-TIME,
     "decisions": {KEY: {"decision": "accept" | "reject", "candidate": CANDIDATE-ID, "time": ISO-TIME}}}
"""
from __future__ import annotations

import html
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ggt_ir.utils.fs import atomic_write_json, atomic_write_text

DECISIONS_FORMAT = "ggt-ir-synth-decisions"


class ReviewError(ValueError):
    pass


def _load_manifest(run: Path) -> list[dict]:
    m = run / "manifest.jsonl"
    if not m.is_file():
        raise ReviewError(f"{run}: no manifest.jsonl; run `ggt-ir synth -opt ...` to the end first (it merges "
                          "the per-process manifests)")
    out = []
    for n, line in enumerate(m.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ReviewError(f"{m}:{n}: not valid JSON ({e.msg})") from None
    return out


def _short(v):
    if isinstance(v, float):
        return float(f"{v:.4g}")
    return v


def page_data(run: Path, records: list[dict], only_accepted: bool = False, category: str | None = None,
              limit: int = 0) -> dict:
    items = []
    for r in records:
        if only_accepted and r.get("status") != "accepted":
            continue
        if category and r.get("category") != category:
            continue
        cands = []
        for c in r.get("candidates", []):
            q = c.get("qc1") or {}
            img = c.get("processed_path") or c.get("path")
            cands.append({
                "id": c["id"], "generator": c["generator"], "seed": c.get("seed"), "status": c.get("status"),
                "error": c.get("error", ""), "image": f"../{img}" if img else None,
                "raw": f"../{c['path']}" if c.get("path") and c.get("processed_path") else None,
                "qc1": q.get("passed"), "reasons": q.get("reasons", []), "processed": q.get("processed", []),
                "select": _short(q.get("select_score")),
                "scores": {k: _short(v) for k, v in (q.get("scores") or {}).items()},
                "checks": {k: {"value": _short(x.get("value")), "bound": x.get("bound"), "pass": x.get("pass"),
                               "note": x.get("note", "")} for k, x in (q.get("checks") or {}).items()},
                "vlm": [{"verdict": v.get("verdict"), "reasons": v.get("reasons", []),
                         "corrected_prompt": v.get("corrected_prompt", ""), "counted_as": v.get("counted_as"),
                         "flags": v.get("flags", {})} for v in c.get("vlm", [])],
                "prompt": c.get("prompt", ""), "attempt": c.get("attempt", 0), "cost": c.get("cost_usd", 0.0)})
        items.append({"key": r["key"], "category": r.get("category"), "status": r.get("status"),
                      "stage": r.get("stage"), "reason": r.get("reason"), "chosen": r.get("candidate"),
                      "lq": f"../{r['lq_preview']}" if r.get("lq_preview") else None, "prompt": r.get("prompt", ""),
                      "prompt_source": (r.get("prompt_info") or {}).get("source"), "candidates": cands,
                      "size": r.get("size")})
    items.sort(key=lambda i: (i["status"] != "accepted", i["key"]))
    if limit > 0:  # one page holds every item's data: review big runs by category / in samples
        items = items[:limit]
    summary = {}
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
    return {"run": summary.get("name", run.name), "format": DECISIONS_FORMAT, "items": items,
            "stages": summary.get("stages", {})}


_CSS = """
body{font:14px system-ui,sans-serif;margin:0;background:#16181c;color:#e6e6e6}
header{padding:8px 14px;background:#22252b;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
header h1{font-size:16px;margin:0}
.keys{color:#9aa}
kbd{background:#333;border-radius:3px;padding:0 4px;border:1px solid #555}
main{display:flex;gap:14px;padding:12px}
#viewer{flex:0 0 auto}
.cmp{position:relative;display:inline-block;line-height:0;background:#000}
.cmp img{image-rendering:pixelated;display:block}
.cmp .top{position:absolute;left:0;top:0;overflow:hidden;height:100%;border-right:2px solid #ff0}
.cmp .label{position:absolute;top:4px;font:12px monospace;background:#000a;padding:2px 4px;line-height:1.2}
input[type=range]{width:100%}
#side{flex:1;min-width:320px}
.badge{display:inline-block;padding:1px 6px;border-radius:3px;font-weight:600}
.accept,.accepted,.pass{background:#1f6f3f}.reject,.rejected,.fail{background:#8a2b2b}.undecided{background:#555}
.regenerate{background:#8a6d1f}.unparsable,.error,.refused,.skip{background:#444}
.cands{display:flex;gap:8px;flex-wrap:wrap;margin:8px 0}
.cand{border:2px solid #333;padding:4px;cursor:pointer;width:140px;font-size:12px}
.cand.sel{border-color:#ff0}.cand.chosen{box-shadow:0 0 0 2px #1f9f5f}
.cand img{width:128px;height:auto;display:block;image-rendering:pixelated}
table{border-collapse:collapse;font-size:12px}td,th{padding:1px 6px;border-bottom:1px solid #333;text-align:left}
#nav{margin:6px 0}
pre{white-space:pre-wrap}
#decisions-json{display:none}
"""

_JS = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const STORE = 'ggt-synth-review:' + D.run;
let dec = {}; try { dec = JSON.parse(localStorage.getItem(STORE) || '{}'); } catch (e) { dec = {}; }
let idx = 0, sel = {}, served = location.protocol.startsWith('http'), saveState = '';
const $ = id => document.getElementById(id);
const esc = s => String(s == null ? '' : s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function item() { return D.items[idx]; }
function selected(it) {
  if (sel[it.key] != null) return sel[it.key];
  const d = dec[it.key]; if (d && d.candidate) { const i = it.candidates.findIndex(c => c.id === d.candidate); if (i >= 0) return i; }
  const i = it.candidates.findIndex(c => c.id === it.chosen); if (i >= 0) return i;
  const ok = it.candidates.findIndex(c => c.status === 'ok'); return ok >= 0 ? ok : 0;
}
function payload() {
  return {format: D.format, version: 1, run: D.run, saved: new Date().toISOString(), decisions: dec};
}
function persist() {
  localStorage.setItem(STORE, JSON.stringify(dec));
  $('decisions-json').textContent = JSON.stringify(payload());
  if (served) {
    fetch('/api/decisions', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(payload())})
      .then(r => { saveState = r.ok ? 'saved to the run folder' : 'save failed: HTTP ' + r.status; renderHeader(); })
      .catch(e => { saveState = 'save failed: ' + e; renderHeader(); });
  }
}
function download() {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([JSON.stringify(payload(), null, 1)], {type: 'application/json'}));
  a.download = 'decisions.json'; document.body.appendChild(a); a.click(); a.remove();
}
function counts() {
  let acc = 0, rej = 0; for (const k in dec) { if (dec[k].decision === 'accept') acc++; else if (dec[k].decision === 'reject') rej++; }
  return {acc, rej, left: D.items.length - acc - rej};
}
function renderHeader() {
  const c = counts();
  $('status').innerHTML = `${idx + 1} / ${D.items.length} &middot; accepted ${c.acc} &middot; rejected ${c.rej} &middot; undecided ${c.left}` +
    (served ? ` &middot; <i>${esc(saveState || 'served: decisions are saved to review/decisions.json')}</i>` : ' &middot; <i>file page: press d to download decisions.json</i>');
}
function setSlider(v) { $('top').style.width = v + '%'; }
function render() {
  renderHeader();
  const it = item(); if (!it) { $('viewer').innerHTML = '<p>nothing to review</p>'; return; }
  const s = selected(it), c = it.candidates[s] || {};
  const d = dec[it.key];
  const w = Math.min(640, Math.max(256, (it.size ? it.size[0] : 256) * 2));
  $('viewer').innerHTML = `
    <div class="cmp" style="width:${w}px">
      <img src="${esc(c.image || it.lq)}" style="width:${w}px" alt="candidate">
      <div class="top" id="top" style="width:50%"><img src="${esc(it.lq)}" style="width:${w}px;max-width:none" alt="LQ"></div>
      <span class="label" style="left:4px">LQ</span><span class="label" style="right:4px">${esc(c.id || '')}</span>
    </div>
    <input type="range" min="0" max="100" value="50" id="slider" style="width:${w}px" aria-label="LQ / candidate slider">`;
  $('slider').oninput = e => setSlider(e.target.value);
  const auto = `<span class="badge ${esc(it.status)}">${esc(it.status)} (${esc(it.stage)})</span>`;
  const mine = d ? `<span class="badge ${esc(d.decision)}">you: ${esc(d.decision)} ${esc(d.candidate || '')}</span>` : '<span class="badge undecided">undecided</span>';
  let html = `<h2 style="margin:0 0 4px">${esc(it.key)} <small>${esc(it.category)}</small></h2>
    <div>${auto} ${mine} <small>${esc(it.reason || '')}</small></div>
    <p><b>prompt</b> (${esc(it.prompt_source || '')}): ${esc(c.prompt || it.prompt)}</p><div class="cands">`;
  it.candidates.forEach((k, i) => {
    const v = k.vlm.length ? k.vlm[k.vlm.length - 1].verdict : '';
    html += `<div class="cand ${i === s ? 'sel' : ''} ${k.id === it.chosen ? 'chosen' : ''}" data-i="${i}">
      ${k.image ? `<img src="${esc(k.image)}" alt="${esc(k.id)}">` : `<div style="height:60px">${esc(k.status)}</div>`}
      <b>${i + 1}</b> ${esc(k.id)}<br>${k.status !== 'ok' ? `<span class="badge ${esc(k.status)}">${esc(k.status)}</span>` :
      `<span class="badge ${k.qc1 ? 'pass' : 'fail'}">QC1 ${k.qc1 ? 'pass' : 'fail'}</span>`}
      ${v ? `<span class="badge ${esc(v)}">${esc(v)}</span>` : ''}<br>score ${esc(k.select)}</div>`;
  });
  html += '</div>';
  if (c.error) html += `<p><b>error</b>: ${esc(c.error)}</p>`;
  if (c.processed && c.processed.length) html += `<p><b>processed</b>: ${esc(c.processed.join('; '))}</p>`;
  if (c.reasons && c.reasons.length) html += `<p><b>QC 1 failed</b>: ${esc(c.reasons.join('; '))}</p>`;
  html += '<table><tr><th>check</th><th>value</th><th>bound</th><th></th></tr>';
  for (const k in (c.checks || {})) { const x = c.checks[k];
    html += `<tr><td>${esc(k)}</td><td>${esc(x.value)}</td><td>${esc(x.bound)}</td><td><span class="badge ${x.pass === null ? 'skip' : x.pass ? 'pass' : 'fail'}">${x.pass === null ? 'skipped' : x.pass ? 'pass' : 'fail'}</span> ${esc(x.note)}</td></tr>`; }
  html += '</table><table style="margin-top:6px"><tr><th>score</th><th>value</th></tr>';
  for (const k in (c.scores || {})) html += `<tr><td>${esc(k)}</td><td>${esc(c.scores[k])}</td></tr>`;
  html += '</table>';
  (c.vlm || []).forEach((v, j) => {
    html += `<p><b>VLM verdict ${j + 1}</b>: <span class="badge ${esc(v.verdict)}">${esc(v.verdict)}</span>` +
      (v.counted_as ? ` (counted as ${esc(v.counted_as)})` : '') + ` ${esc((v.reasons || []).join('; '))}` +
      (v.corrected_prompt ? `<br><i>corrected prompt</i>: ${esc(v.corrected_prompt)}` : '') + '</p>';
  });
  $('side').innerHTML = html;
  document.querySelectorAll('.cand').forEach(el => el.onclick = () => { sel[it.key] = +el.dataset.i; render(); });
}
function decide(what) {
  const it = item(); if (!it) return;
  const c = it.candidates[selected(it)];
  if (what === 'accept' && (!c || c.status !== 'ok')) return;
  dec[it.key] = {decision: what, candidate: what === 'accept' ? c.id : (c ? c.id : null), time: new Date().toISOString()};
  persist(); if (idx < D.items.length - 1) idx++; render();
}
function key(k) {
  const it = item();
  if (k === 'ArrowRight' || k === 'j') { idx = Math.min(D.items.length - 1, idx + 1); render(); }
  else if (k === 'ArrowLeft' || k === 'k') { idx = Math.max(0, idx - 1); render(); }
  else if (k === 'a') decide('accept');
  else if (k === 'r') decide('reject');
  else if (k === 'u') { if (it) { delete dec[it.key]; persist(); render(); } }
  else if (k === 'n') { const i = D.items.findIndex((x, j) => j > idx && !dec[x.key]); if (i >= 0) { idx = i; render(); } }
  else if (k === 'd') download();
  else if (/^[1-9]$/.test(k) && it && +k <= it.candidates.length) { sel[it.key] = +k - 1; render(); }
  else if (k === ' ') { const s = $('slider'); s.value = s.value > 50 ? 0 : 100; setSlider(s.value); }
}
document.addEventListener('keydown', e => { if (e.target.tagName === 'INPUT' && e.key.length > 1 && e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') return; key(e.key); if (e.key === ' ') e.preventDefault(); });
$('download').onclick = download;
function start() {
  const m = location.hash.match(/replay=([^&]*)/);
  if (m) decodeURIComponent(m[1]).split(',').filter(Boolean).forEach(key);
  $('decisions-json').textContent = JSON.stringify(payload());
  render();
}
if (served) {
  fetch('/api/decisions').then(r => r.ok ? r.json() : null).then(j => { if (j && j.decisions) dec = Object.assign({}, j.decisions, dec); }).catch(() => {}).finally(start);
} else start();
"""


def write_review(run: str | Path, only_accepted: bool = False, category: str | None = None, limit: int = 0) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise ReviewError(f"run folder not found: {run}")
    data = page_data(run, _load_manifest(run), only_accepted, category, limit)
    if not data["items"]:
        raise ReviewError(f"{run}: no images to review" + (f" in category {category!r}" if category else ""))
    blob = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>review: {html.escape(data['run'])}</title>
<style>{_CSS}</style></head><body>
<header><h1>ggt-ir synth review: {html.escape(data['run'])}</h1><span id="status"></span>
<button id="download">download decisions.json (d)</button>
<span class="keys"><kbd>a</kbd> accept <kbd>r</kbd> reject <kbd>u</kbd> undo <kbd>1</kbd>-<kbd>9</kbd> candidate
<kbd>&larr;</kbd><kbd>&rarr;</kbd> move <kbd>n</kbd> next undecided <kbd>space</kbd> slider</span></header>
<main><div id="viewer"></div><div id="side"></div></main>
<pre id="decisions-json"></pre>
<script id="data" type="application/json">{blob}</script>
<script>{_JS}</script></body></html>"""
    return atomic_write_text(run / "review" / "index.html", page)


def load_decisions(path: str | Path) -> dict:
    """The ``decisions`` mapping of a decisions file (validated; one-line errors)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReviewError(f"decisions file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ReviewError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(d, dict) or not isinstance(d.get("decisions"), dict):
        raise ReviewError(f"{path}: expected {{\"format\": \"{DECISIONS_FORMAT}\", \"decisions\": {{KEY: "
                          "{\"decision\": \"accept\"|\"reject\", \"candidate\": ID}}}} (written by the review page)")
    for k, v in d["decisions"].items():
        if not isinstance(v, dict) or v.get("decision") not in ("accept", "reject"):
            raise ReviewError(f"{path}: decision for {k!r} must be {{\"decision\": \"accept\"|\"reject\", ...}}, got {v!r}")
    return d["decisions"]


class _Handler(SimpleHTTPRequestHandler):
    run_dir: Path = Path(".")

    def log_message(self, fmt, *args):  # quiet
        pass

    def _json(self, code: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.split("?")[0] == "/api/decisions":
            f = self.run_dir / "review" / "decisions.json"
            return self._json(200, json.loads(f.read_text()) if f.is_file() else {"decisions": {}})
        if self.path in ("/", ""):
            self.send_response(302)
            self.send_header("Location", "/review/index.html")
            self.end_headers()
            return None
        return super().do_GET()

    def do_POST(self):
        if self.path.split("?")[0] != "/api/decisions":
            return self._json(404, {"error": "unknown endpoint"})
        n = int(self.headers.get("Content-Length") or 0)
        try:
            d = json.loads(self.rfile.read(n))
            if not isinstance(d, dict) or not isinstance(d.get("decisions"), dict):
                raise ValueError("no 'decisions' mapping")
        except (ValueError, json.JSONDecodeError) as e:
            return self._json(400, {"error": f"bad decisions: {e}"})
        atomic_write_json(self.run_dir / "review" / "decisions.json", d)
        return self._json(200, {"saved": len(d["decisions"])})


def make_server(run: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (never another interface) serving the run folder, with ``/api/decisions``."""
    run = Path(run).resolve()
    handler = type("ReviewHandler", (_Handler,), {"run_dir": run})

    def factory(*a, **kw):
        return handler(*a, directory=str(run), **kw)

    return ThreadingHTTPServer(("127.0.0.1", port), factory)


def serve(run: str | Path, port: int = 8765) -> None:
    srv = make_server(run, port)
    print(f"serving {run} at http://127.0.0.1:{srv.server_address[1]}/review/index.html  (Ctrl-C stops; "
          f"decisions are written to {Path(run) / 'review' / 'decisions.json'})")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


def serve_in_thread(run: str | Path, port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    srv = make_server(run, port)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    return srv, t
