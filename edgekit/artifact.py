"""Artifact directory = payload files + manifest.json. Ground layer: plain data and I/O, no ML imports.

Written atomically (temp dir in the same parent, then rename) so a crash or a concurrent
compile never leaves a half-written artifact; read back only after every checksum matches.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import reprlib
import shutil
import stat
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
    shape: list[int]      # the size verification's example input had (a dynamic axis: any size in its range)
    dtype: str
    # dynamic axes: {axis as a string: {"name": symbol, "min": int, "max": int}}; axes sharing a symbol (within or
    # across inputs) take one size. None: every axis is static. Outputs record the sizes seen at min and max.
    dynamic: dict | None = None

    def describe(self) -> str:
        dims = [f"{d['min']}..{d['max']}" if (d := (self.dynamic or {}).get(str(i))) else str(n)
                for i, n in enumerate(self.shape)]
        return f"{self.name}: {self.dtype}[{', '.join(dims)}]"

    def max_shape(self) -> list[int]:
        return [int((self.dynamic or {}).get(str(i), {}).get("max", n)) for i, n in enumerate(self.shape)]


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
    example_inputs: dict | None = None   # where verification's inputs came from, with their sha256
    const_inputs: dict | None = None     # model inputs folded into the graph as constants (name -> sha256...)
    selection: dict | None = None        # --backend auto: every candidate's p50 (or why it dropped out), the choice
    sizes: dict | None = None            # payload bytes beside the model's weight bytes as given (dtype as stored)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        for spec in data["inputs"] + data["outputs"]:
            if spec["dynamic"] is None:  # static specs keep the three keys every edgekit reads
                del spec["dynamic"]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: object, where: str) -> "Manifest":
        if not isinstance(data, dict):
            raise EdgekitError(f"{where}: manifest must be a JSON object.")
        version = data.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise EdgekitError(f"{where}: unknown manifest schema version {_short(version)}; this edgekit reads "
                               f"version {SCHEMA_VERSION}. Recompile the artifact with this edgekit.")
        for k in ("inputs", "outputs"):
            if k in data and not isinstance(data[k], list):
                raise EdgekitError(f"{where}: manifest field {k!r} must be a list of tensor specs "
                                   f"(got {type(data[k]).__name__}). The manifest is damaged; recompile the artifact.")
        try:
            specs = {k: [TensorSpec(**_spec(s, where)) for s in data[k]] for k in ("inputs", "outputs")}
            fields = {k: v for k, v in data.items() if k not in ("inputs", "outputs")}
            manifest = cls(**fields, **specs)
        except (TypeError, KeyError) as exc:
            raise EdgekitError(f"{where}: malformed manifest ({exc}). Recompile the artifact.") from None
        _check_types(manifest, where)
        return manifest


def _spec(s: object, where: str) -> dict:
    if not isinstance(s, dict) or not {"name", "shape", "dtype"} <= set(s) <= {"name", "shape", "dtype", "dynamic"}:
        raise EdgekitError(f"{where}: malformed tensor spec {_short(s)}; expected keys name, shape, dtype (and "
                           f"dynamic). {FIX}")
    return s


MAX_RANK = 8                  # dims per declared tensor
MAX_ELEMENTS = 2 ** 31        # elements per declared tensor
MAX_TOTAL_BYTES = 2 ** 34     # all declared inputs and outputs together (16 GiB)
MAX_TEXT = 4096               # characters in a string field
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}
FIX = "The manifest is damaged or was not written by edgekit; recompile the artifact."


def _is_str(v: object) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TEXT and "\x00" not in v


def _check_types(m: Manifest, where: str) -> None:
    """Every field has the type and size edgekit writes; the message names the field, and the fix is a recompile."""
    def bad(field_: str, what: str) -> EdgekitError:
        return EdgekitError(f"{where}: manifest field {field_!r} {what}. {FIX}")

    for attr in ("model", "backend", "target", "arch", "precision", "entry"):
        if not _is_str(getattr(m, attr)):
            raise bad(attr, f"must be a string of at most {MAX_TEXT} characters")
    if not isinstance(m.files, dict) or not all(_is_str(k) and k and isinstance(v, str) and SHA256_HEX.fullmatch(v)
                                                for k, v in m.files.items()):
        raise bad("files", "must map file names to sha256 hex digests (64 lowercase hex characters)")
    if m.entry not in m.files:
        raise EdgekitError(f"{where}: manifest entry {m.entry!r} is not among its files. {FIX}")
    if m.quantization is not None and not isinstance(m.quantization, dict):
        raise bad("quantization", f"must be an object or null (got {type(m.quantization).__name__})")
    if m.selection is not None and not isinstance(m.selection, dict):
        raise bad("selection", f"must be an object or null (got {type(m.selection).__name__})")
    if m.sizes is not None and not isinstance(m.sizes, dict):
        raise bad("sizes", f"must be an object or null (got {type(m.sizes).__name__})")
    if not isinstance(m.toolchain, dict) or not all(_is_str(k) and _is_str(v) for k, v in m.toolchain.items()):
        raise bad("toolchain", "must map package names to version strings")
    for attr in ("backend_info", "verify"):
        if not isinstance(getattr(m, attr), dict):
            raise bad(attr, f"must be an object (got {type(getattr(m, attr)).__name__})")
    _check_backend_info(m, bad)
    if not m.outputs:
        raise bad("outputs", "is empty; an artifact has at least one output")
    total = 0
    for kind, specs in (("inputs", m.inputs), ("outputs", m.outputs)):
        for i, spec in enumerate(specs):
            ok_shape = isinstance(spec.shape, list) and all(type(d) is int and d >= 0 for d in spec.shape)
            if not _is_str(spec.name) or not ok_shape or not isinstance(spec.dtype, str) or spec.dtype not in DTYPES:
                raise EdgekitError(f"{where}: bad tensor spec {kind}[{i}] {_short(spec)} (name a string, shape a list "
                                   f"of non-negative ints, dtype one of {', '.join(DTYPES)}). {FIX}")
            if len(spec.shape) > MAX_RANK:
                raise bad(f"{kind}[{i}].shape", f"has rank {len(spec.shape)}; at most {MAX_RANK} dims are accepted")
            _check_dynamic(spec, f"{kind}[{i}].dynamic", bad)
            elements = 1
            for d in spec.max_shape():
                elements *= d
            if elements > MAX_ELEMENTS:
                raise bad(f"{kind}[{i}].shape", f"declares {elements} elements; at most {MAX_ELEMENTS} per tensor "
                          "are accepted")
            total += elements * ITEMSIZE[spec.dtype]
    if total > MAX_TOTAL_BYTES:
        raise bad("inputs/outputs", f"declare {total} bytes of tensors; at most {MAX_TOTAL_BYTES} are accepted")


def _check_dynamic(spec: TensorSpec, field_: str, bad) -> None:
    """A dynamic spec maps axes of the shape to {name, min, max} with min <= max."""
    if spec.dynamic is None:
        return
    if not isinstance(spec.dynamic, dict):
        raise bad(field_, "must be an object mapping axes to ranges, or absent")
    for axis, dim in spec.dynamic.items():
        ok = (isinstance(axis, str) and axis.isdigit() and int(axis) < len(spec.shape) and isinstance(dim, dict)
              and set(dim) == {"name", "min", "max"} and _is_str(dim["name"])
              and all(type(dim[k]) is int and dim[k] >= 0 for k in ("min", "max")) and dim["min"] <= dim["max"])
        if not ok:
            raise bad(f"{field_}.{_short(axis)}", "must be {name, min, max} (0 <= min <= max) for an axis of the shape")


def _check_backend_info(m: Manifest, bad) -> None:
    """The backend_info keys the runtimes read: device_code (a CUDA cubin among the files), providers, attention."""
    info = m.backend_info
    code = info.get("device_code")
    if code is not None:
        if not (isinstance(code, dict) and all(_is_str(code.get(k)) for k in ("arch", "cubin", "source_sha256"))):
            raise bad("backend_info.device_code", "must be an object with string arch, cubin and source_sha256")
        if code["cubin"] not in m.files:
            raise bad("backend_info.device_code.cubin", f"names {code['cubin']!r}, which is not among the files")
    providers = info.get("providers")
    if providers is not None and not (isinstance(providers, list) and all(_is_str(p) for p in providers)):
        raise bad("backend_info.providers", "must be a list of ONNX Runtime provider names")
    if "attention" in info and not _is_str(info["attention"]):
        raise bad("backend_info.attention", "must be a string")


def _short(value: object) -> str:
    """A bounded repr of manifest data (deeply nested or huge values stay short)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 3, 80, 80, 8, 8
    return r.repr(value)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- reading an artifact: containment, then the bytes
#
# Every file is opened once, relative to a descriptor of its directory, with O_NOFOLLOW at every path component
# (no symlink anywhere), checked to be a regular file with fstat, read whole, hashed, and handed to the runtime as
# those bytes: nothing is reopened by path after its checksum was taken.

SIGNATURE = "model.sig"          # OpenSSF Model Signing bundle over every other file (edgekit/trust.py)
RESERVED = (MANIFEST, SIGNATURE)  # top-level files that are not payloads
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # NONBLOCK: a FIFO cannot hang


@dataclass
class VerifiedArtifact:
    """An artifact as read and checked: manifest.json's bytes and every payload's bytes, each read once."""
    path: Path
    manifest: Manifest
    manifest_bytes: bytes
    payload: dict[str, bytes]                  # file name (as listed in the manifest) -> its verified bytes
    signature: bytes | None = None             # model.sig, when present
    policy: object = None                      # the trust.Policy it was checked against, if any

    @property
    def digest(self) -> str:
        """sha256 of manifest.json: pins the whole artifact (the manifest lists every payload's sha256)."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    def write_to(self, dest: Path, private: bool = True) -> Path:
        """Write manifest.json and the verified payload bytes into the new directory `dest`: modes 0700/0600, or
        0755/0644 with private=False (inside a directory that is itself private, e.g. an emulator guest's work dir
        read by an unprivileged guest user). Files are created exclusively (O_EXCL, O_NOFOLLOW)."""
        dmode, fmode = (0o700, 0o600) if private else (0o755, 0o644)
        dest.mkdir(mode=dmode)
        os.chmod(dest, dmode)  # mkdir's mode is masked by the umask
        for name, data in {MANIFEST: self.manifest_bytes, **self.payload}.items():
            path = dest.joinpath(*name.split("/"))
            for parent in reversed(path.relative_to(dest).parents[:-1]):
                if not (dest / parent).is_dir():
                    (dest / parent).mkdir(mode=dmode)
                    os.chmod(dest / parent, dmode)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, fmode)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), fmode)
                f.write(data)
        return dest


def check_name(name: object, where: Path) -> list[str]:
    """A listed file name's components, after refusing anything that could leave or confuse the directory."""
    bad = (not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\x00" in name
           or any(part in ("", ".", "..") for part in name.split("/")))
    if bad:
        raise EdgekitError(f"{where}: manifest lists the file name {name!r}, which is not a plain relative path "
                           "inside the artifact (absolute, '..', '.', empty component, backslash or NUL); refusing "
                           "to load it.")
    return name.split("/")


def _kind(mode: int) -> str:
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else
            "not a regular file")


def _read_at(dir_fd: int, parts: list[str], shown: Path, missing: str) -> bytes:
    """The bytes of dir_fd/parts..., refusing a symlink at any component and anything but a regular file."""
    fds = []
    try:
        fd = dir_fd
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                fd = os.open(part, _O_FILE if last else _O_DIR, dir_fd=fd)
            except FileNotFoundError:
                raise EdgekitError(f"{shown}: {missing}") from None
            except OSError as exc:
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    what = _kind(st.st_mode)
                except OSError:
                    what = exc.strerror
                raise EdgekitError(f"{shown}: {'/'.join(parts[:i + 1])} is {what}; an artifact holds only regular "
                                   "files and directories. Refusing to load it.") from None
            fds.append(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EdgekitError(f"{shown}: is {_kind(st.st_mode)}, not a regular file. Refusing to load it.")
        chunks = []
        while chunk := os.read(fd, 1 << 24):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        for f in fds:
            os.close(f)


def _walk(dir_fd: int, rel: str, root: Path, allowed: set[str]) -> None:
    """Every entry under the artifact, without following links: only listed regular files and non-empty dirs."""
    with os.scandir(dir_fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    if rel and not entries:
        raise EdgekitError(f"{root / rel}: empty directory not listed in the manifest. Something was added to the "
                           "artifact; remove it or recompile.")
    for e in entries:
        name = f"{rel}/{e.name}" if rel else e.name
        mode = e.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            sub = os.open(e.name, _O_DIR, dir_fd=dir_fd)
            try:
                _walk(sub, name, root, allowed)
            finally:
                os.close(sub)
        elif not stat.S_ISREG(mode):
            raise EdgekitError(f"{root / name}: is {_kind(mode)}; an artifact holds only regular files and "
                               "directories. Refusing to load it.")
        elif name not in allowed:
            raise EdgekitError(f"{root / name}: file not listed in the manifest. Something was added to the "
                               "artifact; remove it or recompile.")


def _parse_manifest(data: bytes, path: Path) -> Manifest:
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON syntax, 4300+ digit ints
        raise EdgekitError(f"{path}: not valid JSON ({exc}). The artifact is damaged; recompile it.") from None
    return Manifest.from_dict(parsed, str(path))


def _open_root(d: Path) -> int:
    try:
        return os.open(d, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise EdgekitError(f"{d}: no such artifact directory. Pass the --output directory of `edgekit compile`.") \
            from None


def read_manifest(artifact_dir: str | os.PathLike) -> Manifest:
    """The manifest alone (schema checked, payloads not): for reading a compile's result, not for loading."""
    d = Path(artifact_dir)
    fd = _open_root(d)
    try:
        data = _read_at(fd, [MANIFEST], d / MANIFEST, f"missing. {d} is not an edgekit artifact (compile one with "
                                                      "`edgekit compile`).")
    finally:
        os.close(fd)
    return _parse_manifest(data, d / MANIFEST)


def read_verified(artifact_dir: str | os.PathLike, policy=None) -> VerifiedArtifact:
    """Check and read a whole artifact. Order: manifest.json and model.sig bytes; `policy.check` (signature, pinned
    digest: edgekit/trust.py) before the manifest is even parsed; the manifest's schema; containment of the whole
    tree; then each payload read once, hashed and compared with the manifest (and the signature)."""
    d = Path(artifact_dir)
    fd = _open_root(d)
    try:
        manifest_bytes = _read_at(fd, [MANIFEST], d / MANIFEST, f"missing. {d} is not an edgekit artifact (compile "
                                                                "one with `edgekit compile`).")
        try:
            signature = _read_at(fd, [SIGNATURE], d / SIGNATURE, "missing")
        except EdgekitError:
            if os.path.lexists(d / SIGNATURE):
                raise
            signature = None
        signed = policy.check(d, manifest_bytes, signature) if policy is not None else None
        manifest = _parse_manifest(manifest_bytes, d / MANIFEST)
        listed = {name: check_name(name, d / MANIFEST) for name in manifest.files}
        if set(listed) & set(RESERVED):
            raise EdgekitError(f"{d / MANIFEST}: lists {sorted(set(listed) & set(RESERVED))[0]} as a payload; "
                               "that name is reserved. Refusing to load it.")
        device_code = manifest.backend_info.get("device_code") if isinstance(manifest.backend_info, dict) else None
        if isinstance(device_code, dict) and "cubin" in device_code and device_code["cubin"] not in listed:
            raise EdgekitError(f"{d / MANIFEST}: device code {device_code['cubin']!r} is not among its files. "
                               "Refusing to load it.")
        _walk(fd, "", d, {*listed, *RESERVED})
        payload = {}
        for name, parts in listed.items():
            data = _read_at(fd, parts, d / name, "payload file missing. The artifact is incomplete; recompile it.")
            if hashlib.sha256(data).hexdigest() != manifest.files[name]:
                raise EdgekitError(f"{d / name}: checksum mismatch (file truncated, tampered with or swapped). "
                                   "Refusing to load it; recompile the artifact or copy it again.")
            payload[name] = data
    finally:
        os.close(fd)
    if signed is not None:
        have = {MANIFEST: hashlib.sha256(manifest_bytes).hexdigest(),
                **{n: hashlib.sha256(b).hexdigest() for n, b in payload.items()}}
        if signed != have:
            diff = sorted(set(signed) ^ set(have)) or sorted(n for n in have if signed[n] != have[n])
            raise EdgekitError(f"{d / SIGNATURE}: does not cover exactly this artifact's files (differs at "
                               f"{', '.join(diff[:3])}). Refusing to load it.")
    return VerifiedArtifact(d, manifest, manifest_bytes, payload, signature, policy)


def load_verified(artifact_dir: str | os.PathLike, policy=None) -> Manifest:
    """The manifest, after every check of `read_verified`."""
    return read_verified(artifact_dir, policy).manifest


class StagingDir:
    """A temp dir beside the output; `commit` fills in checksums, writes the manifest and renames into place."""

    def __init__(self, output: str | os.PathLike, force: bool = False):
        self.output = Path(output).absolute()
        self.force = force
        if os.path.lexists(self.output):
            if not force:
                raise EdgekitError(f"{self.output}: output directory exists. Choose another --output or pass "
                                   "--force to replace it.")
            check_replaceable(self.output)
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
                          for p in sorted(self.path.rglob("*"))
                          if p.is_file() and p.relative_to(self.path).as_posix() not in RESERVED}
        (self.path / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")

    def commit(self) -> Path:
        if os.path.lexists(self.output):
            if not self.force:  # another process finished first
                raise EdgekitError(f"{self.output}: output directory appeared while compiling; pass --force "
                                   "to replace it.")
            check_replaceable(self.output)
            old = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.old.", dir=self.output.parent))
            os.replace(self.output, old / "a")
            shutil.rmtree(old, ignore_errors=True)
        os.chmod(self.path, 0o755)  # mkdtemp makes it private; an artifact is meant to be copied around
        try:
            os.rename(self.path, self.output)
        except OSError as exc:
            raise EdgekitError(f"{self.output}: could not move the finished artifact into place ({exc}).") from None
        return self.output


def check_replaceable(output: Path) -> None:
    """`--force` replaces an edgekit artifact and nothing else: a directory whose manifest.json parses."""
    if output.is_symlink():
        raise EdgekitError(f"{output}: is a symbolic link; --force replaces only an edgekit artifact directory. "
                           "Remove the link yourself or choose another --output.")
    if not output.is_dir():
        raise EdgekitError(f"{output}: is a file, not an edgekit artifact; --force replaces only artifact "
                           "directories. Nothing was changed; remove it yourself or choose another --output.")
    try:
        read_manifest(output)
    except EdgekitError as exc:
        try:
            names = sorted(p.name for p in output.iterdir())
        except OSError:
            names = []
        held = (f"it holds {len(names)} entr{'y' if len(names) == 1 else 'ies'} ({', '.join(names[:5])}"
                f"{', ...' if len(names) > 5 else ''})") if names else "it is empty"
        raise EdgekitError(f"{output}: not an edgekit artifact ({str(exc).split(': ', 1)[-1][:160]}); {held}. "
                           "--force replaces only a directory `edgekit compile` wrote; nothing was changed. Remove "
                           "it yourself or choose another --output.") from None
