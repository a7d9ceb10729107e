"""What edgekit prints on stderr: its own messages through `logging` (logger "edgekit", `-v`/`-q` on every command)
and the third-party noise a user cannot act on, silenced at its source.

`setup(verbosity)`: 0 (default) shows edgekit's INFO steps, -1 (`-q`) warnings and errors only, -2 errors only,
1 (`-v`) debug messages and the third-party warnings too. Call `silence_third_party()` before importing torch,
torchao, ExecuTorch, TVM or ONNX Runtime (the CLI does, in main()); a library imported later still obeys it because
the filters are installed by logger name and warning text, not on the modules.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["setup", "silence_third_party", "logger"]

logger = logging.getLogger("edgekit")

# third-party loggers whose warnings are about the library's own build or deprecations inside it: torchao's
# "Failed to load ..._C_*.so" (CUDA kernels this CPU build never uses), torch's pytree Enum deprecation
# (raised by torchao's own registration), ExecuTorch's and ONNX's exporter chatter
NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "torch._export", "torch.export", "torch.onnx",
                 "executorch", "onnxscript", "tvm", "root.tvm")

# warnings raised inside a library about its own internals or APIs edgekit calls as documented (module regex,
# category); user-facing warnings of edgekit itself stay
NOISY_WARNINGS = (
    (r"(torch|torchao|executorch|onnxscript|onnx|onnxruntime|tvm|timm|coremltools)(\.|$)", FutureWarning),
    (r"(torch|torchao|executorch|onnxscript|onnx|tvm)(\.|$)", DeprecationWarning),
    (r"(torch|torchao|executorch|onnxscript|tvm)(\.|$)", UserWarning),
)

# the same kind, raised from a frame outside the library (copyreg, importlib) so only the text identifies it
NOISY_MESSAGES = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),  # torch.export pytree, unpickling
    (r"open_text is deprecated", DeprecationWarning),  # importlib.resources, called by ExecuTorch
)

# runtime libraries' own log levels, read when they load
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "ORT_LOG_SEVERITY_LEVEL": "3", "TORCHAO_LOG_LEVEL": "ERROR"}


def silence_third_party(verbosity: int = 0) -> None:
    """Filters for the warnings and log lines of torch, torchao, ExecuTorch, TVM and ONNX Runtime; kept with -v."""
    if verbosity > 0:
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for module, category in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)
    for message, category in NOISY_MESSAGES:
        warnings.filterwarnings("ignore", message=message, category=category)


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest's capture, a redirected stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"edgekit: {record.levelname.lower()}: {text}"
        return text


def setup(verbosity: int = 0) -> None:
    """edgekit's logger at the level `verbosity` asks for, printing on stderr (once, however often called)."""
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(max(verbosity, -2), logging.DEBUG)
    logger.setLevel(level)
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(_Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    silence_third_party(verbosity)
