"""DESIGN.md's layering, checked with import-linter: cli/bench -> apps -> compile -> runtimes -> ground -> kernels,
apps independent of each other, one independent module per backend, no cycles between sibling modules, and no
import cycle between any two edgekit modules at all.

pyproject's package-dir mapping gives top-level folders their edgekit.* names, which import-linter (it walks the
package's folder) cannot see; the test lays the installed layout out as links in a temp dir and lints that."""
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def installed_layout(root: Path) -> Path:
    """Links under root/edgekit/... to every package's .py files, as a wheel would install them."""
    spec = importlib.util.spec_from_file_location("edgekit_setup", REPO / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    roots = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package in setup.packages():
        root_name = max((r for r in roots if package == r or package.startswith(r + ".")), key=len)
        folder = REPO / roots[root_name] / Path(*package[len(root_name):].split(".")[1:])
        dest = root.joinpath(*package.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for file in folder.glob("*.py"):
            (dest / file.name).symlink_to(file)
    return root


def run_in_layout(root: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_linter_contracts_hold(tmp_path):
    root = installed_layout(tmp_path)
    lint = Path(sys.executable).with_name("lint-imports")
    done = run_in_layout(root, str(lint), "--no-cache", str(REPO / "pyproject.toml"))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


CYCLES = r"""
import grimp, json, sys
graph = grimp.build_graph("edgekit")
# Tarjan's strongly connected components over module-level imports (imports inside functions included)
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
    for w in graph.find_modules_directly_imported_by(v):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        scc = []
        while True:
            w = stack.pop(); on.discard(w); scc.append(w)
            if w == v: break
        if len(scc) > 1: sccs.append(sorted(scc))
sys.setrecursionlimit(10000)
for m in sorted(graph.modules):
    if m not in index: visit(m)
print(json.dumps(sccs))
"""


def test_no_import_cycles_between_modules(tmp_path):
    """The package face (edgekit/__init__.py) imports compile and runtimes lazily for `edgekit.load/compile_model`;
    no module below it may import the face, so it cannot close a cycle either."""
    import json

    root = installed_layout(tmp_path)
    done = run_in_layout(root, sys.executable, "-c", CYCLES)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == []
