"""One compact table per DG-benchmark arm from its results (for the README).

    python benchmarks/dg_summary.py benchmarks/results/dg-ours
    python benchmarks/dg_summary.py benchmarks/results/dg-paper benchmarks/results/dg-paper-sources

Rows of several folders of the same arm (same domains and seeds) are put in one table. Columns: MRE
(mm, mean +- std over seeds) on the source-like set and on groups of unseen domains (each group's
value is the mean over its domains, per seed), and the stroke T1w-vs-T2w median disagreement.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

GROUPS = {
    "source (deformed T1w)": ("source (deformed T1w)",),
    "sites A-C (bias, blur, thick)": ("site-A bias+noise", "site-B blur+gamma", "site-C thick slices"),
    "sites D-E (inverted, remapped)": ("site-D inverted contrast", "site-E remapped contrast"),
    "real geometry, T1w": ("real geometry, T1w",),
    "real geometry, T2/FLAIR/PD-like": ("real geometry, T2-like", "real geometry, FLAIR-like", "real geometry, PD-like"),
}


def load(folders: list[Path]) -> dict:
    merged: dict = {"domains": {}, "stroke_t1_vs_t2": {}, "per_seed": {}}
    for folder in folders:
        r = json.loads((folder / "dg_results.json").read_text())
        merged["arm"], merged["preset"], merged["seeds"] = r.get("arm"), r["preset"], r["seeds"]
        for domain, rows in r["domains"].items():
            merged["domains"].setdefault(domain, {}).update(rows)
        merged["stroke_t1_vs_t2"].update(r.get("stroke_t1_vs_t2", {}))
        merged["per_seed"].update(r.get("per_seed_mre") or per_seed_from_log(folder / "benchmark.log", r["domains"]))
    return merged


def per_seed_from_log(log: Path, domains: dict) -> dict:
    """Per-seed MREs from the benchmark log's lines (for results written before ``per_seed_mre``)."""
    out: dict = {}
    if not log.is_file():
        return out
    for line in log.read_text().splitlines():
        m = re.match(r"^(.*) seed (\d+): (.*) \(\d+ s\)$", line)
        if not m:
            continue
        for domain in domains:
            v = re.search(re.escape(domain) + r" ([-\d.]+|nan|inf)", m.group(3))
            if v:
                out.setdefault(m.group(1), {}).setdefault(domain, []).append(float(v.group(1)))
    return out


def table(results: dict) -> str:
    methods = list(next(iter(results["domains"].values())))
    head = ["method", *GROUPS, "stroke T1 vs T2 median"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for method in methods:
        cells = [method]
        for domains in GROUPS.values():
            per_seed = [results["per_seed"].get(method, {}).get(d) for d in domains if d in results["domains"]]
            if per_seed and all(p is not None for p in per_seed):
                values = np.mean(np.array(per_seed), axis=0)
                cells.append(f"{values.mean():.2f} +- {values.std():.2f}")
            else:  # older results without per-seed values: the mean of the domain means
                rows = [results["domains"][d][method] for d in domains if d in results["domains"]]
                cells.append(f"{np.mean([r['mre_mean'] for r in rows]):.2f}" if rows else "-")
        s = results["stroke_t1_vs_t2"].get(method)
        cells.append(f"{s['median_mm_mean']:.2f} +- {s['median_mm_std']:.2f}" if s else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(load([Path(p) for p in sys.argv[1:]])))
