"""Benchmark report: JSON (everything), Markdown table (for the README) and PNG plots."""
from __future__ import annotations

import json
from pathlib import Path

from .. import backends


def write_report(report: dict, output: Path) -> None:
    """bench.json, bench.md and the plots; adds report["summary"] (`summarize`) first, so both files carry it."""
    report["summary"] = summarize(report["rows"])
    output.mkdir(parents=True, exist_ok=True)
    _atomic_write(output / "bench.json", json.dumps(report, indent=2))
    _atomic_write(output / "bench.md", markdown(report))
    plot_models(report["rows"], output / "latency_per_backend.png")
    plot_kernels(report["rows"], report["limits"], output / "kernel_efficiency.png")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _fmt(v, spec=".3g") -> str:
    return "" if v is None else format(v, spec)


def summarize(rows: list[dict]) -> list[dict]:
    """Per model case (or app pipeline) and precision: the fastest compiled backend of this run and every timed
    implementation's p50 divided by that backend's p50 (peers such as eager included); failed backends with why."""
    compiled = set(backends.names())
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["suite"] in ("models", "app"):
            groups.setdefault((r["suite"], r["case"], r["precision"]), []).append(r)
    summary = []
    for (suite, case, precision), group in groups.items():
        timed = {r["impl"]: r["p50_ms"] for r in group if r.get("p50_ms") is not None}
        ours = {impl: ms for impl, ms in timed.items() if impl in compiled}
        failed = {r["impl"]: r["error"] for r in group if r.get("error")}
        if not ours and not failed:
            continue  # no compiled backend in this group (e.g. peers only)
        best = min(ours, key=ours.get) if ours else None
        summary.append({"suite": suite, "case": case, "precision": precision, "best": best,
                        "best_p50_ms": ours.get(best), "ratio": {impl: ms / ours[best] for impl, ms in timed.items()}
                        if best else {}, "failed": failed})
    return summary


def summary_markdown(summary: list[dict]) -> list[str]:
    """The per-model table: one column per registered backend (time ÷ the fastest backend), then the peers."""
    names = backends.names()
    lines = ["Per model: the fastest backend of this run, and each implementation's p50 ÷ its p50.", "",
             "| case | precision | fastest backend | p50 ms | " + " | ".join(names) + " | peers |",
             "|---|---|---|---|" + "---|" * len(names) + "---|"]
    for s in summary:
        cells = [f"{s['ratio'][n]:.2f}" if n in s["ratio"] else "failed" if n in s["failed"] else ""
                 for n in names]
        peers = ", ".join(f"{impl} {r:.2f}" for impl, r in s["ratio"].items() if impl not in names)
        lines.append(f"| {s['case']} | {s['precision']} | {s['best'] or 'none'} | {_fmt(s['best_p50_ms'])} | "
                     + " | ".join(cells) + f" | {peers} |")
    return lines + [""]


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; {m['date']}.", ""]
    if report.get("seconds"):
        lines += ["Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()), ""]
    limits = report.get("limits", {})
    if limits:
        lines += ["Measured limits: " + ", ".join(f"{k} {_fmt(v, '.1f')}" for k, v in limits.items()
                                                  if k != "threads"), ""]
    if report.get("device"):
        lines += [f"Devices: {report['device']} (each row names the device that ran it); not run there: "
                  f"{', '.join(report.get('skipped', [])) or 'nothing'}.", ""]
    lines += summary_markdown(report.get("summary") or summarize(report["rows"]))
    on_device = any(r.get("device") for r in report["rows"])

    def device(r: dict) -> str:  # the device column, only in reports of runs on devices
        return f" {r.get('device') or ''} |" if on_device else ""

    lines += ["| suite | case | impl | precision | shape | p50 ms | per unit or FPS | GFLOP/s or GB/s | % of limit | "
              "payload KiB | time ÷ best peer |" + (" device |" if on_device else ""),
              "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if on_device else "")]
    for r in report["rows"]:
        if r.get("error"):
            lines.append(f"| {r['suite']} | {r['case']} | {r['impl']} | {r['precision']} | {r['shape']} | "
                         f"failed: {r['error']} | | | | | |" + device(r))
            continue
        unit = next(((k, v) for k, v in r.items() if k.startswith("ms_per_")), None)
        per_unit = f"{r['fps']:.1f} FPS" if r.get("fps") else f"{unit[1]:.3g} ms/{unit[0][7:]}" if unit else ""
        rate = r.get("gflops") or r.get("gbs")
        frac = r.get("frac_peak") if r.get("gflops") else r.get("frac_bandwidth")
        lines.append(
            f"| {r['suite']} | {r['case']} | {r['impl']} | {r['precision']} | {r['shape']} | {_fmt(r['p50_ms'])} | "
            f"{per_unit} | {_fmt(rate, '.1f')} | "
            f"{_fmt(frac * 100 if frac else None, '.0f')} | "
            f"{_fmt(r['payload_bytes'] / 1024 if r.get('payload_bytes') else None, '.0f')} | "
            + (f"{r['ratio_to_best_peer']:.2f} ({r['peer']}) |" if r.get("peer") else " |") + device(r))
    return "\n".join(lines) + "\n"


def plot_models(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compiled = set(backends.names())  # green: edgekit's artifacts; grey: their peers
    rows = [r for r in rows if r["suite"] == "models" and r["p50_ms"] is not None]
    cases = sorted({r["case"] for r in rows})
    fig, axes = plt.subplots(len(cases) or 1, 1, figsize=(9, 2.6 * max(1, len(cases))), squeeze=False)
    for ax, case in zip(axes[:, 0], cases):
        sub = [r for r in rows if r["case"] == case]
        labels = [f"{r['impl']}\n{r['precision']}" for r in sub]
        ax.barh(labels, [r["p50_ms"] for r in sub], color=["#2a7" if r["impl"] in compiled else "#888"
                                                           for r in sub])
        ax.set_xscale("log")
        ax.set_title(f"{case}: p50 latency (ms, log scale; grey = peers)", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kernels(rows: list[dict], limits: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["suite"].startswith("kernel:")]
    fig, ax = plt.subplots(figsize=(9, 0.3 * max(8, len(rows)) + 1))
    labels = [f"{r['suite'][7:]} {r['case']} · {r['impl']}" for r in rows]
    fracs = [100 * ((r.get("frac_peak") if r.get("gflops") else r.get("frac_bandwidth")) or 0) for r in rows]
    ax.barh(labels, fracs, color=["#2a7" if r["impl"].startswith("edgekit") else "#888" for r in rows])
    ax.axvline(100, color="k", lw=0.8)
    ax.set_xlabel("% of the measured roofline (SGEMM peak for compute-bound, copy bandwidth for memory-bound)")
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
