"""torch.export with errors a user can act on: which line failed and what to do about it."""
from __future__ import annotations

import contextlib
import io
import logging
import re
import traceback

from edgekit.errors import EdgekitError

from .dynamic import to_torch
from .source import TorchSource

_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s+(.+)')
_HINTS = (
    ("constraint violation", "the model fixes or relates a dimension named in --dynamic (torch.export's message "
                             "above says which, and may suggest a narrower range or a relation such as 2*h); "
                             "adjust --dynamic accordingly, or keep that axis static"),
    ("data-dependent", "the model branches or sizes a tensor on its values; use torch.where / torch.cond, or "
                       "move the decision out of forward()"),
    ("numpy", "forward() calls .numpy() or other non-torch code; keep forward() in torch ops"),
    ("not supported", "replace the unsupported call with plain torch ops"),
)


def export_torch(source: TorchSource):
    import torch

    shapes = to_torch(source.dynamic, len(source.example_inputs)) if source.dynamic else None
    try:
        with torch.no_grad(), quiet_torch_logs():
            return torch.export.export(source.module, source.example_inputs, dynamic_shapes=shapes)
    except Exception as exc:  # torch.export raises many unrelated types; all mean "cannot export"
        raise EdgekitError(describe_export_failure(source.name, exc)) from None


@contextlib.contextmanager
def quiet_torch_logs():
    """torch logs and prints whole graphs while failing or exporting; the user gets our summary instead."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def describe_export_failure(name: str, exc: BaseException) -> str:
    text = str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    where = _user_location(text, exc)
    hint = next((h for key, h in _HINTS if key in text.lower()), "rewrite that line with export-friendly torch ops")
    return (f"model {name!r} cannot be exported with torch.export: {first}"
            + (f"\n  at {where}" if where else "")
            + f"\n  fix: {hint} (see https://pytorch.org/docs/stable/export.html).")


def _user_location(text: str, exc: BaseException) -> str:
    frames = [m for m in _USER_FRAME.finditer(text) if not _is_library(m.group(1))]
    if frames:
        f = frames[-1]
        return f"{f.group(1)}:{f.group(2)} in {f.group(3)}: {f.group(4).strip()}"
    user = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_library(f.filename)]
    if user:
        f = user[-1]
        return f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
    return ""


def _is_library(filename: str) -> bool:
    return "site-packages" in filename or "/torch/" in filename or "/edgekit/compile/" in filename \
        or filename.endswith("compile/export.py") or filename.startswith("<")


def has_edgekit_scan(program) -> bool:
    return any(n.op == "call_function" and "edgekit.selective_scan" in str(n.target)
               for n in program.graph_module.graph.nodes)


def portable(program):
    """For backends without edgekit's kernels: each `torch.ops.edgekit.selective_scan` becomes its exportable
    chunked decomposition (cumsums and matmuls), which XNNPACK and ONNX Runtime run as ordinary ops."""
    if not has_edgekit_scan(program):
        return program
    from edgekit.kernels.scan.torch_op import decompose

    return decompose(program)
