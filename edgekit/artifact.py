"""Artifact directory = payload files + manifest.json. Ground layer: plain data and I/O, no ML imports.

Written atomically (temp dir in the same parent, then rename) so a crash or a concurrent
compile never leaves a half-written artifact; read back only after every checksum matches.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import EdgekitError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}{list(self.shape)}"


@dataclass
class Manifest:
    model: str
    backend: str
    target: str
    arch: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"
    quantization: dict | None = None
    toolchain: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)   # payload name -> sha256
    entry: str = ""                                         # the payload file the runtime loads
    backend_info: dict = field(default_factory=dict)        # e.g. delegated op counts, device code arch
    verify: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: object, where: str) -> "Manifest":
        if not isinstance(data, dict):
            raise EdgekitError(f"{where}: manifest must be a JSON object.")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise EdgekitError(f"{where}: unknown manifest schema version {version!r}; this edgekit reads "
                               f"version {SCHEMA_VERSION}. Recompile the artifact with this edgekit.")
        try:
            specs = {k: [TensorSpec(**_spec(s, where)) for s in data[k]] for k in ("inputs", "outputs")}
            fields = {k: v for k, v in data.items() if k not in ("inputs", "outputs")}
            manifest = cls(**fields, **specs)
        except (TypeError, KeyError) as exc:
            raise EdgekitError(f"{where}: malformed manifest ({exc}). Recompile the artifact.") from None
        _check_types(manifest, where)
        return manifest


def _spec(s: object, where: str) -> dict:
    if not isinstance(s, dict) or set(s) != {"name", "shape", "dtype"}:
        raise EdgekitError(f"{where}: malformed tensor spec {s!r}; expected keys name, shape, dtype.")
    return s


def _check_types(m: Manifest, where: str) -> None:
    for attr in ("model", "backend", "target", "arch", "precision", "entry"):
        if not isinstance(getattr(m, attr), str):
            raise EdgekitError(f"{where}: manifest field {attr!r} must be a string.")
    if not isinstance(m.files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in m.files.items()):
        raise EdgekitError(f"{where}: manifest field 'files' must map file names to sha256 strings.")
    if m.entry not in m.files:
        raise EdgekitError(f"{where}: manifest entry {m.entry!r} is not among its files.")
    for spec in m.inputs + m.outputs:
        ok_shape = isinstance(spec.shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                        for d in spec.shape)
        if not isinstance(spec.name, str) or not ok_shape or spec.dtype not in DTYPES:
            raise EdgekitError(f"{where}: bad tensor spec {spec!r} (shape must be non-negative ints, "
                               f"dtype one of {', '.join(DTYPES)}).")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(artifact_dir: str | os.PathLike) -> Manifest:
    d = Path(artifact_dir)
    path = d / MANIFEST
    if not d.is_dir():
        raise EdgekitError(f"{d}: no such artifact directory. Pass the --output directory of `edgekit compile`.")
    if not path.is_file():
        raise EdgekitError(f"{path}: missing. {d} is not an edgekit artifact (compile one with `edgekit compile`).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgekitError(f"{path}: not valid JSON ({exc}). The artifact is damaged; recompile it.") from None
    return Manifest.from_dict(data, str(path))


def verify_files(artifact_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Every payload file present with its recorded sha256, and nothing unlisted beside them."""
    d = Path(artifact_dir)
    for name, digest in manifest.files.items():
        path = d / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise EdgekitError(f"{path}: file name escapes the artifact directory; refusing to load.")
        if not path.is_file() or path.is_symlink():
            raise EdgekitError(f"{path}: payload file missing. The artifact is incomplete; recompile it.")
        if sha256_file(path) != digest:
            raise EdgekitError(f"{path}: checksum mismatch (file truncated, tampered with or swapped). "
                               "Refusing to load it; recompile the artifact or copy it again.")
    extra = sorted(p.relative_to(d).as_posix() for p in d.rglob("*")
                   if p.is_file() and p.name != MANIFEST and p.relative_to(d).as_posix() not in manifest.files)
    if extra:
        raise EdgekitError(f"{d / extra[0]}: file not listed in the manifest ({len(extra)} unlisted in all). "
                           "Something was added to the artifact; remove it or recompile.")


def load_verified(artifact_dir: str | os.PathLike) -> Manifest:
    manifest = read_manifest(artifact_dir)
    verify_files(artifact_dir, manifest)
    return manifest


class StagingDir:
    """A temp dir beside the output; `commit` fills in checksums, writes the manifest and renames into place."""

    def __init__(self, output: str | os.PathLike, force: bool = False):
        self.output = Path(output).absolute()
        self.force = force
        if self.output.exists() and not force:
            raise EdgekitError(f"{self.output}: output directory exists. Choose another --output or pass "
                               "--force to replace it.")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.", dir=self.output.parent))

    def __enter__(self) -> "StagingDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def clear(self) -> None:
        """Empty the staging directory for a rebuild."""
        for child in self.path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    def seal(self, manifest: Manifest) -> None:
        """Record every payload file's sha256 and write manifest.json (again, after verify adds its result)."""
        manifest.files = {p.relative_to(self.path).as_posix(): sha256_file(p)
                          for p in sorted(self.path.rglob("*")) if p.is_file() and p.name != MANIFEST}
        (self.path / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")

    def commit(self) -> Path:
        if self.output.exists():
            if not self.force:  # another process finished first
                raise EdgekitError(f"{self.output}: output directory appeared while compiling; pass --force "
                                   "to replace it.")
            old = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.old.", dir=self.output.parent))
            os.replace(self.output, old / "a")
            shutil.rmtree(old, ignore_errors=True)
        os.chmod(self.path, 0o755)  # mkdtemp makes it private; an artifact is meant to be copied around
        try:
            os.rename(self.path, self.output)
        except OSError as exc:
            raise EdgekitError(f"{self.output}: could not move the finished artifact into place ({exc}).") from None
        return self.output
