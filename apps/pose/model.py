"""BlazePose's two networks (MediaPipe's TFLite files) imported as torch modules, and the 3D lifter."""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgekit import paths
from edgekit.apps.pose import lifter as lifting
from edgekit.apps.pose.skeleton import NUM_JOINTS
from edgekit.apps.runners import BACKENDS, Runner, check_backend, runner
from edgekit.compile.tflite_import import load_tflite
from edgekit.apps.spec import CompileSpec, Tolerance
from edgekit.errors import EdgekitError

__all__ = ["BACKENDS", "BlazePose", "Network", "Runner", "VERIFY_TOLERANCE", "compile_models",
           "lifter_dynamic_shapes", "lifter_network", "lifter_runner", "runners"]
DETECTOR_FILE = "pose_detection.tflite"
LANDMARK_FILE = "pose_landmark_full.tflite"


@dataclass
class Network:
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    files: tuple[Path, ...] = field(default=())  # what it was read from (a .tflite): part of the cache key


@dataclass
class BlazePose:
    detector: Network    # 224x224 RGB in [-1, 1] -> SSD boxes (1, 2254, 12), scores (1, 2254, 1)
    landmarker: Network  # 256x256 RGB in [0, 1] -> landmarks (1, 195), presence (1, 1), mask, heatmap, world

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path | None = None) -> "BlazePose":
        """Load both .tflite files from weights_dir (default: $EDGEKIT_WEIGHTS/mediapipe, edgekit.paths)."""
        weights_dir = Path(weights_dir) if weights_dir is not None else paths.weights("mediapipe")
        missing = [f for f in (DETECTOR_FILE, LANDMARK_FILE) if not (weights_dir / f).is_file()]
        if missing:
            raise EdgekitError(f"{', '.join(missing)} not found in {weights_dir}. Point edgekit at the weights "
                               "folder holding mediapipe/ (`edgekit paths --set weights=DIR`, or EDGEKIT_WEIGHTS=DIR); "
                               "for one command: `edgekit pose run ... --weights DIR` (MediaPipe's pose .tflite files).")
        return cls(*(Network(*load_tflite(weights_dir / f), files=(weights_dir / f,))
                     for f in (DETECTOR_FILE, LANDMARK_FILE)))


# On random inputs the segmentation head's logits reach ~1e3 and move by ~0.3 with the kernels' summation order,
# so the compile-time check uses a loose absolute bound (recorded in the manifest with the measured errors);
# tests/test_tflite_import.py holds every backend to LiteRT within 1e-3 on a real photo.
VERIFY_TOLERANCE = {"atol": 1.0, "rtol": 1e-3}


def compile_models(weights_dir: str | Path | None = None) -> dict:
    """`edgekit compile --model pose.NAME`: {name: builder() -> CompileSpec}."""
    def build(part: str) -> CompileSpec:
        network = getattr(BlazePose.from_pretrained(weights_dir), part)
        return CompileSpec(network.module, network.example_inputs, Tolerance(**VERIFY_TOLERANCE))

    def build_lifter() -> CompileSpec:
        network = lifter_network()
        return CompileSpec(network.module, network.example_inputs)

    return {"detector": lambda: build("detector"), "landmark": lambda: build("landmarker"), "lifter": build_lifter}


def lifter_network(weights: str | Path | None = None) -> Network:
    """The 3D lifter (default: the shipped KTPFormer) with a seeded example window of normalised 2D poses."""
    model = lifting.load(weights)
    example = torch.randn(1, model.frames, NUM_JOINTS, 2, generator=torch.Generator().manual_seed(0))
    return Network(model, (example,))


def lifter_dynamic_shapes(module: torch.nn.Module) -> str | None:
    """compile_model's dynamic_shapes for the lifter: KTPFormer takes any window of MIN_FRAMES..frames frames (axis 1
    of its one input, named `frames`); None for a single-frame lifter (the MLP), whose artifact stays static."""
    frames = getattr(module, "frames", 1)
    if not isinstance(module, lifting.KTPFormer) or frames <= lifting.MIN_FRAMES:
        return None
    return f"input0:1=frames:{lifting.MIN_FRAMES}..{frames}"


def lifter_runner(backend: str, artifacts=None, weights: str | Path | None = None) -> tuple[Runner, int, int]:
    """(lifter, window frames, fewest frames): the lifter as a numpy callable on `backend`, taking (1, T, 17, 2)
    windows of any T in fewest..window (KTPFormer: MIN_FRAMES..frames; the MLP: 1). Eager runs attention through
    edgekit.kernels.attention; a compiled KTPFormer is ONE artifact with a dynamic frame axis (lifter_dynamic_shapes,
    verified at the smallest, an odd and the largest T) from the compiled-model cache in `artifacts` (None:
    edgekit.paths.artifact_cache()), keyed by the weights, so retrained weights get a new artifact."""
    check_backend(backend)
    network = lifter_network(weights)
    module = network.module
    if backend == "eager":
        lifting.use_kernel(module)
    path = Path(weights) if weights else lifting.KTPFORMER_WEIGHTS
    dynamic = lifter_dynamic_shapes(module)
    options = {"dynamic_shapes": dynamic} if dynamic and backend != "eager" else {}
    fewest = lifting.MIN_FRAMES if dynamic else module.frames
    return run_network(network, path.stem, backend, artifacts, tolerance={}, **options), module.frames, fewest


def runners(model: BlazePose, backend: str, artifacts=None) -> tuple[Runner, Runner]:
    """(detector, landmarker) as numpy-in, numpy-out callables on `backend` (see BACKENDS); compiled ones cached in
    `artifacts` (None: edgekit.paths.artifact_cache()), keyed by the .tflite files' bytes and the imported weights."""
    check_backend(backend)
    return (run_network(model.detector, "pose_detection", backend, artifacts),
            run_network(model.landmarker, "pose_landmark_full", backend, artifacts))


def run_network(network: Network, name: str, backend: str, artifacts=None, tolerance: dict | None = None,
                **options) -> Runner:
    """One network on `backend`, verified within VERIFY_TOLERANCE (or `tolerance`) when compiled; options:
    compile_model's (e.g. dynamic_shapes)."""
    return runner(network.module, network.example_inputs, name, backend, cache_dir=artifacts, files=network.files,
                  **(VERIFY_TOLERANCE if tolerance is None else tolerance), **options)
