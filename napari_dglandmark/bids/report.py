"""The group level: one HTML QC report of a whole derivative, worst images first.

A single ``dglandmark_report.html`` in OUTPUT_DIR, with the three-plane PNGs beside it (each image's
``figures/``, loaded lazily). It holds: a summary, the failures, a distribution plot per measurement
(outliers red, each dot a link to its image), the cohort table (sorted worst-first, sortable,
filterable, paged) and the image cards (snapshot, flags, warning, measurements), paged so that
only one page of pictures is ever loaded: readable for thousands of images.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from pathlib import Path

from ..io.atomic import write_text_atomic
from .cohort import Cohort, Record, outlier_limits, read_cohort

REPORT_NAME = "dglandmark_report.html"
PLOT_WIDTH, PLOT_HEIGHT = 880, 132


def _nice_step(span: float) -> float:
    raw = span / 6 if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def distribution_svg(name: str, points: list[tuple[int, float, bool, str]], unit: str = "mm",
                     show_limits: bool = True) -> str:
    """A strip plot with a box (quartiles, median) and the outlier limits; ``points``: (record index,
    value, is outlier, label). Each dot carries ``data-i`` (the record) and a tooltip."""
    values = [v for _, v, _, _ in points]
    if not values:
        return f'<p class="muted">{html.escape(name)}: no values</p>'
    limits = outlier_limits(values) if show_limits else None
    low, high = min(values), max(values)
    if limits:
        low, high = min(low, limits[0]), max(high, limits[1])
    pad = max((high - low) * 0.05, 0.5)
    low, high = low - pad, high + pad
    left, right, top, bottom = 40, PLOT_WIDTH - 20, 18, PLOT_HEIGHT - 28

    def x(v: float) -> float:
        return left + (v - low) / (high - low) * (right - left)

    mid = (top + bottom) / 2
    parts = [f'<svg class="plot" viewBox="0 0 {PLOT_WIDTH} {PLOT_HEIGHT}" role="img" '
             f'aria-label="{html.escape(name)} distribution">',
             f'<text x="{left}" y="12" class="ptitle">{html.escape(name)} ({unit}), n = {len(values)}</text>']
    step = _nice_step(high - low)
    tick = math.ceil(low / step) * step
    while tick <= high:
        parts.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top}" y2="{bottom}" class="grid"/>'
                     f'<text x="{x(tick):.1f}" y="{bottom + 14}" class="tick">{tick:g}</text>')
        tick += step
    if limits:
        for edge in limits:
            parts.append(f'<line x1="{x(edge):.1f}" x2="{x(edge):.1f}" y1="{top}" y2="{bottom}" class="limit">'
                         f'<title>outlier limit {edge:.1f} {unit} (robust z 3.5)</title></line>')
    q1, q2, q3 = (_quantile(values, q) for q in (0.25, 0.5, 0.75))
    parts.append(f'<rect x="{x(q1):.1f}" y="{mid - 22}" width="{max(x(q3) - x(q1), 1):.1f}" height="44" class="box">'
                 f'<title>quartiles {q1:.1f} / {q2:.1f} / {q3:.1f} {unit}</title></rect>'
                 f'<line x1="{x(q2):.1f}" x2="{x(q2):.1f}" y1="{mid - 22}" y2="{mid + 22}" class="median"/>')
    golden = 0.6180339887
    for n, (index, value, outlier, label) in enumerate(points):
        jitter = ((n * golden) % 1.0 - 0.5) * (bottom - top - 16)
        cls = "dot out" if outlier else "dot"
        parts.append(f'<circle cx="{x(value):.1f}" cy="{mid + jitter:.1f}" r="{4.5 if outlier else 3}" '
                     f'class="{cls}" data-i="{index}"><title>{html.escape(label)}: {value:.1f} {unit}'
                     f'{" (outlier)" if outlier else ""}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _label(record: Record) -> str:
    extra = " ".join(f"{k}-{v}" for k, v in record.entities.items() if k not in ("sub", "ses"))
    return " ".join(p for p in (f"sub-{record.subject}", f"ses-{record.session}" if record.session else "",
                                extra, record.suffix) if p)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _record_json(index: int, record: Record) -> dict:
    return {"i": index, "rank": index + 1, "label": _label(record), "sub": record.subject,
            "ses": record.session or "", "suffix": record.suffix, "source": record.source,
            "error": record.error, "warning": record.warning, "flagged": record.flagged,
            "nflag": len(record.flagged), "n": record.landmarks, "detected": record.detected,
            "minconf": None if record.min_confidence is None else float(f"{record.min_confidence:.3g}"),
            "meas": {k: (None if v is None else round(v, 2)) for k, v in record.measurements.items()},
            "outliers": record.outliers, "png": record.snapshot, "files": record.files}


def _summary(cohort: Cohort) -> list[tuple[str, str]]:
    records = cohort.records
    ok = [r for r in records if not r.error]
    sessions = {(r.subject, r.session) for r in records}
    return [("images", str(len(records))), ("participants", str(len({r.subject for r in records}))),
            ("sessions", str(len(sessions))), ("failed", str(len(records) - len(ok))),
            ("with an image warning", str(sum(1 for r in ok if r.warning))),
            ("with outlying measurements", str(sum(1 for r in ok if r.outliers))),
            ("landmarks needing review", f"{sum(len(r.flagged) for r in ok)} of {sum(r.landmarks for r in ok)}")]


def render_report(cohort: Cohort, title: str = "Landmark QC report") -> str:
    """The report's HTML text."""
    records = cohort.records
    plots = []
    for name in cohort.measurement_names:
        points = [(i, r.measurements[name], name in r.outliers, _label(r)) for i, r in enumerate(records)
                  if not r.error and r.measurements.get(name) is not None]
        plots.append(distribution_svg(name, points))
    flags = [(i, float(len(r.flagged)), False, _label(r)) for i, r in enumerate(records) if not r.error]
    if flags:
        plots.append(distribution_svg("landmarks needing review per image", flags, unit="count",
                                      show_limits=False))
    made_by = cohort.generated_by
    provenance = " ".join(str(made_by.get(k, "")) for k in ("Name", "Version"))
    description = str(made_by.get("Description", ""))
    summary = "".join(f'<div class="stat"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>'
                      for k, v in _summary(cohort))
    failures = [r for r in records if r.error]
    failed_html = ""
    if failures:
        items = "".join(f'<li><a href="#" data-i="{records.index(r)}">{html.escape(_label(r))}</a>: '
                        f'{html.escape(r.error)}</li>' for r in failures)
        failed_html = f'<section><h2>Failed ({len(failures)})</h2><ul class="failed">{items}</ul></section>'
    data = {"records": [_record_json(i, r) for i, r in enumerate(records)], "measurements": cohort.measurement_names}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (_TEMPLATE.replace("%TITLE%", html.escape(title))
            .replace("%PROVENANCE%", html.escape(provenance.strip() or "unknown pipeline"))
            .replace("%DESCRIPTION%", html.escape(description)).replace("%STAMP%", stamp)
            .replace("%SUMMARY%", summary).replace("%FAILED%", failed_html).replace("%PLOTS%", "".join(plots))
            .replace("%DATA%", payload))


def write_report(out_dir: str | os.PathLike, participants: list[str] | None = None) -> tuple[Path, Cohort]:
    """Read the derivative in ``out_dir`` and write ``dglandmark_report.html`` there (atomically)."""
    from ..errors import DGLandmarkError

    root = Path(out_dir)
    if not root.is_dir():
        raise DGLandmarkError("OUTPUT_DIR not found (run the participant level first)", root)
    cohort = read_cohort(root, participants)
    if not cohort.records:
        raise DGLandmarkError("holds no dglandmark results (run the participant level first)", root)
    path = root / REPORT_NAME
    write_text_atomic(path, render_report(cohort))
    return path, cohort


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f4f5f7}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#b8c0cc;font-size:12px}main{padding:12px 24px 40px}
section{background:#fff;border-radius:6px;padding:12px 16px;margin:12px 0;box-shadow:0 1px 2px #0002}
h2{font-size:16px;margin:0 0 8px}.stats{display:flex;flex-wrap:wrap;gap:10px}
.stat{background:#f0f2f5;border-radius:6px;padding:6px 12px;min-width:110px}.stat b{display:block;font-size:18px}
.stat span{color:#586174;font-size:12px}.muted{color:#6b7385}.failed li{margin:2px 0}
.plot{width:100%;max-width:880px;display:block;margin:4px 0}.ptitle{font-size:12px;font-weight:600;fill:#1d2330}
.tick{font-size:10px;fill:#6b7385;text-anchor:middle}.grid{stroke:#e3e6eb}.limit{stroke:#d33;stroke-dasharray:4 3}
.box{fill:#cfe0ff;stroke:#6d8fd6}.median{stroke:#2b4fa0;stroke-width:2}.dot{fill:#2f7d32;fill-opacity:.6;cursor:pointer}
.dot.out{fill:#d32020;fill-opacity:.95}.dot:hover{stroke:#000}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:3px 6px;border-bottom:1px solid #e6e8ec;text-align:left}
th{cursor:pointer;background:#f0f2f5;position:sticky;top:0;white-space:nowrap}tbody tr{cursor:pointer}
tbody tr:hover{background:#eef4ff}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b00020;font-weight:600}.warn{color:#a35c00}.out{background:#ffe3e3}
.pager{display:flex;gap:8px;align-items:center;margin:8px 0}.pager button{padding:2px 10px}
.controls{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin-bottom:6px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(430px,1fr));gap:12px}
.card{border:1px solid #dde1e7;border-radius:6px;padding:8px;background:#fff}
.card.hl{outline:3px solid #2b6cff}.card h3{font-size:13px;margin:0 0 6px}
.card img{width:100%;aspect-ratio:3/1;background:#000;display:block;border-radius:3px}
.card .msg{font-size:12px;margin:4px 0}.chips span{display:inline-block;background:#fde7fb;color:#8a0079;
border-radius:10px;padding:0 7px;margin:2px 3px 0 0;font-size:11px}.files a{margin-right:8px;font-size:12px}
.legend{font-size:12px;color:#586174}.legend i{display:inline-block;width:10px;height:10px;border-radius:5px;margin:0 4px 0 10px}
</style></head><body>
<header><h1>%TITLE%</h1><p>%PROVENANCE% &middot; %DESCRIPTION% &middot; made %STAMP% from the derivative alone</p></header>
<main>
<section><h2>Summary</h2><div class="stats">%SUMMARY%</div>
<p class="muted">Sorted worst first: failed images, then image warnings (the image is not the kind the model was
made for), then outlying measurements (robust z &gt; 3.5 across the cohort), then the number of landmarks
needing review, then the lowest confidence.</p></section>
%FAILED%
<section><h2>Measurements</h2><p class="legend">dots: images (click to open)<i style="background:#2f7d32"></i>
within limits<i style="background:#d32020"></i>outlier; dashed red: outlier limits; box: quartiles and median</p>
%PLOTS%</section>
<section><h2>Cohort</h2><div class="controls"><input id="filter" type="search" placeholder="filter: sub-01, T2w, warning..."
size="32"><label><input id="problems" type="checkbox"> only images with a problem</label><span id="count" class="muted"></span></div>
<div style="overflow-x:auto"><table><thead id="thead"></thead><tbody id="tbody"></tbody></table></div>
<div class="pager" id="tpager"></div></section>
<section id="images"><h2>Images</h2><p class="legend">axial, coronal, sagittal planes through the landmarks (radiological:
patient right on the left)<i style="background:#39e639"></i>landmark<i style="background:#ff00ff"></i>needs review
(cross); solid within 5 mm of the plane, faint further away. Same order and filter as the table.</p>
<div class="pager" id="cpager"></div><div class="cards" id="cards"></div><div class="pager" id="cpager2"></div></section>
</main>
<noscript><p style="padding:24px">The table and the image cards need JavaScript.</p></noscript>
<script id="data" type="application/json">%DATA%</script>
<script>
"use strict";
const D=JSON.parse(document.getElementById("data").textContent),R=D.records,M=D.measurements;
const ROWS=50,CARDS=24;let sortKey="rank",asc=true,tpage=0,cpage=0,view=R.slice();
const el=(t,a={},...k)=>{const e=document.createElement(t);for(const[n,v]of Object.entries(a)){if(n==="cls")e.className=v;
else if(n==="text")e.textContent=v;else e.setAttribute(n,v)}for(const c of k)e.append(c);return e};
const fmt=(v,d=1)=>v===null||v===undefined?"":Number(v).toFixed(d);
const conf=v=>v===null||v===undefined?"":v>=0.01||v===0?Number(v).toFixed(2):Number(v).toExponential(1);
const status=r=>r.error?"failed":r.warning?"warning":r.outliers.length?"outlier":r.nflag?"review":"ok";
const problem=r=>status(r)!=="ok";
const cols=[["rank","#"],["label","image"],["status","status"],["nflag","need review"],["minconf","min conf."]]
  .concat(M.map(m=>["m:"+m,m+" (mm)"]));
function value(r,k){if(k==="status")return["failed","warning","outlier","review","ok"].indexOf(status(r));
  if(k.startsWith("m:")){const v=r.meas[k.slice(2)];return v===null||v===undefined?Infinity:v}
  const v=r[k];return v===null||v===undefined?Infinity:v}
function refresh(){const q=document.getElementById("filter").value.trim().toLowerCase(),
  only=document.getElementById("problems").checked;
  view=R.filter(r=>(!only||problem(r))&&(!q||(r.label+" "+status(r)+" "+r.warning+" "+r.error+" "+r.flagged.join(" "))
    .toLowerCase().includes(q)));
  view.sort((a,b)=>{const x=value(a,sortKey),y=value(b,sortKey);const c=x<y?-1:x>y?1:a.rank-b.rank;return asc?c:-c});
  document.getElementById("count").textContent=view.length+" of "+R.length+" images";
  tpage=Math.min(tpage,Math.max(0,Math.ceil(view.length/ROWS)-1));cpage=Math.min(cpage,Math.max(0,Math.ceil(view.length/CARDS)-1));
  table();cards()}
function pager(id,page,per,go){const p=document.getElementById(id);p.replaceChildren();const n=Math.max(1,Math.ceil(view.length/per));
  const b=(t,to)=>{const x=el("button",{text:t});x.disabled=to<0||to>=n||to===page;x.onclick=()=>go(to);return x};
  p.append(b("\\u00ab first",0),b("\\u2039 prev",page-1),el("span",{text:"page "+(page+1)+" of "+n}),b("next \\u203a",page+1),b("last \\u00bb",n-1))}
function table(){const h=el("tr");for(const[k,t]of cols){const th=el("th",{text:t+(k===sortKey?(asc?" \\u25b2":" \\u25bc"):"")});
  th.onclick=()=>{asc=k===sortKey?!asc:true;sortKey=k;refresh()};h.append(th)}
  document.getElementById("thead").replaceChildren(h);const body=document.getElementById("tbody");body.replaceChildren();
  for(const r of view.slice(tpage*ROWS,(tpage+1)*ROWS)){const s=status(r),tr=el("tr");tr.onclick=()=>show(r.i);
    tr.append(el("td",{cls:"num",text:r.rank}),el("td",{text:r.label}),
      el("td",{cls:s==="failed"?"bad":s==="ok"?"":"warn",text:s,title:r.error||r.warning||""}),
      el("td",{cls:"num",text:r.error?"":r.nflag+" / "+r.n}),el("td",{cls:"num",text:conf(r.minconf)}));
    for(const m of M)tr.append(el("td",{cls:"num"+(r.outliers.includes(m)?" out":""),text:fmt(r.meas[m])}));body.append(tr)}
  pager("tpager",tpage,ROWS,p=>{tpage=p;table()})}
function card(r){const c=el("div",{cls:"card",id:"card-"+r.i});c.append(el("h3",{text:"#"+r.rank+"  "+r.label}));
  if(r.png){const a=el("a",{href:r.png,target:"_blank"});a.append(el("img",{src:r.png,loading:"lazy",alt:"three planes of "+r.label}));c.append(a)}
  if(r.error)c.append(el("div",{cls:"msg bad",text:r.error}));
  if(r.warning)c.append(el("div",{cls:"msg warn",text:"image warning: "+r.warning}));
  if(!r.error){c.append(el("div",{cls:"msg",text:r.nflag+" of "+r.n+" landmarks need review; lowest confidence "+conf(r.minconf)}));
    if(r.nflag&&r.nflag===r.n)c.append(el("div",{cls:"msg warn",text:"every landmark needs review"}));
    else if(r.nflag){const chips=el("div",{cls:"chips"});for(const f of r.flagged)chips.append(el("span",{text:f}));c.append(chips)}
    const ms=M.filter(m=>m in r.meas).map(m=>m+" "+fmt(r.meas[m])+" mm"+(r.outliers.includes(m)?" (outlier)":""));
    if(ms.length)c.append(el("div",{cls:"msg"+(r.outliers.length?" bad":""),text:ms.join(" \\u00b7 ")}));
    const f=el("div",{cls:"files"});for(const[k,v]of Object.entries(r.files))if(k!=="png")f.append(el("a",{href:v,text:k}));c.append(f)}
  c.append(el("div",{cls:"msg muted",text:r.source}));return c}
function cards(){const g=document.getElementById("cards");g.replaceChildren(...view.slice(cpage*CARDS,(cpage+1)*CARDS).map(card));
  const go=p=>{cpage=p;cards();document.getElementById("images").scrollIntoView()};pager("cpager",cpage,CARDS,go);pager("cpager2",cpage,CARDS,go)}
function show(i){let at=view.findIndex(r=>r.i===i);if(at<0){document.getElementById("filter").value="";
  document.getElementById("problems").checked=false;refresh();at=view.findIndex(r=>r.i===i)}
  cpage=Math.floor(at/CARDS);cards();const c=document.getElementById("card-"+i);c.classList.add("hl");c.scrollIntoView({block:"center"})}
document.getElementById("filter").oninput=()=>{tpage=cpage=0;refresh()};document.getElementById("problems").onchange=()=>{tpage=cpage=0;refresh()};
document.addEventListener("click",e=>{const t=e.target.closest("[data-i]");if(t){e.preventDefault();show(Number(t.getAttribute("data-i")))}});
refresh();
</script></body></html>
"""
