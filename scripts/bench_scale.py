"""Same-run ratios per round and slopes across database sizes, from saved bench results
(`bench.py scale bench-results/restore-*.json bench-results/backup-*.json`; scripts/bench
prints it after a run of several sizes).

- **Paired ratios**: on a shared machine the load moves from minute to minute, so each round's
  variants are compared with the peer *of the same round* (they ran one after another), and the
  median of those per-round ratios is reported beside the ratio of the medians.
- **Slopes**: for every variant and figure (wall time, time to serving, peak RSS of the main
  process), the least-squares line through the sizes' medians: seconds (or MiB) per GiB of
  database, and the intercept; with the figure extrapolated to 100 GiB and 1 TiB (a straight
  line: what is measured at 1 to 3 GiB says nothing of effects that appear only later).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

OURS_PROCS = {"ours": "prefect-dr", "peer": "aws", "floor": "pg_dump"}


def _main_proc(variant: str) -> str:
    return "prefect-dr" if variant.startswith(("ours", "base")) else OURS_PROCS.get(variant, "")


def paired_ratios(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{variant: {"wall": median over rounds of wall / the peer's wall in that round, and
    "serving" likewise for the watched time to serving when there is one}}."""
    rounds: dict[int, dict[str, dict[str, Any]]] = {}
    for r in result["runs"]:
        rounds.setdefault(int(r["run"]), {})[r["variant"]] = r
    out: dict[str, dict[str, list[float]]] = {}
    for runs in rounds.values():
        peer = runs.get("peer")
        if not peer:
            continue
        for variant, r in runs.items():
            if variant == "peer":
                continue
            row = out.setdefault(variant, {})
            row.setdefault("wall", []).append(r["wall_s"] / peer["wall_s"])
            served = r.get("watched_s") or r.get("serving_s")
            if served:
                row.setdefault("serving", []).append(served / peer["wall_s"])
    return {v: {k: round(statistics.median(xs), 3) for k, xs in row.items()}
            for v, row in out.items()}


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(slope, intercept) of the least-squares line, or None with fewer than two sizes."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return slope, my - slope * mx


def figures(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{variant: {figure: median}} of one result: wall, serving (watched), rss (MiB)."""
    out: dict[str, dict[str, float]] = {}
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in result["runs"]:
        by_variant.setdefault(r["variant"], []).append(r)
    for variant, runs in by_variant.items():
        row = {"wall": statistics.median(r["wall_s"] for r in runs)}
        served = [r.get("watched_s") or r.get("serving_s") for r in runs]
        if all(served):
            row["serving"] = statistics.median(served)  # type: ignore[type-var]
        name = _main_proc(variant)
        rss = [r["procs_hwm_kib"].get(name, 0) / 1024 for r in runs if name]
        if any(rss):
            row["rss"] = max(rss)
        out[variant] = row
    return out


def slopes(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{variant: {figure: {slope, intercept, at_100gib, at_1tib}}} over the results' sizes."""
    points: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for result in results:
        gib = result["database_size_bytes"] / 2**30
        for variant, row in figures(result).items():
            for fig, value in row.items():
                points.setdefault(variant, {}).setdefault(fig, []).append((gib, value))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for variant, per in points.items():
        for fig, pts in per.items():
            fit = _fit(pts)
            if fit is None:
                continue
            slope, icpt = fit
            out.setdefault(variant, {})[fig] = {
                "slope": round(slope, 3), "intercept": round(icpt, 2),
                "at_100gib": round(icpt + 100 * slope, 1),
                "at_1tib": round(icpt + 1024 * slope, 1)}
    return out


UNITS = {"wall": "s/GiB", "serving": "s/GiB", "rss": "MiB/GiB"}


def scale_report(paths: list[Path]) -> None:
    """Print the paired ratios of every result and the slopes of each kind (backup,
    restore, verify) across the results' sizes."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(paths):
        result = json.loads(path.read_text())
        kinds.setdefault(result["params"]["what"], []).append(result)
        gib = result["database_size_bytes"] / 2**30
        print(f"## {path.name}: {gib:.2f} GiB, paired ratios (median over rounds of "
              "variant / the same round's peer)\n")
        print("| variant | wall vs peer | serving (watched) vs peer |\n|---|---|---|")
        for variant, row in paired_ratios(result).items():
            print(f"| {variant} | {row.get('wall', '-')} | {row.get('serving', '-')} |")
        print()
    for kind, results in kinds.items():
        fits = slopes(results)
        if not fits:
            continue
        sizes = ", ".join(f"{r['database_size_bytes'] / 2**30:.2f}" for r in results)
        print(f"## {kind}: slopes over {sizes} GiB (least squares on the medians)\n")
        print("| variant | figure | slope | intercept | at 100 GiB | at 1 TiB |\n"
              "|---|---|---|---|---|---|")
        for variant, per in fits.items():
            for fig, f in per.items():
                print(f"| {variant} | {fig} | {f['slope']} {UNITS[fig]} | {f['intercept']} | "
                      f"{f['at_100gib']} | {f['at_1tib']} |")
        print()
