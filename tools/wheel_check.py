"""Prove the runtime wheel: build edgekit's wheel from this checkout, install `edgekit[EXTRA]` from it with pip into a
fresh venv (on this x86 host, and inside the arm64 emulator sysroot from aarch64 wheels fetched beforehand and
installed offline), run an artifact compiled here through `edgekit.load` and `python -m edgekit run`, check that
torch was never imported, and report what each install weighs.

    python tools/wheel_check.py [--extras onnxruntime,tvm] [--where host,emulator] [--json FILE]

Inside the sysroot everything runs as the emulator's unprivileged guest user, in a work folder removed afterwards;
the sysroot's own packages are not used (the venv has no system site-packages). Exit 0 when every check passed, 1
when one failed (the report says which), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"
GUEST_PYTHON = "3.11"  # the sysroot's Debian bookworm python3
# every manylinux tag the sysroot's glibc (2.36) runs: pip does not widen one --platform to the older tags
AARCH64 = ("--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64", "--platform",
           "manylinux2014_aarch64", "--only-binary=:all:", "--python-version", GUEST_PYTHON, "--implementation", "cp")
TARGETS = {"host": "host", "emulator": "android-arm64"}  # where -> the target the artifact is compiled for
WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5

# Run by the venv's python: the public API, then the test of the issue (torch never imported), as one JSON line.
PROBE = """
import json, sys
import numpy as np
import edgekit
art, x_path, ref_path = sys.argv[1:4]
model = edgekit.load(art)
y, = model.run([np.load(x_path)])
stats = model.benchmark(warmup=1, iters=3)
runtime = next(m for m in ("onnxruntime", "tvm", "executorch") if m in sys.modules)
print(json.dumps({"api_max_err": float(np.abs(y - np.load(ref_path)).max()), "torch_imported": "torch" in sys.modules,
                  "runtime_from": sys.modules[runtime].__file__, "p50_ms": stats["p50_ms"]}))
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgekit-wheel-check-") as tmp:
        tmp = Path(tmp)
        wheel = build_wheel(tmp / "dist")
        print(f"built {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB)", flush=True)
        rows = [check(where, extra, wheel, tmp) for where in args.where for extra in args.extras]
    report = {"wheel": wheel.name, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


def parse_args(argv):
    from edgekit import backends

    p = argparse.ArgumentParser(prog="tools/wheel_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--extras", default="onnxruntime,tvm", help="runtime extras to check, comma-separated "
                                                               f"(backends: {', '.join(backends.names())})")
    p.add_argument("--where", default="host,emulator", help="host, emulator or both, comma-separated")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = p.parse_args(argv)
    args.extras = [e for e in args.extras.split(",") if e]
    args.where = [w for w in args.where.split(",") if w]
    bad = [e for e in args.extras if e not in backends.names()] + [w for w in args.where if w not in TARGETS]
    if bad or not args.extras or not args.where:
        p.error(f"unknown or missing --extras/--where value(s) {bad}: extras are backend names "
                f"({', '.join(backends.names())}), places are {', '.join(TARGETS)}")
    return args


def build_wheel(dest: Path) -> Path:
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(REPO)],
        "pip wheel (edgekit)")
    (wheel,) = dest.glob("edgekit-*.whl")
    return wheel


def check(where: str, extra: str, wheel: Path, tmp: Path) -> dict:
    print(f"{where}: edgekit[{extra}] ...", flush=True)
    start = time.perf_counter()
    row = {"where": where, "extra": extra, "target": TARGETS[where]}
    try:
        case = make_case(tmp / f"case-{where}-{extra}", extra, TARGETS[where])
        row.update((check_host if where == "host" else check_emulator)(extra, wheel, case, tmp))
        # executorch.runtime links libtorch (a device without torch runs the C++ runner instead): torch is expected
        torch_ok = not row["torch_imported"] or extra == "executorch"
        row["ok"] = row["api_max_err"] < 1e-4 and row["cli_max_err"] < 1e-4 and torch_ok
    except Exception as exc:  # a failed step becomes the row's reason: the other rows still run
        row.update(ok=False, reason=" ".join(str(exc).split())[-800:])
    row["seconds"] = round(time.perf_counter() - start, 1)
    print(f"  {'ok' if row['ok'] else 'FAILED: ' + row.get('reason', 'a check failed')} ({row['seconds']} s)",
          flush=True)
    return row


def make_case(folder: Path, backend: str, target: str) -> dict:
    """A small model (x @ W, then ReLU) compiled here for `target` with `backend` (from ONNX where the backend takes
    ONNX, else from PyTorch), its input and the numpy reference output."""
    import edgekit
    from edgekit import backends

    folder.mkdir(parents=True)
    x = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    np.save(folder / "x.npy", x)
    np.save(folder / "ref.npy", np.maximum(x @ WEIGHT, 0))
    if "onnx" in backends.get(backend).sources:
        model, example = str(onnx_model(folder / "model.onnx")), None
    else:
        model, example = torch_model(), (torch_tensor(x),)
    edgekit.compile_model(model, example, target=target, backend=backend, output=folder / "artifact")
    return {"dir": folder, "artifact": folder / "artifact", "x": folder / "x.npy", "ref": folder / "ref.npy"}


def onnx_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])], "wheelcheck",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])], [numpy_helper.from_array(WEIGHT, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def torch_tensor(x: np.ndarray):
    import torch

    return torch.from_numpy(x)


def torch_model():
    import torch

    linear = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(WEIGHT.T.copy()))
    return torch.nn.Sequential(linear, torch.nn.ReLU()).eval()


def pins_for(extra: str, tmp: Path) -> Path:
    """A constraints file with constraints.txt's pins of the core's and EXTRA's own requirements (the runtime the
    artifact was compiled against); what those bring along is left to pip, as on a device. The other pins (tests,
    compilers) need not exist for the device's platform."""
    import tomllib

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {norm(Requirement(r).name) for r in project["dependencies"] + project["optional-dependencies"][extra]}
    lines = [line.split("#")[0].strip() for line in CONSTRAINTS.read_text().splitlines()]
    path = tmp / f"pins-{extra}.txt"
    path.write_text("".join(f"{line}\n" for line in lines if line and norm(line.split("==")[0]) in wanted))
    return path


def check_host(extra: str, wheel: Path, case: dict, tmp: Path) -> dict:
    venv = tmp / f"venv-host-{extra}"
    run([sys.executable, "-m", "venv", str(venv)], "python -m venv")
    python = str(venv / "bin" / "python")
    base = du(venv)
    run([python, "-m", "pip", "install", "--quiet", "--no-cache-dir", "-c", str(pins_for(extra, tmp)),
         f"edgekit[{extra}] @ {wheel.as_uri()}"], f"pip install edgekit[{extra}]")
    result = probe([python], case["artifact"], case["x"], case["ref"], lambda argv: run(argv, "probe"))
    out = case["dir"] / "y.npz"
    run([python, "-m", "edgekit", "run", str(case["artifact"]), "-i", str(case["x"]), "-o", str(out)],
        "python -m edgekit run")
    return {**result, **sizes(venv, base, venv), "cli_max_err": max_err(out, case["ref"])}


def check_emulator(extra: str, wheel: Path, case: dict, tmp: Path) -> dict:
    from edgekit.runtimes.emulator import run_in_guest
    from edgekit.runtimes.emulator_system import require_sysroot

    root = require_sysroot()
    with tempfile.TemporaryDirectory(prefix="edgekit-wheelcheck-", dir=root / "tmp") as work:
        work = Path(work)
        guest = "/" + work.relative_to(root).as_posix()
        wheels = work / "wheels"
        # fetched on the host, beforehand: the aarch64 wheels of edgekit[EXTRA]'s dependencies, and pip itself
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-cache-dir", "--dest", str(wheels), *AARCH64,
             "-c", str(pins_for(extra, tmp)), f"edgekit[{extra}] @ {wheel.as_uri()}", "pip"],
            "pip download (aarch64)")
        shutil.copytree(case["dir"], work / "case")
        in_guest = lambda argv: run_in_guest(argv, work, env={"PYTHONDONTWRITEBYTECODE": "1"})  # noqa: E731
        venv, python = f"{guest}/venv", f"{guest}/venv/bin/python"
        # --copies: the emulator removes every symlink the guest made in its work folder after each command
        in_guest(["python3", "-m", "venv", "--without-pip", "--copies", venv])
        base = du(work / "venv")
        (pip_wheel,) = wheels.glob("pip-*.whl")
        # offline: only the wheels fetched above
        in_guest([python, f"{guest}/wheels/{pip_wheel.name}/pip", "install", "--quiet", "--no-index",
                  "--no-cache-dir", "--find-links", f"{guest}/wheels", f"edgekit[{extra}]"])
        result = probe([python], f"{guest}/case/artifact", f"{guest}/case/x.npy", f"{guest}/case/ref.npy", in_guest)
        if not result["runtime_from"].startswith(venv + "/"):
            raise RuntimeError(f"the guest imported the runtime from {result['runtime_from']}, not from the venv")
        in_guest([python, "-m", "edgekit", "run", f"{guest}/case/artifact", "-i", f"{guest}/case/x.npy",
                  "-o", f"{guest}/y.npz"])
        return {**result, **sizes(work / "venv", base, work / "wheels"), "cli_max_err": max_err(work / "y.npz",
                                                                                                 case["ref"])}


def probe(python: list[str], artifact, x, ref, execute) -> dict:
    proc = execute([*python, "-c", PROBE, str(artifact), str(x), str(ref)])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sizes(venv: Path, base: int, downloads: Path) -> dict:
    """The venv's size and what the install added to it (MB); the download folder's size (the wheels)."""
    total = du(venv)
    return {"venv_mb": round(total / 1e6, 1), "installed_mb": round((total - base) / 1e6, 1),
            **({"wheels_mb": round(du(downloads) / 1e6, 1)} if downloads != venv else {})}


def du(path: Path) -> int:
    return sum(f.lstat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def max_err(npz: Path, ref: Path) -> float:
    with np.load(npz) as f:
        (name,) = f.files  # the model's one output, under the name `edgekit run` gives it
        return float(np.abs(f[name] - np.load(ref)).max())


def run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # cwd "/": `python -c` puts the working directory first on sys.path, and this checkout's edgekit/ must not be found
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, cwd="/")
    if proc.returncode:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines()
                 if not line.startswith("WARNING: Location")]  # pip's notes on this machine's index settings
        tail = "\n".join(lines[-12:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc


def table(rows: list[dict]) -> str:
    lines = ["| where | extra | target | installed MB | wheels MB | api | cli | torch imported | p50 ms | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["ok"] and "reason" in r:
            lines.append(f"| {r['where']} | {r['extra']} | {r['target']} | FAILED: {r['reason'][:200]} |")
            continue
        lines.append(f"| {r['where']} | {r['extra']} | {r['target']} | {r['installed_mb']} | "
                     f"{r.get('wheels_mb', '-')} | {r['api_max_err']:.2g} | {r['cli_max_err']:.2g} | "
                     f"{r['torch_imported']} | {r['p50_ms']:.3f} | {r['seconds']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
