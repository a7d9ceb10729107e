"""BlazePose's two networks (MediaPipe's TFLite files) imported as torch modules, and the 3D lifter."""

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekit.apps.pose import lifter as lifting
from edgekit.apps.pose.skeleton import NUM_JOINTS
from edgekit.compile.tflite_import import load_tflite
from edgekit.errors import EdgekitError

DETECTOR_FILE = "pose_detection.tflite"
LANDMARK_FILE = "pose_landmark_full.tflite"
BACKENDS = ("eager", "executorch", "onnxruntime", "tvm")
Runner = Callable[..., list[np.ndarray]]


@dataclass
class Network:
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]


@dataclass
class BlazePose:
    detector: Network    # 224x224 RGB in [-1, 1] -> SSD boxes (1, 2254, 12), scores (1, 2254, 1)
    landmarker: Network  # 256x256 RGB in [0, 1] -> landmarks (1, 195), presence (1, 1), mask, heatmap, world

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path | None = None) -> "BlazePose":
        """Load both .tflite files from weights_dir (default: $EDGEKIT_WEIGHTS/mediapipe)."""
        if weights_dir is None:
            if "EDGEKIT_WEIGHTS" not in os.environ:
                raise EdgekitError("BlazePose weights not located. Set EDGEKIT_WEIGHTS to the folder holding "
                                   "mediapipe/ or pass --weights DIR.")
            weights_dir = Path(os.environ["EDGEKIT_WEIGHTS"]) / "mediapipe"
        weights_dir = Path(weights_dir)
        missing = [f for f in (DETECTOR_FILE, LANDMARK_FILE) if not (weights_dir / f).is_file()]
        if missing:
            raise EdgekitError(f"{', '.join(missing)} not found in {weights_dir}. Point --weights (or "
                               "EDGEKIT_WEIGHTS/mediapipe) at MediaPipe's pose .tflite files.")
        return cls(*(Network(*load_tflite(weights_dir / f)) for f in (DETECTOR_FILE, LANDMARK_FILE)))


# On random inputs the segmentation head's logits reach ~1e3 and move by ~0.3 with the kernels' summation order,
# so the compile-time check uses a loose absolute bound (recorded in the manifest with the measured errors);
# tests/test_tflite_import.py holds every backend to LiteRT within 1e-3 on a real photo.
VERIFY_TOLERANCE = {"atol": 1.0, "rtol": 1e-3}


def compile_models(weights_dir: str | Path | None = None) -> dict:
    """`edgekit compile --model pose.NAME`: {name: builder() -> (module, example_inputs, compile options)}."""
    def build(part: str):
        network = getattr(BlazePose.from_pretrained(weights_dir), part)
        return network.module, network.example_inputs, VERIFY_TOLERANCE

    def build_lifter():
        network = lifter_network()
        return network.module, network.example_inputs, {}

    return {"detector": lambda: build("detector"), "landmark": lambda: build("landmarker"), "lifter": build_lifter}


def lifter_network(weights: str | Path | None = None) -> Network:
    """The 3D lifter (default: the shipped KTPFormer) with a seeded example window of normalised 2D poses."""
    model = lifting.load(weights)
    example = torch.randn(1, model.frames, NUM_JOINTS, 2, generator=torch.Generator().manual_seed(0))
    return Network(model, (example,))


def lifter_runner(backend: str, artifacts: Path, weights: str | Path | None = None) -> tuple[Runner, int]:
    """(lifter, window frames): the lifter as a numpy callable on `backend`. Eager runs attention through
    edgekit.kernels.attention; compiled artifacts are named by a hash of the weights, so retrained weights get
    a new artifact instead of a stale one."""
    if backend not in BACKENDS:
        raise EdgekitError(f"unknown backend {backend!r}. Choose one of {', '.join(BACKENDS)}.")
    network = lifter_network(weights)
    frames = network.module.frames
    if backend == "eager":
        lifting.use_kernel(network.module)
        return eager(network), frames
    path = Path(weights) if weights else lifting.KTPFORMER_WEIGHTS
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return compiled(network, f"{path.stem}-{digest}", backend, artifacts, tolerance={}), frames


def runners(model: BlazePose, backend: str, artifacts: Path) -> tuple[Runner, Runner]:
    """(detector, landmarker) as numpy-in, numpy-out callables on `backend` (see BACKENDS)."""
    if backend not in BACKENDS:
        raise EdgekitError(f"unknown backend {backend!r}. Choose one of {', '.join(BACKENDS)}.")
    if backend == "eager":
        return eager(model.detector), eager(model.landmarker)
    return (compiled(model.detector, "pose_detection", backend, artifacts),
            compiled(model.landmarker, "pose_landmark_full", backend, artifacts))


def eager(network: Network) -> Runner:
    def run(*inputs: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = network.module(*(torch.from_numpy(x.astype(np.float32)) for x in inputs))
        # a lone tensor (the lifter) is one output, not a sequence of batch rows
        return [y.numpy() for y in ((outputs,) if isinstance(outputs, torch.Tensor) else outputs)]
    return run


def compiled(network: Network, name: str, backend: str, artifacts: Path, tolerance: dict | None = None) -> Runner:
    """Compile for this host on first use (artifacts/<name>-<backend>), then run the artifact."""
    import edgekit
    from edgekit.artifact import MANIFEST

    path = artifacts / f"{name}-{backend}"
    if not (path / MANIFEST).is_file():
        edgekit.compile_model(network.module, network.example_inputs, target="host", backend=backend, output=path,
                              name=name, **(VERIFY_TOLERANCE if tolerance is None else tolerance))
    model = edgekit.load(path)
    return lambda *inputs: model.run([x.astype(np.float32) for x in inputs])
