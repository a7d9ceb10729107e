"""Soak run of the live demos: every app whose spec declares a soak (edgekit.apps.spec.SoakSpec; today superres,
pose and asr) runs `edgekit APP live`, a video app on a looped video played at its frame rate, an audio app on a
looped WAV replayed in real time, each in its own process for a fixed time. The driver
samples every process's RSS (psutil), reads the frames (or seconds of audio) each app processed and dropped from its
--stats file, and reports memory growth after warm-up and drops per minute. `make soak` runs it.

    python -m edgekit.bench.soak --seconds 600 --report reports/soak.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .. import paths
from ..apps import registry
from ..apps.spec import SoakSpec

MAX_GROWTH_PCT = 5.0
STORM_POINTS = 20.0  # a minute whose drop rate exceeds the run's median minute by more than this: a storm
STARTUP_ALLOWANCE = 900.0  # seconds a process may take beyond --seconds (model load) before it is stopped


@dataclass
class Run:
    app: str
    command: list[str]
    stats: Path
    log: Path
    process: subprocess.Popen | None = None
    started: float = 0.0
    ended: float | None = None
    rss: list[tuple[float, int]] = field(default_factory=list)  # (epoch seconds, bytes)


def soak_apps() -> dict[str, SoakSpec]:
    """{app: how it soaks}, for every registered app that declares a soak, in registry order."""
    return {app.name: app.soak for app in registry.apps() if app.soak is not None}


def main(argv: list[str] | None = None) -> int:
    apps = soak_apps()
    args = _parser(apps).parse_args(argv)
    unknown = [app for app in args.apps if app not in apps]
    if unknown:
        raise SystemExit(f"soak: unknown app {unknown[0]!r}; choose from {', '.join(apps)}")
    video = Path(args.video or paths.data("pose", "vtest.avi"))
    audio = Path(args.audio or paths.data("asr", "librivox", "sense_and_sensibility_01_austen_64kb-0870.wav"))
    media = {apps[app].media for app in args.apps}
    for path in ((video,) if "video" in media else ()) + ((audio,) if "audio" in media else ()):
        if not path.is_file():
            print(f"soak: {path} not found; set EDGEKIT_DATA or pass --video/--audio.", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="edgekit-soak-") as tmp:
        runs = [_run_for(app, apps[app], args, video, audio, Path(tmp)) for app in args.apps]
        groups = [runs] if args.concurrent else [[r] for r in runs]
        host = []  # (1-minute load average, available memory bytes) while the apps run: a busy host explains a lot
        for group in groups:
            host += _drive(group, args)
        report = {"seconds": args.seconds, "warmup": args.warmup, "threads": args.threads,
                  "concurrent": args.concurrent, "video": str(video), "audio": str(audio),
                  "host": {"cpus": os.cpu_count(), "load_avg_1m_max": max(load for load, _ in host),
                           "mem_available_min_mb": _mb(min(mem for _, mem in host)),
                           "mem_total_mb": _mb(psutil.virtual_memory().total)},
                  "criteria": {"max_growth_pct": args.max_growth, "storm_points": STORM_POINTS},
                  "apps": {r.app: _analyse(r, args) for r in runs}}
    report["passed"] = all(a["passed"] for a in report["apps"].values())
    if args.report:
        out = Path(args.report)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(out.name + ".tmp")
        tmp_out.write_text(json.dumps(report, indent=2))
        tmp_out.replace(out)
    print(table(report))
    return 0 if report["passed"] else 1


def _parser(apps: dict[str, SoakSpec]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgekit.bench.soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0, help="live run length of each app")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds after the stream starts before RSS is "
                                                               "taken as the baseline")
    p.add_argument("--apps", type=lambda s: s.split(","), default=list(apps), help="comma-separated: "
                                                                                   + ",".join(apps))
    p.add_argument("--threads", type=int, default=1, help="PyTorch/OpenMP threads per app process")
    p.add_argument("--concurrent", action=argparse.BooleanOptionalAction, default=True,
                   help="run the apps at the same time (else one after another)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between RSS samples")
    p.add_argument("--bucket", type=float, default=60.0, help="seconds per row of the drop table")
    p.add_argument("--max-growth", type=float, default=MAX_GROWTH_PCT, help="RSS growth after warm-up that fails")
    p.add_argument("--video", help="video for the video apps; unset: $EDGEKIT_DATA/pose/vtest.avi")
    p.add_argument("--audio", help="WAV for the audio apps (asr); unset: a LibriVox clip under $EDGEKIT_DATA/asr")
    p.add_argument("--report", default="reports/soak.json", help="JSON report to write ('' for none)")
    return p


def _run_for(app: str, soak: SoakSpec, args, video: Path, audio: Path, tmp: Path) -> Run:
    stats, log = tmp / f"{app}.jsonl", tmp / f"{app}.log"
    base = [sys.executable, "-m", "edgekit.cli", app, "live", "--loop", "--duration", str(args.seconds),
            "--stats", str(stats)]
    if soak.media == "audio":
        command = base + ["--source", str(audio), "--threads", str(args.threads), "--json"]
    else:
        # e.g. super-resolution: low-resolution input, a downscaled copy of the video
        source = _downscaled(video, tmp / f"{app}-input.mp4", soak.downscale) if soak.downscale > 1 else video
        command = base + ["--source", str(source), "--realtime", "--headless", "-o", str(tmp / f"{app}.mp4")]
    return Run(app, command + list(soak.extra_args), stats, log)


def _downscaled(video: Path, out: Path, factor: int) -> Path:
    """A copy of `video` at 1/factor of its size, H.264 like every video edgekit writes."""
    import cv2

    from edgekit.apps.video import VideoWriter

    reader = cv2.VideoCapture(str(video))
    fps = reader.get(cv2.CAP_PROP_FPS) or 10.0
    size = (int(reader.get(cv2.CAP_PROP_FRAME_WIDTH)) // factor, int(reader.get(cv2.CAP_PROP_FRAME_HEIGHT)) // factor)
    writer = VideoWriter(out, fps, *size)
    try:
        ok, frame = reader.read()
        while ok:
            writer.write(cv2.cvtColor(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
            ok, frame = reader.read()
    finally:
        reader.release()
        writer.close()
    return out


def _drive(runs: list[Run], args) -> list[tuple[float, int]]:
    env = os.environ | {name: str(args.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                             "OPENBLAS_NUM_THREADS")}
    for run in runs:
        run.started = time.time()
        with open(run.log, "w") as log:
            run.process = subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + args.seconds + STARTUP_ALLOWANCE
    host = []
    while any(r.ended is None for r in runs):
        host.append((os.getloadavg()[0], psutil.virtual_memory().available))
        for run in runs:
            if run.ended is not None:
                continue
            try:
                run.rss.append((time.time(), psutil.Process(run.process.pid).memory_info().rss))
            except psutil.NoSuchProcess:
                pass
            if run.process.poll() is not None:
                run.ended = time.time()
            elif time.time() > deadline:
                run.process.terminate()  # SIGTERM; the report shows it did not finish by itself
                try:
                    run.process.wait(30)
                except subprocess.TimeoutExpired:
                    run.process.kill()
                    run.process.wait()
                run.ended = time.time()
        time.sleep(args.interval)
    return host


def _analyse(run: Run, args) -> dict:
    lines = [json.loads(line) for line in run.stats.read_text().splitlines()] if run.stats.is_file() else []
    log = run.log.read_text(errors="replace")
    result = {"command": " ".join(run.command[1:]), "returncode": run.process.returncode,
              "wall_s": round(run.ended - run.started, 1), "log_tail": log[-2000:]}
    if not lines:
        return result | {"passed": False, "failure": "no --stats lines: the stream never started"}
    stream_start, stream_end = lines[0]["time"], lines[-1]["time"]
    last = lines[-1]
    result |= {"unit": last["unit"], "stream_s": round(last["t"], 1), "processed": last["processed"],
               "dropped": last["dropped"], "end": last.get("end")}
    samples = [(t - stream_start, rss) for t, rss in run.rss if stream_start <= t <= stream_end]
    after = [(t, rss) for t, rss in samples if t >= args.warmup]
    failures = []
    if run.process.returncode != 0 or "Traceback" in log:
        failures.append(f"exit code {run.process.returncode}" + (", traceback in the log" if "Traceback" in log
                                                                 else ""))
    if not last.get("final") or last.get("end") != "duration":
        failures.append(f"stream ended early ({last.get('end')})")
    if len(after) >= 2:
        span = after[-1][0] - after[0][0]
        window = min(60.0, span / 4)  # median over a window: one sample may catch a frame's temporaries
        warm = statistics.median(rss for t, rss in after if t <= after[0][0] + window)
        end = statistics.median(rss for t, rss in after if t >= after[-1][0] - window)
        growth = 100 * (end - warm) / warm
        result |= {"rss_warm_mb": _mb(warm), "rss_end_mb": _mb(end), "rss_max_mb": _mb(max(r for _, r in after)),
                   "rss_growth_pct": round(growth, 2), "rss_slope_mb_per_min": round(_slope(after) * 60 / 2**20, 3)}
        if growth >= args.max_growth:
            failures.append(f"RSS grew {growth:.1f}% after warm-up (limit {args.max_growth}%)")
    else:
        failures.append("too few RSS samples after warm-up (make --seconds longer than --warmup)")
    buckets = _buckets(lines, args.bucket)
    steady = [b for b in buckets if b["start_s"] >= args.warmup] or buckets  # a short run: all of it
    median_rate = statistics.median(b["drop_rate"] for b in steady) if steady else 0.0
    storms = [b["start_s"] for b in steady if 100 * (b["drop_rate"] - median_rate) > STORM_POINTS]
    result |= {"per_bucket": buckets, "median_drop_rate": round(median_rate, 4), "storm_buckets": storms,
               "rss_samples_mb": [[round(t, 1), _mb(rss)] for t, rss in samples]}
    if storms:
        failures.append(f"dropped-frame storm in the buckets starting at {storms} s")
    if not last["processed"]:
        failures.append("nothing processed")
    return result | {"passed": not failures, "failures": failures}


def _buckets(lines: list[dict], size: float) -> list[dict]:
    """Processed/dropped per `size` seconds of stream, from the cumulative counts (interpolated at the edges)."""
    ts = [line["t"] for line in lines]

    def at(key: str, t: float) -> float:
        for (t0, a), (t1, b) in zip(zip(ts, (line[key] for line in lines)),
                                    zip(ts[1:], (line[key] for line in lines[1:]))):
            if t0 <= t <= t1:
                return a + (b - a) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
        return lines[-1][key] if t > ts[-1] else lines[0][key]

    rows, start = [], 0.0
    while start < ts[-1] - 1e-6:
        stop = min(start + size, ts[-1])
        processed = at("processed", stop) - at("processed", start)
        dropped = at("dropped", stop) - at("dropped", start)
        total = processed + dropped
        rows.append({"start_s": round(start, 1), "seconds": round(stop - start, 1), "processed": round(processed, 1),
                     "dropped": round(dropped, 1), "drop_rate": round(dropped / total, 4) if total else 0.0})
        start = stop
    return rows


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares bytes per second."""
    n = len(points)
    mt, mr = sum(t for t, _ in points) / n, sum(r for _, r in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (r - mr) for t, r in points) / var if var else 0.0


def _mb(nbytes: float) -> float:
    return round(nbytes / 2**20, 1)


def table(report: dict) -> str:
    host = report["host"]
    lines = [f"soak: {report['seconds']:g} s per app, warm-up {report['warmup']:g} s, {report['threads']} thread(s) "
             f"each, {'concurrent' if report['concurrent'] else 'one after another'}; host: {host['cpus']} CPUs, "
             f"load average up to {host['load_avg_1m_max']:.1f}, available memory down to "
             f"{host['mem_available_min_mb']:.0f} of {host['mem_total_mb']:.0f} MB",
             f"{'app':<9} {'exit':>4} {'RSS warm MB':>11} {'RSS end MB':>10} {'max MB':>7} {'growth':>7} "
             f"{'processed':>10} {'dropped':>9} {'unit':<17} result"]
    for app, r in report["apps"].items():
        lines.append(f"{app:<9} {str(r.get('returncode')):>4} {r.get('rss_warm_mb', '-'):>11} "
                     f"{r.get('rss_end_mb', '-'):>10} {r.get('rss_max_mb', '-'):>7} "
                     f"{_pct(r.get('rss_growth_pct')):>7} {_num(r.get('processed')):>10} "
                     f"{_num(r.get('dropped')):>9} {r.get('unit', '-'):<17} "
                     + ("pass" if r["passed"] else "FAIL: " + "; ".join(r.get("failures") or [r.get("failure")])))
    for app, r in report["apps"].items():
        if r.get("per_bucket"):
            lines.append(f"{app} per {report_bucket(r)}: " + "  ".join(
                f"[{b['start_s']:g}s] {_num(b['processed'])}/{_num(b['dropped'])} ({100 * b['drop_rate']:.0f}%)"
                for b in r["per_bucket"]))
    lines.append("(per bucket: processed/dropped (drop rate))")
    return "\n".join(lines)


def report_bucket(r: dict) -> str:
    return f"{r['per_bucket'][0]['seconds']:g} s"


def _pct(v) -> str:
    return "-" if v is None else f"{v:+.1f}%"


def _num(v) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, int) else f"{v:.1f}"


if __name__ == "__main__":
    sys.exit(main())
