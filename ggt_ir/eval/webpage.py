"""What the report pages share: one self-contained HTML page (inline CSS and JavaScript, no external
library or CDN, so it opens from ``file://``), tables sortable by a click on their header, and the
image viewer.

The viewer opens on a click on any element with ``data-group`` and ``data-i``: item ``i`` of
``DATA.items[group]`` (the page's inline JSON), a ``{title, layers: [{name, src, scores}], a, b}``;
previous/next walk the items of the same table (in its current order) or grids.
It shows two layers of the item at full resolution, one over the other, with a slider between them
(or a toggle), and the same zoom and pan for both: wheel zooms at the cursor, a drag pans, a drag of
the line moves the split. Keys: ←/→ previous/next item (in the page's current order), s swap,
t slider/toggle, space flip (toggle mode), f fit, z 100 %, Esc close. ``#view=<group>:<i>`` in the
address opens an item (the viewer writes it, so a link shows the same image).
"""
from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from urllib.parse import quote

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd} h3{margin:1.1em 0 .4em}
.meta{color:#555;font-size:14px} .meta a{margin-right:.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3} td.l,th.l{text-align:left} tr.delta td,tr.delta th{background:#f7f7fb;font-style:italic}
table.sortable thead th{cursor:pointer;user-select:none;position:sticky;top:0;z-index:1}
table.sortable thead th:hover{background:#e4e9f5}
th[aria-sort=ascending]::after{content:" \\25B2"} th[aria-sort=descending]::after{content:" \\25BC"}
.scroll{max-height:75vh;overflow:auto;display:inline-block;border:1px solid #ddd;max-width:100%}
.scroll table{margin:0}
img.thumb{height:56px;display:block;cursor:zoom-in;image-rendering:auto}
.controls{margin:.4em 0;font-size:14px}
.cats{display:flex;flex-wrap:wrap;gap:6px 28px;align-items:flex-start}
.cat h4{margin:.6em 0 .3em}
.trips{display:flex;flex-wrap:wrap;gap:14px}
.trip{border:1px solid #ddd;padding:6px;border-radius:4px;background:#fafafa}
.trip .name{font-size:12px;color:#444;margin-bottom:4px;overflow-wrap:anywhere}
.panels{display:flex;gap:4px;align-items:flex-start}
figure.panel{margin:0;position:relative;width:min-content}
figure.panel img{display:block;cursor:zoom-in;background:#eee}
figure.panel .badge{position:absolute;top:3px;left:3px;background:rgba(0,0,0,.7);color:#fff;font-size:11px;
  padding:1px 5px;border-radius:3px;pointer-events:none}
figure.panel figcaption{font-size:11px;line-height:1.35;margin-top:2px;font-variant-numeric:tabular-nums}
figure.panel figcaption span{display:inline-block;margin-right:6px;white-space:nowrap}
.better{color:#1a7f37}.worse{color:#c62828}
td.better{background:#eaf6ec}td.worse{background:#fbeaea}
.mark{color:#b35c00;font-weight:bold} td.marked{background:#fff4e0}
.note{color:#555;font-size:13px;max-width:70em}
pre{white-space:pre-wrap;font-size:12px;background:#f6f6f6;padding:6px}
.plots img{max-width:100%;border:1px solid #ddd;margin:4px 8px 4px 0}
.gv{position:fixed;inset:0;background:#111;color:#eee;z-index:10;display:flex;flex-direction:column}
.gv[hidden]{display:none}
.gv-bar{display:flex;flex-wrap:wrap;gap:6px 10px;align-items:center;padding:6px 10px;background:#222;font-size:13px}
.gv-title{font-weight:bold;margin-right:8px;overflow-wrap:anywhere}
.gv-bar button{background:#333;color:#eee;border:1px solid #555;border-radius:3px;padding:2px 8px;cursor:pointer;font-size:12px}
.gv-bar button.on{background:#2d6cdf;border-color:#2d6cdf}
.gv-group{display:inline-flex;gap:3px;align-items:center}
.gv-stage{position:relative;flex:1;overflow:hidden;cursor:grab;touch-action:none;background:#1b1b1b}
.gv-layer{position:absolute;inset:0;overflow:hidden}
.gv-layer img{position:absolute;left:0;top:0;transform-origin:0 0;max-width:none;user-select:none;-webkit-user-drag:none}
.gv-stage.pixelated img{image-rendering:pixelated}
.gv-line{position:absolute;top:0;bottom:0;width:2px;margin-left:-1px;background:#fff;cursor:ew-resize;box-shadow:0 0 3px #000}
.gv-knob{position:absolute;top:50%;left:-9px;width:18px;height:18px;margin-top:-9px;border-radius:50%;background:#fff;
  box-shadow:0 0 4px #000}
.gv-label{position:absolute;top:8px;background:rgba(0,0,0,.72);padding:3px 8px;border-radius:3px;font-size:12px;
  pointer-events:none;max-width:44%;line-height:1.4}
.gv-la{left:8px}.gv-lb{right:8px;text-align:right}
.gv-help{position:absolute;bottom:6px;left:8px;font-size:11px;color:#bbb;pointer-events:none;background:rgba(0,0,0,.6);padding:2px 6px;border-radius:3px}
.gv-zoom{position:absolute;bottom:6px;right:8px;font-size:11px;color:#bbb;pointer-events:none;background:rgba(0,0,0,.6);padding:2px 6px;border-radius:3px}
"""

VIEWER_HTML = """
<div id="ggt-viewer" class="gv" hidden>
 <div class="gv-bar">
  <span class="gv-title"></span>
  <span class="gv-group">left: <span class="gv-pick" data-side="a"></span></span>
  <span class="gv-group">right: <span class="gv-pick" data-side="b"></span></span>
  <span class="gv-group"><button data-act="swap" title="s">swap</button><button data-act="mode" title="t">slider</button>
   <button data-act="fit" title="f">fit</button><button data-act="one" title="z">100%</button></span>
  <span class="gv-group"><button data-act="prev" title="left arrow">&#8249; prev</button>
   <button data-act="next" title="right arrow">next &#8250;</button><button data-act="close" title="Esc">close &#10005;</button></span>
 </div>
 <div class="gv-stage">
  <div class="gv-layer gv-a"><img alt=""></div>
  <div class="gv-layer gv-b"><img alt=""></div>
  <div class="gv-line"><div class="gv-knob"></div></div>
  <div class="gv-label gv-la"></div><div class="gv-label gv-lb"></div>
  <div class="gv-help">wheel: zoom &middot; drag: pan &middot; drag the line: compare &middot; double-click: fit / 100% &middot;
   &larr;/&rarr;: previous/next &middot; s: swap &middot; t: slider/toggle &middot; Esc: close</div>
  <div class="gv-zoom"></div>
 </div>
</div>
"""

JS = r"""
(function(){
"use strict";
// ---- sortable tables: a click on a header sorts by it (metrics best-first), a second click reverses
function cellValue(td){ return td.dataset.v !== undefined ? td.dataset.v : td.textContent.trim(); }
function sortTable(t, col){
  const th = t.tHead.rows[t.tHead.rows.length - 1].cells[col];
  const numeric = th.dataset.type === 'num';
  const cur = th.getAttribute('aria-sort');
  let dir = cur === 'ascending' ? -1 : cur === 'descending' ? 1 : (numeric && th.dataset.lower === '0' ? -1 : 1);
  t.tHead.querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
  const key = r => { const c = r.cells[col], v = c ? cellValue(c) : '';
                     return numeric ? (v === '' ? NaN : parseFloat(v)) : v.toLowerCase(); };
  const rows = Array.from(t.tBodies[0].rows).map((r, k) => [key(r), k, r]);
  rows.sort((x, y) => {
    if (numeric) { const nx = isNaN(x[0]), ny = isNaN(y[0]);
                   if (nx || ny) return (nx - ny) || (x[1] - y[1]);   // missing values last
                   return (x[0] - y[0]) * dir || (x[1] - y[1]); }
    return (x[0] < y[0] ? -dir : x[0] > y[0] ? dir : 0) || (x[1] - y[1]);
  });
  rows.forEach(r => t.tBodies[0].appendChild(r[2]));
}
document.querySelectorAll('table.sortable').forEach(t => {
  const head = t.tHead.rows[t.tHead.rows.length - 1];
  Array.from(head.cells).forEach((th, col) => {
    if (th.dataset.nosort !== undefined) return;
    th.tabIndex = 0; th.title = 'sort';
    th.addEventListener('click', () => sortTable(t, col));
    th.addEventListener('keydown', e => { if (e.key === 'Enter') sortTable(t, col); });
  });
});
document.querySelectorAll('select[data-filter]').forEach(sel => sel.addEventListener('change', () => {
  const t = document.getElementById(sel.dataset.filter); let n = 0;
  Array.from(t.tBodies[0].rows).forEach(r => { const show = !sel.value || r.dataset.cat === sel.value;
                                               r.hidden = !show; n += show ? 1 : 0; });
  const c = document.getElementById(sel.dataset.filter + '-count'); if (c) c.textContent = n;
}));

// ---- the viewer
const dataEl = document.getElementById('ggt-data');
const DATA = dataEl ? JSON.parse(dataEl.textContent) : {items: {}};
const gv = document.getElementById('ggt-viewer');
if (!gv) return;
const stage = gv.querySelector('.gv-stage'), line = gv.querySelector('.gv-line');
const imgA = gv.querySelector('.gv-a img'), imgB = gv.querySelector('.gv-b img'), layB = gv.querySelector('.gv-b');
const V = {group: null, keys: [], pos: 0, a: 0, b: 1, s: 1, tx: 0, ty: 0, W: 0, H: 0, split: 0.5,
           mode: 'slider', showB: true, refit: true};
function item(){ return DATA.items[V.group][V.keys[V.pos]]; }
function esc(s){ const d = document.createElement('div'); d.textContent = s; return d.innerHTML; }

function openFrom(el){
  const g = el.dataset.group, i = +el.dataset.i, seen = new Set(), keys = [];
  const scope = el.closest('table, .cats') || document;   // prev/next walk the table (as sorted) or the grids
  scope.querySelectorAll('[data-group]').forEach(e => {
    if (e.dataset.group !== g || e.closest('[hidden]')) return;   // the page's order, filtered rows left out
    const k = +e.dataset.i; if (!seen.has(k)) { seen.add(k); keys.push(k); }
  });
  if (!seen.has(i)) keys.unshift(i);
  V.group = g; V.keys = keys; V.pos = keys.indexOf(i);
  const it = item(); V.a = it.a; V.b = it.b;
  if (el.dataset.layer !== undefined && +el.dataset.layer !== it.a) { V.a = +el.dataset.layer; V.b = it.a; }
  gv.hidden = false; document.body.style.overflow = 'hidden';
  show(true);
}
function close(){
  gv.hidden = true; document.body.style.overflow = '';
  history.replaceState(null, '', location.pathname + location.search);
}
function show(refit){
  const it = item(), n = it.layers.length;
  V.a = Math.min(V.a, n - 1); V.b = Math.min(V.b, n - 1);
  gv.querySelector('.gv-title').textContent = it.title + '  (' + (V.pos + 1) + '/' + V.keys.length + ')';
  gv.querySelectorAll('.gv-pick').forEach(p => {
    const side = p.dataset.side;
    p.innerHTML = it.layers.map((l, k) => '<button data-k="' + k + '"' + (V[side] === k ? ' class="on"' : '') + '>' +
                                esc(l.name) + '</button>').join('');
    p.querySelectorAll('button').forEach(b => b.onclick = () => { V[side] = +b.dataset.k; show(false); });
  });
  gv.querySelector('[data-act=mode]').textContent = V.mode === 'slider' ? 'slider' : 'toggle';
  gv.querySelector('[data-act=mode]').classList.toggle('on', V.mode === 'toggle');
  V.refit = refit; V.W = 0; V.H = 0;
  setSrc(imgA, it.layers[V.a].src); setSrc(imgB, it.layers[V.b].src);
  labels(); apply();
  history.replaceState(null, '', '#view=' + encodeURIComponent(V.group) + ':' + V.keys[V.pos]);
}
function setSrc(img, src){
  if (img.getAttribute('src') !== src) { img.style.width = img.style.height = ''; img.src = src; }
  if (img.complete && img.naturalWidth) sized(img);
}
function sized(img){
  if (!img.naturalWidth) return;
  V.W = Math.max(V.W, img.naturalWidth); V.H = Math.max(V.H, img.naturalHeight);
  [imgA, imgB].forEach(im => { im.style.width = V.W + 'px'; im.style.height = V.H + 'px'; });
  if (V.refit) fit(); else apply();
}
imgA.addEventListener('load', () => sized(imgA)); imgB.addEventListener('load', () => sized(imgB));
function layerLabel(l, arrow){ return (arrow === 'l' ? '&#9664; ' : '') + '<b>' + esc(l.name) + '</b>' +
  (arrow === 'r' ? ' &#9654;' : '') + (l.scores ? '<br>' + esc(l.scores) : ''); }
function labels(){
  const it = item(), la = gv.querySelector('.gv-la'), lb = gv.querySelector('.gv-lb');
  if (V.mode === 'slider') { la.innerHTML = layerLabel(it.layers[V.a], 'l'); lb.innerHTML = layerLabel(it.layers[V.b], 'r');
                             lb.hidden = false; }
  else { la.innerHTML = layerLabel(it.layers[V.showB ? V.b : V.a]) + '<br><i>space / click: flip</i>'; lb.hidden = true; }
}
function fit(){
  if (!V.W) return;
  const r = stage.getBoundingClientRect();
  V.s = Math.min(r.width / V.W, r.height / V.H);
  V.tx = (r.width - V.W * V.s) / 2; V.ty = (r.height - V.H * V.s) / 2; apply();
}
function zoomAt(k, cx, cy){
  V.refit = false;
  const s = Math.min(64, Math.max(0.02, V.s * k)); k = s / V.s;
  V.tx = cx - (cx - V.tx) * k; V.ty = cy - (cy - V.ty) * k; V.s = s; apply();
}
function one(cx, cy){ const r = stage.getBoundingClientRect();
  if (cx === undefined) { cx = r.width / 2; cy = r.height / 2; }
  zoomAt(1 / V.s, cx, cy); }
function apply(){
  const r = stage.getBoundingClientRect(), t = 'translate(' + V.tx + 'px,' + V.ty + 'px) scale(' + V.s + ')';
  imgA.style.transform = t; imgB.style.transform = t;
  stage.classList.toggle('pixelated', V.s >= 2);
  const x = V.split * r.width;
  if (V.mode === 'slider') { layB.style.clipPath = 'inset(0 0 0 ' + x + 'px)'; layB.style.visibility = '';
                             line.hidden = false; line.style.left = x + 'px'; }
  else { layB.style.clipPath = 'none'; layB.style.visibility = V.showB ? '' : 'hidden'; line.hidden = true; }
  gv.querySelector('.gv-zoom').textContent = V.W ? V.W + 'x' + V.H + ' px, zoom ' + Math.round(V.s * 100) + '%' : 'loading...';
}
function step(d){ if (!V.keys.length) return; V.pos = (V.pos + d + V.keys.length) % V.keys.length; show(true); }
function act(a){
  if (a === 'swap') { const t = V.a; V.a = V.b; V.b = t; show(false); }
  else if (a === 'mode') { V.mode = V.mode === 'slider' ? 'toggle' : 'slider'; V.showB = true; show(false); }
  else if (a === 'fit') { V.refit = true; fit(); }
  else if (a === 'one') one();
  else if (a === 'prev') step(-1); else if (a === 'next') step(1); else if (a === 'close') close();
}
gv.querySelectorAll('[data-act]').forEach(b => b.addEventListener('click', () => act(b.dataset.act)));
stage.addEventListener('wheel', e => { e.preventDefault(); const r = stage.getBoundingClientRect();
  zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top); }, {passive: false});
let drag = null;
stage.addEventListener('pointerdown', e => {
  const r = stage.getBoundingClientRect(), x = e.clientX - r.left;
  const onLine = V.mode === 'slider' && Math.abs(x - V.split * r.width) < 12;
  drag = {line: onLine, x0: e.clientX, y0: e.clientY, tx: V.tx, ty: V.ty, moved: false};
  stage.setPointerCapture(e.pointerId); e.preventDefault();
});
stage.addEventListener('pointermove', e => {
  if (!drag) return;
  const r = stage.getBoundingClientRect();
  if (Math.abs(e.clientX - drag.x0) + Math.abs(e.clientY - drag.y0) > 3) drag.moved = true;
  if (drag.line) V.split = Math.min(1, Math.max(0, (e.clientX - r.left) / r.width));
  else { V.refit = false; V.tx = drag.tx + e.clientX - drag.x0; V.ty = drag.ty + e.clientY - drag.y0; }
  apply();
});
stage.addEventListener('pointerup', () => {
  if (drag && !drag.moved && V.mode === 'toggle') { V.showB = !V.showB; labels(); apply(); }
  drag = null;
});
stage.addEventListener('dblclick', e => { const r = stage.getBoundingClientRect();
  const fitS = Math.min(r.width / V.W, r.height / V.H);
  if (Math.abs(V.s - fitS) < 1e-3) one(e.clientX - r.left, e.clientY - r.top); else act('fit'); });
window.addEventListener('resize', () => { if (!gv.hidden) { if (V.refit) fit(); else apply(); } });
document.addEventListener('keydown', e => {
  if (gv.hidden) return;
  const k = e.key;
  if (k === 'Escape') close(); else if (k === 'ArrowLeft') step(-1); else if (k === 'ArrowRight') step(1);
  else if (k === 's') act('swap'); else if (k === 't') act('mode'); else if (k === 'f') act('fit');
  else if (k === 'z') act('one');
  else if (k === ' ' && V.mode === 'toggle') { V.showB = !V.showB; labels(); apply(); }
  else return;
  e.preventDefault();
});
document.addEventListener('click', e => {
  const el = e.target.closest('[data-group][data-i]');
  if (el && !gv.contains(el)) { e.preventDefault(); openFrom(el); }
});
const m = /^#view=([^:]*):(\d+)$/.exec(location.hash);
if (m) { const g = decodeURIComponent(m[1]);
  const el = Array.from(document.querySelectorAll('[data-group]')).find(e => e.dataset.group === g && e.dataset.i === m[2]);
  if (el) openFrom(el); }
window.GGT = {V: V, openFrom: openFrom, sortTable: sortTable, act: act};   // for tests/screenshot_reports.py
})();
"""


def esc(s) -> str:
    return html.escape(str(s), quote=True)


def href(path: str | os.PathLike, page_dir: str | os.PathLike) -> str:
    """A link from a page in ``page_dir`` to ``path`` (relative, URL-quoted; works from file://)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(page_dir))
    return quote(Path(rel).as_posix(), safe="/")


def json_safe(x):
    """NaN and infinities become None (JSON has no NaN; the page's JSON.parse would fail)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def arrow(lower_better: bool) -> str:
    return "↓" if lower_better else "↑"


def scores_text(scores: dict, directions: dict[str, bool]) -> str:
    """``psnr↑ 25.31 · ssim↑ 0.8123`` for the viewer's labels."""
    return " · ".join(f"{k}{arrow(directions.get(k, False))} {fmt(v)}" for k, v in scores.items())


def page(title: str, body: str, items: dict[str, list[dict]]) -> str:
    """The whole document: ``body`` plus the viewer, its data (``items``) and the scripts, all inline."""
    data = json.dumps(json_safe({"items": items}), ensure_ascii=False).replace("</", "<\\/")
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n{VIEWER_HTML}\n"
            f"<script type='application/json' id='ggt-data'>{data}</script>\n<script>{JS}</script>\n</body></html>\n")
