"""The app contract, typed. Every app is a folder apps/<app>/ with the same sibling files:

    __init__.py   spec.py   model.py   app.py   demo.py   eval.py   bench.py   info.json

and `spec.py` exposes `SPEC: AppSpec`. The registry (apps/registry.py) finds apps by scanning this package, so adding
an app is a new folder, with no central edit. What the rest of edgekit asks of an app:

- `SPEC.models()` -> {name: ModelEntry}: the networks `edgekit compile --model APP[.NAME]` accepts, built lazily
  (model.py's `compile_models() -> {name: builder}`, builder() -> CompileSpec; weights load only when built);
- `SPEC.default_model`: the model `--model APP` means when the app has several;
- `SPEC.register_cli(subparsers)`: the app's `edgekit APP ...` subcommand (demo.py's `register`);
- `SPEC.bench_cases()` -> [ModelCase | AppCase]: what `edgekit bench --suite all` times (bench.py's `cases`);
- `SPEC.soak`: how the soak driver runs `edgekit APP live` (None: not soaked);
- `SPEC.info`: the app's info.json.

Nothing here imports torch or an app's heavy modules: spec.py files stay cheap to discover.
"""
from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from edgekit.errors import EdgekitError

__all__ = ["Tolerance", "QuantRecipe", "CompileSpec", "ModelBuilder", "ModelEntry", "DynamicBench", "ModelCase",
           "AppCase", "SoakSpec", "AppSpec"]

# (run, held-out samples) -> score, higher is better; `run(inputs) -> outputs` is the fp32 or the int8 model
TaskMetric = Callable[[Callable[[list], list], list], float]


@dataclass(frozen=True)
class Tolerance:
    """Verification bounds for a compiled artifact against eager; None: the compiler's default (1e-4)."""
    atol: float | None = None
    rtol: float | None = None

    def options(self) -> dict[str, float]:
        """The compile_model keyword arguments that are set."""
        return {k: v for k, v in (("atol", self.atol), ("rtol", self.rtol)) if v is not None}


class _NamedMetric:
    """A task metric under the name the accuracy gate reports (compile/quantize/gate.py reads `metric_name`)."""

    def __init__(self, fn: TaskMetric, name: str):
        self.fn, self.metric_name = fn, name

    def __call__(self, run, samples) -> float:
        return self.fn(run, samples)


@dataclass
class QuantRecipe:
    """An app model's static int8 recipe: its calibration samples (tuples of inputs; the last quarter is held out),
    the task metric scored on the held-out samples and the drop it may lose, and whether the most sensitive layers
    fall back to float until the drop fits. Used by `edgekit compile --quantize int8` without --calibration."""
    calibration: list
    metric: TaskMetric | None = None
    metric_name: str | None = None      # default: the metric's own `metric_name` or function name
    max_drop: float | None = None       # without a metric: 1 - cosine similarity to fp32
    auto_fallback: bool = False

    @property
    def task_metric(self) -> TaskMetric | None:
        if self.metric is None or self.metric_name is None or \
                getattr(self.metric, "metric_name", None) == self.metric_name:
            return self.metric
        return _NamedMetric(self.metric, self.metric_name)

    def options(self) -> dict[str, Any]:
        """compile_model keyword arguments for this recipe."""
        return {"quantize": "int8", "calibration": self.calibration, "task_metric": self.task_metric,
                "max_drop": self.max_drop, "auto_fallback": self.auto_fallback}


@dataclass
class CompileSpec:
    """One compilable network: the eager module, the example inputs whose shapes the artifact takes, its
    verification tolerance and, optionally, a factory for its int8 recipe (called only when int8 is asked for:
    it may read data sets)."""
    module: Any                                 # torch.nn.Module
    example_inputs: tuple
    tolerance: Tolerance = field(default_factory=Tolerance)
    int8: Callable[[], QuantRecipe] | None = None


ModelBuilder = Callable[[], CompileSpec]


@dataclass(frozen=True)
class ModelEntry:
    """A lazily built app model: calling it loads weights and returns its CompileSpec."""
    app: str
    name: str
    build: ModelBuilder

    @property
    def qualified_name(self) -> str:
        return f"{self.app}.{self.name}"

    def __call__(self) -> CompileSpec:
        spec = self.build()
        if not isinstance(spec, CompileSpec):
            raise TypeError(f"{self.qualified_name}: the builder returned {type(spec).__name__}, not a CompileSpec")
        return spec


@dataclass(frozen=True)
class DynamicBench:
    """Bench rows for dynamic shapes: one artifact compiled with `dynamic` (--dynamic text, sizes named, e.g.
    "input0:2=h:16..256,3=w:16..256") timed at each of `sizes` ({size name: value}) beside a static artifact compiled
    for that size."""
    dynamic: str
    sizes: tuple[dict[str, int], ...]


@dataclass
class ModelCase:
    """Bench case: one network compiled on every backend (fp32, and int8 when it has a recipe) beside its peers."""
    name: str
    module: object
    inputs: tuple
    int8: QuantRecipe | None = None             # enables the int8 rows
    peers: dict[str, Callable[[], object]] = field(default_factory=dict)   # extra peers, e.g. authors' ONNX
    work_unit: tuple[str, float] | None = None  # ("MP", megapixels per run) -> also report ms per unit
    tolerance: Tolerance = field(default_factory=Tolerance)  # the model's verify tolerance
    dynamic: DynamicBench | None = None         # enables the dynamic-vs-static rows

    @classmethod
    def from_spec(cls, name: str, spec: CompileSpec, **kwargs) -> "ModelCase":
        """A case for an app model as `edgekit compile` builds it (same inputs and tolerance)."""
        return cls(name, spec.module, spec.example_inputs, tolerance=spec.tolerance, **kwargs)


@dataclass
class AppCase:
    """Bench case: a whole app pipeline that times itself on every backend and returns its report rows."""
    name: str
    run: Callable[[Path | None, Callable[[str], None]], list[dict]]  # (cache folder or None, progress) -> rows


@dataclass(frozen=True)
class SoakSpec:
    """How the soak driver runs `edgekit APP live --loop --duration S --stats FILE`: on the looped video (with
    --realtime --headless -o OUT) or the looped audio (with --threads N --json)."""
    media: Literal["video", "audio"]
    downscale: int = 1                      # feed the video shrunk by this factor (super-resolution: LR input)
    extra_args: tuple[str, ...] = ()        # e.g. ("--backend", "onnxruntime")


@dataclass(frozen=True)
class AppSpec:
    """An app as edgekit sees it. By default each hook calls the app's sibling module by convention
    (model.compile_models, demo.register, bench.cases); pass a callable to override one."""
    package: str                            # e.g. "edgekit.apps.superres" (spec.py: `__package__`)
    title: str
    default_model: str | None = None        # `--model APP` when the app has several models
    soak: SoakSpec | None = None
    order: int = 100                        # listing order (then name): `edgekit models`, help, bench
    compile_models: Callable[[], Mapping[str, ModelBuilder]] | None = None
    register: Callable[[Any], None] | None = None
    cases: Callable[[], list] | None = None

    @property
    def name(self) -> str:
        return self.package.rpartition(".")[2]

    @property
    def directory(self) -> Path:
        return Path(next(iter(importlib.import_module(self.package).__path__)))

    @cached_property
    def info(self) -> dict:
        """The app's info.json ({} if it has none)."""
        path = self.directory / "info.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EdgekitError(f"{path}: not valid JSON ({exc}).") from None

    def _sibling(self, module: str):
        return importlib.import_module(f"{self.package}.{module}")

    def models(self) -> dict[str, ModelEntry]:
        """{name: ModelEntry}, in the app's order; nothing is built until an entry is called."""
        builders = (self.compile_models or self._sibling("model").compile_models)()
        return {name: ModelEntry(self.name, name, build) for name, build in builders.items()}

    def default_model_name(self, models: Mapping[str, ModelEntry] | None = None) -> str | None:
        """The model `--model APP` means: the declared default, else the only one (None: the user must choose)."""
        if self.default_model:
            return self.default_model
        models = self.models() if models is None else models
        return next(iter(models)) if len(models) == 1 else None

    def register_cli(self, subparsers) -> None:
        """Add `edgekit APP ...` to the CLI's subparsers. By convention the app's own parser (demo.py's `register`,
        which may import torch, OpenCV, ...) is built only when the command line names this app, so `edgekit run`,
        `info` and the other commands never import an app's heavy modules."""
        if self.register is not None:
            self.register(subparsers)
            return
        # a placeholder: prefix_chars "\0" parses no option, so every word after APP (--help too) reaches the app
        p = subparsers.add_parser(self.name, help=self.title, add_help=False, prefix_chars="\0")
        p.add_argument("app_argv", nargs="*")
        p.set_defaults(func=self._run_cli)

    def app_parser(self) -> argparse.ArgumentParser:
        """`edgekit` with only this app's subcommand (demo.py's `register`), with the options every command has."""
        from edgekit import options

        parser = argparse.ArgumentParser(prog="edgekit", formatter_class=options.HelpFormatter)
        self._sibling("demo").register(parser.add_subparsers(metavar="COMMAND"))
        options.add_common(parser)
        return parser

    def _run_cli(self, args: argparse.Namespace) -> int:
        """`edgekit APP ARGV...`: ARGV parsed by the app's own parser, the options parsed before APP kept."""
        from edgekit import options
        from edgekit.apps import media

        carried = {k: v for k, v in vars(args).items() if k not in ("func", "app_argv")}
        inner = self.app_parser().parse_args([self.name, *args.app_argv], namespace=argparse.Namespace(**carried))
        options.configure(inner)  # -v/-q, --threads, outputs writable: given after APP too
        media.configure(inner)  # the app command's --max-pixels / --max-seconds
        return inner.func(inner)

    def bench_cases(self) -> list[ModelCase | AppCase]:
        """The app's bench cases ([] when it has no bench.py, or its data/weights are absent)."""
        if self.cases is not None:
            return list(self.cases())
        try:
            bench = self._sibling("bench")
        except ModuleNotFoundError as exc:
            if exc.name == f"{self.package}.bench":
                return []
            raise
        return list(bench.cases())

