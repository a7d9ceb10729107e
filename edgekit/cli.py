"""`edgekit` command line. Every user error ends in one readable paragraph and a non-zero exit, no traceback.

Apps are not listed here: their subcommands and models come from the app registry (edgekit.apps.registry)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from . import __version__, backends
from . import options as common_options
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
        from .apps import media

        common_options.configure(args)  # -v/-q, --threads (before torch or a runtime loads), outputs writable
        media.configure(args)  # --max-pixels / --max-seconds of this command, defaults otherwise
        return int(args.func(args) or 0)
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # only the known classes of known_failure; anything else re-raised
        message = known_failure(exc, args)
        if message is None:
            raise  # a bug in edgekit: the traceback is the report
        print(f"edgekit: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


# Where a runtime or file parser raises its own exception types (or plain RuntimeError / ValueError from native
# code) on a damaged model or a hostile input: the innermost frame is in one of these modules.
RUNTIME_LAYERS = ("edgekit.runtimes.", "edgekit.compile.source", "edgekit.compile.tflite_import", "onnxruntime",
                  "onnx", "tvm", "tvm_ffi", "executorch", "ai_edge_litert", "flatbuffers", "google.protobuf")
RUNTIME_TYPES = ("onnxruntime.", "onnx.", "tvm.", "tvm_ffi.", "executorch.", "google.protobuf.")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p.rstrip(".") or module.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def known_failure(exc: BaseException, args=None) -> str | None:
    """One readable paragraph for a failure a user causes with a file (no space left, a damaged model the runtime
    rejects, memory); None for anything else, which is a bug and keeps its traceback."""
    where = getattr(args, "artifact", None) or getattr(args, "model", None) or "edgekit"
    if isinstance(exc, MemoryError):
        return (f"{where}: not enough memory for this model or input. Use smaller inputs, or a machine with "
                "more memory.")
    if isinstance(exc, OSError) and (exc.filename or exc.filename2):
        name = exc.filename2 or exc.filename
        return (f"{name}: {exc.strerror or exc}. Check the path exists, is a file (not a folder) where a file is "
                "meant, and that this user may read or write it.")
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    innermost = frames[-1] if frames else ""
    from_type = type(exc).__module__.startswith(RUNTIME_TYPES)
    from_layer = isinstance(exc, (RuntimeError, ValueError)) and _within(innermost, RUNTIME_LAYERS)
    # a runtime library's own lookups on a model it cannot use (TVM: "Module has no function 'vm_load_executable'")
    from_library = isinstance(exc, (AttributeError, KeyError, IndexError, TypeError)) and _within(
        innermost, RUNTIME_TYPES)
    if not (from_type or from_layer or from_library):
        return None
    text = " ".join(str(exc).split())
    text = text if len(text) <= 400 else text[:400] + " ..."
    return (f"{where}: the runtime or model parser refused it ({type(exc).__name__}: {text}). The model file is "
            "damaged, hostile or made for another runtime version: recompile it with this edgekit, or check the "
            "inputs match `edgekit info`.")


def build_parser() -> argparse.ArgumentParser:
    from .runtimes.rpc import SCHEMES as DEVICE_HELP  # the TVM device addresses, described where they are parsed

    fmt = common_options.HelpFormatter
    parser = argparse.ArgumentParser(prog="edgekit", description="Compile models for edge devices and run them.",
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("targets", help="print the target table", formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("compile", help="compile a model into an artifact directory", formatter_class=fmt)
    p.add_argument("--model", required=True, help="APP[.NAME] (see `edgekit models`), FILE.py:FUNC (FUNC() "
                                                  "returns (module, example_inputs)), model.onnx or model.tflite")
    p.add_argument("--target", default="host", help="target name (see `edgekit targets`)")
    p.add_argument("--backend", required=True, help=f"{' | '.join(backends.names())} (see `edgekit targets`), or "
                                                    "auto: compile, verify and time every backend of the target and "
                                                    "ship the fastest")
    p.add_argument("--device", help=f"with --backend auto: time the candidates on this device, {DEVICE_HELP}, or "
                                    "adb://[SERIAL] (ExecuTorch); needed for targets that do not run here")
    p.add_argument("--output", "-o", required=True, help="artifact directory to create")
    p.add_argument("--name", help="model name recorded in the manifest (default: from --model)")
    p.add_argument("--force", action="store_true", help="replace --output if it is an edgekit artifact (anything "
                                                        "else there is refused, never deleted)")
    p.add_argument("--sign", metavar="PRIVATE_KEY", help="sign the artifact with this EC private key (PEM, from "
                                                         "`edgekit keys generate`) before it is moved into place")
    # SUPPRESS: the help would otherwise print the stored value ("default: True") beside a flag that turns it off
    p.add_argument("--no-verify", dest="check", action="store_false", default=argparse.SUPPRESS,
                   help="skip running the artifact against the reference (verification runs by default)")
    p.add_argument("--atol", type=float, help="verify with a fixed bound |err| <= atol + rtol*|ref| instead of the "
                                              "float64-oracle rule (docs/numerics.md); the other one defaults to 1e-4 "
                                              "(unset: the rule, or an app model's own tolerance)")
    p.add_argument("--rtol", type=float, help="verify: relative part of the fixed bound (see --atol)")
    p.add_argument("--quantize", metavar="SCHEME",
                   help="int8: static post-training of conv/linear layers (needs --calibration); int8-dynamic / "
                        "int4-dynamic: Linear layers with int8 activations at run time and 8/4-bit weights "
                        "(executorch, onnxruntime); int8-weight-only / int4-weight-only: integer Linear weights, "
                        "float compute (the scheme is checked by compile_model, which lists the valid ones)")
    p.add_argument("--calibration", help="directory of samples: .npy per sample (one input) or .npz with "
                                         "input0, input1, ...; the last quarter is held out for the accuracy figure. "
                                         "Without it an app model uses its own recipe (superres: Set14 tiles, PSNR)")
    p.add_argument("--max-drop", type=float, help="fail if the accuracy metric drops more than this (without a "
                                                  "task metric: 1 - cosine similarity to fp32)")
    p.add_argument("--auto-fallback", action="store_true", help="keep the most sensitive layers in float until "
                                                                "the drop is within --max-drop")
    p.add_argument("--example-inputs", metavar="FILE.npz",
                   help="the inputs to export and verify on: arrays named by the model's input names (or input0, "
                        "input1, ...); recorded by sha256 in the manifest. Needed for ONNX inputs that set shapes, "
                        "axes or indices")
    p.add_argument("--const-inputs", metavar="NAME=FILE.npy", action="append", default=[],
                   help="fold an ONNX model's input into the graph as a constant (repeatable); the artifact has one "
                        "input fewer")
    p.add_argument("--dynamic", metavar="INPUT:AXIS=MIN..MAX[,...]", action="append", default=[],
                   help="let input axes vary at run time within a range, e.g. 'input0:2=64..1024,3=64..1024' "
                        "(repeatable, one input each; INPUT: input0... or the model's input name; AXIS=NAME:MIN..MAX "
                        "names a size shared by several axes). One artifact takes every size in range; it is verified "
                        "at the smallest, an odd and the largest size. An ONNX model's symbolic axes need it")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("tune", help="tune a model's TVM lowering with MetaSchedule; `compile --backend tvm` applies "
                                    "the records", formatter_class=fmt)
    p.add_argument("model", help="APP[.NAME] (see `edgekit models`), FILE.py:FUNC or model.onnx")
    p.add_argument("--target", default="host", help="target name; candidates are measured on this machine")
    p.add_argument("--backend", default="tvm", choices=["tvm"], help="the backend whose lowering is tuned")
    p.add_argument("--trials", type=int, default=64, help="measured candidates in all, across the model's kernels")
    p.add_argument("--name", help="model name (default: from MODEL; must match compile's --name to be applied)")
    p.add_argument("--output", help="database folder (default: tuning/TARGET/NAME/, where compile looks)")
    p.add_argument("--example-inputs", metavar="FILE.npz", help="inputs for a model file, as for compile")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("coverage", help="compile ONNX's own node test cases with a backend and check them against "
                                        "their expected outputs", formatter_class=fmt)
    p.add_argument("--backend", required=True, help=f"backend to compile with: {' | '.join(backends.names())}")
    p.add_argument("--onnx-node-tests", action="store_true", default=True,
                   help="the cases: ONNX's node tests, generated from the installed onnx package (the default)")
    p.add_argument("--all", action="store_true", help="every node test instead of the common-op sample")
    p.add_argument("--filter", help="only cases whose name matches this regular expression")
    p.add_argument("--target", default="host", help="target name (see `edgekit targets`)")
    p.add_argument("--report-dir", default="reports", help="where coverage-<backend>.json and .md go")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.set_defaults(func=cmd_coverage)

    p = sub.add_parser("models", help="list the apps' models that `compile --model` accepts", formatter_class=fmt)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("run", help="run an artifact on .npy inputs", formatter_class=fmt)
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--input", "-i", action="append", default=[], help=".npy file, once per model input, in order")
    p.add_argument("--output", "-o", required=True, help=".npz file to write, one array per output named as in the "
                                                         "manifest (output0, output1, ... for PyTorch models)")
    p.add_argument("--device", help=f"run a TVM artifact on a remote device: {DEVICE_HELP}")
    _trust_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="time an artifact on seeded random inputs, or run the benchmark suite",
                       formatter_class=fmt)
    p.add_argument("artifact", nargs="?", help="artifact directory (or use --suite)")
    p.add_argument("--suite", choices=["all"], help="every model and kernel against its peers -> reports/")
    p.add_argument("--filter", help="suite: only cases whose name matches this regular expression")
    p.add_argument("--report-dir", default="reports", help="suite: where bench.json/bench.md/plots go")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--iters", type=int, default=20, help="timed runs")
    p.add_argument("--device", help=f"run on a remote device: {DEVICE_HELP}, or adb://[SERIAL] (ExecuTorch); with "
                                    "--suite and a tracker: the models' TVM rows, compiled for the target KEY names, "
                                    "on every device of KEY in parallel")
    p.add_argument("--json", action="store_true", help="print JSON")
    _trust_flags(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="print an artifact's manifest after checking it", formatter_class=fmt)
    p.add_argument("artifact", help="artifact directory")
    _trust_flags(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("sign", help="sign an artifact (every file, manifest included) with an EC private key",
                       formatter_class=fmt)
    p.add_argument("artifact", help="artifact directory; the signature goes to ARTIFACT/model.sig")
    p.add_argument("--key", required=True, help="EC private key (PEM), e.g. from `edgekit keys generate`")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("keys", help="signing keys", formatter_class=fmt)
    keys = p.add_subparsers(metavar="ACTION")
    k = keys.add_parser("generate", help="write an EC P-256 key pair: edgekit-signing.key (0600) and .pub",
                        formatter_class=fmt)
    k.add_argument("--out", required=True, help="directory for the key pair")
    k.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser("paths", help="where edgekit finds data and weights and keeps its caches",
                       formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--set", nargs="+", metavar="WHAT=DIR", default=[],
                   help="record data=DIR and/or weights=DIR in edgekit's config file (then found without "
                        "environment variables; EDGEKIT_DATA / EDGEKIT_WEIGHTS still win)")
    p.set_defaults(func=cmd_paths)

    p = sub.add_parser("demo", help="compile the bundled model with every backend for host and compare",
                       formatter_class=fmt)
    p.add_argument("--output", default="out/demo", help="where the demo artifacts go")
    p.set_defaults(func=lambda a: importlib.import_module("edgekit.demo").run(Path(a.output)))

    p = sub.add_parser(
        "inspect", help="per-layer error of an artifact against float64 and fp32 eager; the first op beyond float "
                        "rounding", formatter_class=fmt)
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--model", help="the model as given to `edgekit compile --model` (default: what the manifest "
                                   "records)")
    p.add_argument("--input", "-i", action="append", default=None, metavar="X.npy",
                   help="one .npy per model input, in order (default: the model's example inputs)")
    p.add_argument("--calibration", help="int8 artifacts: the calibration samples they were compiled with")
    p.add_argument("--json", action="store_true", help="print the report as JSON: one row per op")
    p.add_argument("--plot", metavar="OUT.png", help="write a plot of error (or SQNR) per layer")
    p.set_defaults(func=cmd_inspect)

    _register_optional(sub, "edgekit.device_cli")
    for app in registry.apps():  # each app registers its own subcommand
        app.register_cli(sub)
    common_options.add_common(parser)  # --threads, -v, -q and the help format on every command, the apps' included
    return parser


def _trust_flags(p) -> None:
    p.add_argument("--trust", metavar="PUBLIC_KEY", help="refuse the artifact unless it is signed by this EC public "
                                                         "key (default: $EDGEKIT_TRUST, if set)")
    p.add_argument("--expect-digest", metavar="SHA256", help="refuse the artifact unless manifest.json has this "
                                                             "sha256 (printed by `edgekit info` and `compile`)")


def _policy(args):
    from .trust import policy

    return policy(args.trust, args.expect_digest)


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
    from .paths import record, table

    if args.set:
        pairs = [item.partition("=") for item in args.set]
        bad = next((item for item, (what, sep, folder) in zip(args.set, pairs) if not (what and sep and folder)), None)
        if bad is not None:
            raise EdgekitError(f"--set {bad!r}: expected WHAT=DIR, e.g. --set data=DIR weights=DIR.")
        print(f"wrote {record({what: folder for what, _, folder in pairs})}")
    rows = table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(map(len, rows))
    for what, row in rows.items():
        source = "default; $" + row["env"] + " moves it" if row["source"] == "default" else "from " + row["source"]
        print(f"{what:<{width}}  {row['path']}  ({source})")
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
    if args.example_inputs:
        example_inputs = args.example_inputs
    const_inputs = {}
    for item in args.const_inputs:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise EdgekitError(f"--const-inputs {item!r}: expected NAME=FILE.npy (NAME: the model input to fold).")
        const_inputs[name] = file
    options = dict(target=args.target, output=args.output, name=args.name or (args.model if app_model else None),
                   force=args.force, check=getattr(args, "check", True), progress=True, **tolerance,
                   quantize=args.quantize, calibration=recipe.calibration if recipe else args.calibration,
                   max_drop=(recipe.max_drop if recipe else None) if args.max_drop is None else args.max_drop,
                   auto_fallback=args.auto_fallback or bool(recipe and recipe.auto_fallback),
                   task_metric=recipe.task_metric if recipe else None, sign=args.sign,
                   **({"const_inputs": const_inputs} if const_inputs else {}),
                   **({"dynamic_shapes": args.dynamic} if args.dynamic else {}))
    from .compile.auto import AUTO, compile_auto, describe

    if args.backend == AUTO:
        out = compile_auto(model, example_inputs, device=args.device, **options)
        print(describe(out))
    elif args.device:
        raise EdgekitError(f"--device times the candidates of --backend {AUTO}; to time a {args.backend} artifact "
                           "on a device, compile it, then run `edgekit bench ARTIFACT --device URL`.")
    else:
        out = compile_model(model, example_inputs, backend=args.backend, **options)
    from .artifact import read_manifest, read_verified

    digest = read_verified(out).digest
    v = read_manifest(out).verify
    detail = f"max abs err {v['max_abs_err']:.3g} on {v['where']}" if v.get("status") == "pass" else v.get("reason")
    print(f"wrote {out} (verify: {v['status']}; {detail})")
    print(f"manifest sha256 {digest} ({'signed with ' + args.sign if args.sign else 'unsigned'}); pin it with "
          f"--expect-digest {digest}")
    q = read_manifest(out).quantization
    if q:
        a = q["accuracy"]
        print(f"{q['scheme']}: {a['metric']} {a['quantized']:.6g} vs fp32 {a['fp32']:.6g} (drop {a['drop']:.3g}), "
              f"output SNR {a['snr_db']:.1f} dB; float layers: {', '.join(q['float_layers']) or 'none'}")
    return 0


def cmd_tune(args) -> int:
    from .compile.tune import summary, tune_model

    resolved = resolve_model(args.model)
    app_model = resolved if isinstance(resolved, CompileSpec) else None
    model, example_inputs = (app_model.module, app_model.example_inputs) if app_model else (resolved, None)
    folder = tune_model(model, args.example_inputs or example_inputs, target=args.target, trials=args.trials,
                        name=args.name or (args.model if app_model else None), output=args.output, progress=True)
    s = summary(folder)
    print(f"wrote {folder}: {s['records']} records, {s['workloads']} kernels, best kernels sum "
          f"{s['best_total_s'] * 1e3:.3f} ms (database sha256 {s['sha256'][:16]})")
    return 0


def cmd_coverage(args) -> int:
    from .compile.coverage import run_coverage

    report = run_coverage(args.backend, target=args.target, pattern=args.filter, every=args.all,
                          report_dir=Path(args.report_dir), progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report["markdown"])
    return 0


def cmd_inspect(args) -> int:
    from . import inspect

    model, calibration = None, args.calibration
    if args.model:
        resolved = resolve_model(args.model)
        model = resolved if isinstance(resolved, str) else (resolved.module, resolved.example_inputs)
        if calibration is None and not isinstance(resolved, str) and resolved.int8:
            calibration = resolved.int8().calibration  # the app's own int8 recipe, as compile uses it
    inputs = [_load_npy(path) for path in args.input] if args.input else None
    report = inspect.inspect_artifact(args.artifact, model, inputs, calibration)
    if args.plot:
        write_file(Path(args.plot), lambda f: inspect.plot(report, f))
    if args.json:
        print(inspect.write_json(report))
    else:
        print(inspect.format_table(report))
        print(inspect.summary(report))
    return 0


def cmd_run(args) -> int:
    from . import load
    from .artifact import read_verified
    from .runtimes.model import check_inputs

    inputs = [_load_npy(p) for p in args.input]
    # the artifact is checked (policy, containment, checksums) and the inputs against its manifest before any payload
    # reaches a runtime: a refused input never runs artifact code
    policy = _policy(args)
    manifest = read_verified(args.artifact, policy).manifest
    check_inputs(manifest.inputs, inputs)
    if args.device:  # checked here; the upload reads the files again (see README, Trust model)
        from .runtimes.rpc import run_remote

        outputs, _ = run_remote(args.device, Path(args.artifact), manifest, inputs)
    else:
        outputs = load(args.artifact, trust=policy).run(inputs)
    named = dict(zip(output_names(manifest), outputs))
    out = Path(args.output)
    write_file(out, lambda f: _savez(f, named))
    print(f"wrote {out}: " + ", ".join(f"{name} {y.dtype}{list(y.shape)}" for name, y in named.items()))
    return 0


def output_names(manifest) -> list[str]:
    """The names `run` gives the outputs in its .npz: the manifest's (output0, output1, ... for PyTorch models; the
    graph's for ONNX and TFLite), or outputN where a name is repeated or empty."""
    names = [spec.name for spec in manifest.outputs]
    if len(set(names)) != len(names) or not all(names):
        return [f"output{i}" for i in range(len(names))]
    return names


def _savez(f, arrays: dict) -> None:
    """numpy.savez with any array names (savez's own keyword would clash with a name like "file")."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _load_npy(path: str):
    import numpy as np

    p = Path(path)
    if p.is_dir():
        raise EdgekitError(f"{path}: is a directory; pass one .npy file per model input with -i.")
    if p.exists() and not p.is_file():
        raise EdgekitError(f"{path}: not a regular file; pass a .npy file saved with numpy.save.")
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise EdgekitError(f"{path}: input file not found.") from None
    except PermissionError:
        raise EdgekitError(f"{path}: permission denied; make the file readable (chmod a+r).") from None
    except (ValueError, EOFError, OSError, MemoryError, OverflowError) as exc:  # a damaged or hostile header
        raise EdgekitError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())[:300]}). "
                           "Save inputs with numpy.save.") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise EdgekitError(f"{path}: an .npz archive, not a .npy array; pass each input as its own .npy file.")
    return array


def cmd_bench(args) -> int:
    if args.suite:
        from .bench.suite import run

        if args.device and not args.device.startswith("tracker://"):
            raise EdgekitError(f"--suite all --device takes a pool, tracker://HOST:PORT/KEY; {args.device!r} is not "
                               "one. Register the board with a tracker (`edgekit device serve`), or time one "
                               "artifact: `edgekit bench ARTIFACT --device URL`.")
        report = run(Path(args.report_dir), args.filter, iters=args.iters, device=args.device)
        print(f"wrote {args.report_dir}/bench.json, bench.md and plots ({len(report['rows'])} rows)")
        return 0
    if not args.artifact:
        raise EdgekitError("give an artifact directory to time, or --suite all for the benchmark suite.")
    if args.device:
        from .runtimes.rpc import bench_remote

        from .artifact import read_verified

        policy = _policy(args)
        if policy is not None:  # checked here; the remote upload reads the files again (see README, Trust model)
            read_verified(args.artifact, policy)
        stats = bench_remote(Path(args.artifact), args.device, warmup=args.warmup, iters=args.iters)
    else:
        from . import load

        model = load(args.artifact, trust=_policy(args))
        stats = model.benchmark(warmup=args.warmup, iters=args.iters)
        m = model.manifest
        stats = {"model": m.model, "backend": m.backend, "target": m.target, "precision": m.precision, **stats}
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    return 0


def cmd_info(args) -> int:
    """Prints only after every check (containment, checksums, the policy): never an oracle for other files."""
    from .artifact import read_verified

    policy = _policy(args)
    artifact = read_verified(args.artifact, policy)
    print(artifact.manifest.to_json())
    signed = ("signature verified with " + str(policy.public_key) if policy and policy.public_key else
              "signed (model.sig; not checked: pass --trust KEY)" if artifact.signature is not None else "unsigned")
    print(f"manifest sha256 {artifact.digest} ({signed})", file=sys.stderr)
    return 0


def cmd_sign(args) -> int:
    from .trust import sign

    digest = sign(args.artifact, args.key)
    print(f"signed {args.artifact} ({Path(args.artifact) / 'model.sig'}); manifest sha256 {digest}")
    return 0


def cmd_keys_generate(args) -> int:
    from .trust import generate_keys

    private, public = generate_keys(args.out)
    print(f"wrote {private} (private, mode 0600: keep it secret) and {public} (give this to whoever runs "
          "the artifacts: --trust / EDGEKIT_TRUST)")
    return 0


def write_file(path: Path, write) -> Path:
    """Write a user's output file safely: `write(f)` fills an exclusive, unpredictably named temp file in the target
    directory (never following a planted link), which is renamed over `path` only when complete; on any error
    (disk full included) nothing is left behind and an existing `path` is untouched."""
    import os
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise EdgekitError(f"{path}: is a directory; give a file name to write.")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=parent)
    except FileNotFoundError:
        raise EdgekitError(f"{parent}: no such directory to write {path.name} into.") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise EdgekitError(f"{path}: could not write it ({exc.strerror or exc}); nothing was written.") from None
        raise
    return path


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


if __name__ == "__main__":
    sys.exit(main())
