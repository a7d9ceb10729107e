"""`edgekit` command line. Every user error ends in one readable paragraph and a non-zero exit, no traceback.

Apps are not listed here: their subcommands and models come from the app registry (edgekit.apps.registry)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from . import backends
from .apps import registry
from .apps.spec import CompileSpec
from .errors import EdgekitError

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="edgekit", description="Compile models for edge devices and run them.",
                                     formatter_class=fmt)
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("targets", help="print the target table", formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("compile", help="compile a model into an artifact directory", formatter_class=fmt)
    p.add_argument("--model", required=True, help="APP[.NAME] (see `edgekit models`), FILE.py:FUNC (FUNC() "
                                                  "returns (module, example_inputs)), model.onnx or model.tflite")
    p.add_argument("--target", default="host", help="target name (see `edgekit targets`)")
    p.add_argument("--backend", required=True, choices=backends.names(), help="backend (see `edgekit targets`)")
    p.add_argument("--output", "-o", required=True, help="artifact directory to create")
    p.add_argument("--name", help="model name recorded in the manifest (default: from --model)")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    # SUPPRESS: the help would otherwise print the stored value ("default: True") beside a flag that turns it off
    p.add_argument("--no-verify", dest="check", action="store_false", default=argparse.SUPPRESS,
                   help="skip running the artifact against the reference (verification runs by default)")
    p.add_argument("--atol", type=float, help="verify: absolute tolerance (default 1e-4, or the app model's own)")
    p.add_argument("--rtol", type=float, help="verify: relative tolerance (default 1e-4, or the app model's own)")
    p.add_argument("--quantize", choices=["int8", "int8-weight-only", "int4-weight-only"],
                   help="int8: static post-training (needs --calibration); *-weight-only: Linear weights")
    p.add_argument("--calibration", help="directory of samples: .npy per sample (one input) or .npz with "
                                         "input0, input1, ...; the last quarter is held out for the accuracy figure. "
                                         "Without it an app model uses its own recipe (superres: Set14 tiles, PSNR)")
    p.add_argument("--max-drop", type=float, help="fail if the accuracy metric drops more than this (without a "
                                                  "task metric: 1 - cosine similarity to fp32)")
    p.add_argument("--auto-fallback", action="store_true", help="keep the most sensitive layers in float until "
                                                                "the drop is within --max-drop")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("models", help="list the apps' models that `compile --model` accepts", formatter_class=fmt)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("run", help="run an artifact on .npy inputs", formatter_class=fmt)
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--input", "-i", action="append", default=[], help=".npy file, once per model input, in order")
    p.add_argument("--output", "-o", required=True, help=".npz file to write (arrays out0, out1, ...)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="time an artifact on seeded random inputs, or run the benchmark suite",
                       formatter_class=fmt)
    p.add_argument("artifact", nargs="?", help="artifact directory (or use --suite)")
    p.add_argument("--suite", choices=["all"], help="every model and kernel against its peers -> reports/")
    p.add_argument("--filter", help="suite: only cases whose name matches this regular expression")
    p.add_argument("--report-dir", default="reports", help="suite: where bench.json/bench.md/plots go")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--iters", type=int, default=20, help="timed runs")
    p.add_argument("--device", help="run on a remote device: rpc://HOST:PORT (TVM RPC server)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="print an artifact's manifest after checking it", formatter_class=fmt)
    p.add_argument("artifact", help="artifact directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("paths", help="where edgekit finds data and weights and keeps its caches",
                       formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_paths)

    p = sub.add_parser("demo", help="compile the bundled model with every backend for host and compare",
                       formatter_class=fmt)
    p.add_argument("--output", default="out/demo", help="where the demo artifacts go")
    p.set_defaults(func=lambda a: importlib.import_module("edgekit.demo").run(Path(a.output)))

    _register_optional(sub, "edgekit.device_cli")
    for app in registry.apps():  # each app registers its own subcommand
        app.register_cli(sub)
    return parser


def _register_optional(sub, module: str) -> None:
    """Subcommands of parts that may not be installed in a given checkout (device tools)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return
        raise
    mod.register(sub)


def cmd_targets(args) -> int:
    from .targets import TARGETS

    rows = [{**t.as_row(), "backends": ",".join(backends.for_target(t))} for t in TARGETS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgekit targets")
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    Console(width=200).print(table)
    return 0


def cmd_paths(args) -> int:
    from .paths import table

    rows = table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(map(len, rows))
    for what, row in rows.items():
        print(f"{what:<{width}}  {row['path']}  (${row['env']})")
    return 0


def resolve_model(spec: str) -> CompileSpec | str:
    """What `edgekit compile --model` compiles: an app model's CompileSpec for APP or APP.NAME (APP alone: the
    app's default model), else the spec itself (a file: FILE.py:FUNC, model.onnx, model.tflite)."""
    if spec.endswith((".onnx", ".tflite", ".py")) or ":" in spec or "/" in spec:
        return spec
    app_name, _, name = spec.partition(".")
    try:
        app = registry.get(app_name)
    except registry.UnknownApp as exc:
        raise EdgekitError(f"--model {app_name!r}: no such app or file. Apps: {', '.join(exc.valid)}; or pass "
                           "FILE.py:FUNC, model.onnx, model.tflite.") from None
    models = app.models()
    name = name or app.default_model_name(models) or ""
    if name not in models:
        choices = ", ".join(entry.qualified_name for entry in models.values())
        raise EdgekitError(f"--model {spec!r}: choose one of {choices}.")
    return models[name]()


def cmd_models(args) -> int:
    for app in registry.apps():
        for entry in app.models().values():
            print(entry.qualified_name)
    return 0


def cmd_compile(args) -> int:
    from .compile import compile_model

    resolved = resolve_model(args.model)
    app_model = resolved if isinstance(resolved, CompileSpec) else None
    tolerance = app_model.tolerance.options() if app_model else {}
    tolerance.update({k: getattr(args, k) for k in ("atol", "rtol") if getattr(args, k) is not None})
    # an app model's int8 recipe (its calibration data, task metric and budget) when no --calibration is given
    recipe = (app_model.int8() if args.quantize == "int8" and args.calibration is None and app_model and
              app_model.int8 else None)
    model, example_inputs = (app_model.module, app_model.example_inputs) if app_model else (resolved, None)
    out = compile_model(model, example_inputs, target=args.target, backend=args.backend, output=args.output,
                        name=args.name or (args.model if app_model else None),
                        force=args.force, check=getattr(args, "check", True), progress=True, **tolerance,
                        quantize=args.quantize, calibration=recipe.calibration if recipe else args.calibration,
                        max_drop=(recipe.max_drop if recipe else None) if args.max_drop is None else args.max_drop,
                        auto_fallback=args.auto_fallback or bool(recipe and recipe.auto_fallback),
                        task_metric=recipe.task_metric if recipe else None)
    from .artifact import read_manifest

    v = read_manifest(out).verify
    detail = f"max abs err {v['max_abs_err']:.3g} on {v['where']}" if v.get("status") == "pass" else v.get("reason")
    print(f"wrote {out} (verify: {v['status']}; {detail})")
    q = read_manifest(out).quantization
    if q:
        a = q["accuracy"]
        print(f"{q['scheme']}: {a['metric']} {a['quantized']:.6g} vs fp32 {a['fp32']:.6g} (drop {a['drop']:.3g}), "
              f"output SNR {a['snr_db']:.1f} dB; float layers: {', '.join(q['float_layers']) or 'none'}")
    return 0


def cmd_run(args) -> int:
    import numpy as np

    from . import load

    model = load(args.artifact)
    inputs = [_load_npy(p) for p in args.input]
    outputs = model.run(inputs)
    out = Path(args.output)
    tmp = out.with_name(out.name + ".partial.npz")
    np.savez(tmp, **{f"out{i}": y for i, y in enumerate(outputs)})
    tmp.replace(out)
    print(f"wrote {out}: " + ", ".join(f"out{i} {y.dtype}{list(y.shape)}" for i, y in enumerate(outputs)))
    return 0


def _load_npy(path: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise EdgekitError(f"{path}: input file not found.") from None
    except ValueError as exc:
        raise EdgekitError(f"{path}: not a readable .npy array ({exc}). Save inputs with numpy.save.") from None


def cmd_bench(args) -> int:
    if args.suite:
        from .bench.suite import run

        report = run(Path(args.report_dir), args.filter, iters=args.iters)
        print(f"wrote {args.report_dir}/bench.json, bench.md and plots ({len(report['rows'])} rows)")
        return 0
    if not args.artifact:
        raise EdgekitError("give an artifact directory to time, or --suite all for the benchmark suite.")
    if args.device:
        from .runtimes.rpc import bench_remote

        stats = bench_remote(Path(args.artifact), args.device, warmup=args.warmup, iters=args.iters)
    else:
        from . import load

        model = load(args.artifact)
        stats = model.benchmark(warmup=args.warmup, iters=args.iters)
        m = model.manifest
        stats = {"model": m.model, "backend": m.backend, "target": m.target, "precision": m.precision, **stats}
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    return 0


def cmd_info(args) -> int:
    from .artifact import load_verified

    print(load_verified(args.artifact).to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
