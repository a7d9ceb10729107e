"""Calibration samples from the API (tuples of tensors/arrays) or the CLI (a directory of .npy / .npz)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError


def load_samples(calibration, example_inputs: list[np.ndarray]) -> list[list[np.ndarray]]:
    if calibration is None:
        raise EdgekitError("--quantize int8 needs calibration data: pass --calibration DIR (one .npy per sample for "
                           "single-input models, or .npz with arrays input0, input1, ...), or calibration=[...] in "
                           "Python.")
    samples = _from_dir(Path(calibration)) if isinstance(calibration, (str, Path)) else \
        [[np.asarray(_numpy(x)) for x in (s if isinstance(s, (tuple, list)) else (s,))] for s in calibration]
    if len(samples) < 2:
        raise EdgekitError(f"calibration needs at least 2 samples (some are held out to measure accuracy); "
                           f"got {len(samples)}.")
    for i, sample in enumerate(samples):
        got = [(list(x.shape), x.dtype.name) for x in sample]
        want = [(list(x.shape), x.dtype.name) for x in example_inputs]
        if got != want:
            raise EdgekitError(f"calibration sample {i} has inputs {got}; the model takes {want}.")
    return samples


def split(samples: list) -> tuple[list, list]:
    """Last quarter (at least one sample) is held out for the accuracy figure, never used to calibrate."""
    n_held = max(1, len(samples) // 4)
    return samples[:-n_held], samples[-n_held:]


def _numpy(x):
    return x.detach().numpy() if hasattr(x, "detach") else x


def _from_dir(path: Path) -> list[list[np.ndarray]]:
    if not path.is_dir():
        raise EdgekitError(f"{path}: calibration directory not found.")
    files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
    if not files:
        raise EdgekitError(f"{path}: no .npy or .npz calibration samples in it.")
    samples = []
    for f in files:
        try:
            data = np.load(f, allow_pickle=False)
        except ValueError as exc:
            raise EdgekitError(f"{f}: not a readable numpy file ({exc}).") from None
        if f.suffix == ".npz" and sorted(data.files) != sorted(f"input{i}" for i in range(len(data.files))):
            raise EdgekitError(f"{f}: a .npz sample must hold arrays named input0, input1, ...; it has {data.files}.")
        samples.append([data] if f.suffix == ".npy" else [data[f"input{i}"] for i in range(len(data.files))])
    return samples
