"""Image pipeline around any SR callable: tiling with overlap, dtype and channel-layout handling.

An `SRFn` maps a float32 1 x 3 x h x w array in [0, 1] to 1 x 3 x sh x sw. `tile` is the largest LR piece run in
one call: an image with both sides <= tile runs whole, a larger one in overlapping tile x tile windows. Eager
PyTorch accepts any h x w; a compiled fp32 artifact is ONE dynamic-shape artifact taking every LR side in
MIN_SIZE..tile (smaller pieces are mirrored up to MIN_SIZE, `min_size`); an int8 artifact (quantized artifacts
are static) takes only tile x tile, so `fixed_tile=True` pads windows to it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from edgekit.apps.runners import BACKENDS, CACHE_HELP, check_backend, runner
from edgekit.errors import EdgekitError

from .model import example_inputs, from_pretrained, resolve_weights
from .quantize import int8_options

__all__ = ["BACKENDS", "CACHE_HELP", "MAX_TILE", "MIN_SIZE", "SRFn", "build_sr", "check_tiling", "dynamic_range",
           "tiling_for", "upscale_image", "upscale_rgb"]
SRFn = Callable[[np.ndarray], np.ndarray]

MIN_SIZE = 16  # smallest LR side a compiled fp32 artifact takes; a smaller image is mirrored up to it and cropped
# largest --tile a compiled artifact is built for: compiling verifies the model at tile x tile, which takes minutes
# and gigabytes beyond this
MAX_TILE = 1024


def build_sr(backend: str, scale: int, weights=None, tile: int = 128, target: str = "host",
             quantize: str | None = None, calibration=None, cache_dir=None) -> SRFn:
    """The SR callable for a backend. Compiled artifacts come from edgekit's compiled-model cache (`cache_dir`,
    None: edgekit.paths.artifact_cache()), keyed by the weights, code, backend, target, precision and tile, so a
    second eval or run reuses them instead of recompiling. fp32: one artifact for every LR size in
    MIN_SIZE..tile (dynamic_range), whatever the images' sizes; int8: one for tile x tile (see `tiling_for`).

    calibration: HR image folder whose LR tiles calibrate `quantize="int8"` and whose HR crops score it (PSNR-Y
    gate, quantize.py); keep it apart from eval data.
    """
    check_backend(backend)
    if quantize and backend == "eager":
        raise EdgekitError("--quantize needs a compiled backend. Pass --backend executorch, onnxruntime or tvm.")
    if quantize and not calibration:
        raise EdgekitError("--quantize int8 needs calibration images. Pass --calibration DIR (e.g. Set14) or set "
                           "EDGEKIT_DATA.")
    if backend != "eager":
        check_tiling(tile, 0, backend)
    module = from_pretrained(resolve_weights(weights, scale), scale)
    options = {}
    if quantize:
        from edgekit.compile.quantize import CONFIGS  # late: importing the quantizers costs seconds

        # calibration tiles and the PSNR task metric are not plain values: the recipe names them for the cache key
        options = {"recipe": f"{quantize}v{CONFIGS[quantize].version}-{Path(calibration).name}-t{tile}",
                   **int8_options(calibration, scale, tile)}
    elif backend != "eager":
        # compiled for (and verified at) MIN_SIZE, an odd size and tile; against fp32 eager with a fixed bound of a
        # 250th of an 8-bit level: the float64 rule's reference would add minutes of float64 CFSR at tile x tile
        options = {"dynamic_shapes": dynamic_range(tile), "atol": 1e-4, "rtol": 1e-4}
    run = runner(module, example_inputs(tile, tile), f"cfsr_x{scale}", backend, target=target, cache_dir=cache_dir,
                 **options)
    return lambda x: run(x)[0]


def dynamic_range(tile: int) -> str:
    """compile_model's dynamic_shapes for a compiled fp32 artifact: LR height and width each in MIN_SIZE..tile."""
    return f"input0:2=h:{MIN_SIZE}..{tile},3=w:{MIN_SIZE}..{tile}"


def check_tiling(tile: int, overlap: int, backend: str = "eager") -> None:
    """--tile / --overlap as given (never adjusted): a compiled backend also needs MIN_SIZE <= tile <= MAX_TILE."""
    if overlap < 0:
        raise EdgekitError(f"--overlap {overlap} is negative. Pass 0 or more LR pixels of context.")
    if tile <= 2 * overlap:
        raise EdgekitError(f"--tile {tile} must exceed twice --overlap {overlap}. Raise --tile or lower --overlap.")
    if backend != "eager" and not MIN_SIZE <= tile <= MAX_TILE:
        raise EdgekitError(f"--tile {tile} is outside {MIN_SIZE}..{MAX_TILE}, the largest LR piece a compiled "
                           f"{backend} artifact can be built for (compiling verifies it at tile x tile). Pass a "
                           f"--tile in that range; larger images are tiled.")


def tiling_for(backend: str, tile: int, overlap: int, quantize: str | None = None) -> dict:
    """upscale_rgb's keyword arguments for what build_sr built: eager takes any size; an fp32 artifact any side in
    MIN_SIZE..tile (smaller pieces mirrored up to MIN_SIZE); an int8 artifact exactly tile x tile."""
    if backend == "eager":
        return {"tile": tile, "overlap": overlap}
    if quantize:
        return {"tile": tile, "overlap": overlap, "fixed_tile": True}
    return {"tile": tile, "overlap": overlap, "min_size": MIN_SIZE}


def windows(size: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """(core_start, core_end, win_start, win_end) along one axis.

    Cores partition [0, size); each window is `tile` long (or the whole axis when shorter), contains its
    core plus at least `overlap` pixels of real context on each side that is not an image border, and is
    shifted inward at the borders rather than padded, so only images smaller than a tile need padding.
    """
    if size <= tile:
        yield 0, size, 0, size
        return
    step = tile - 2 * overlap
    for start in range(0, size, step):
        end = min(start + step, size)
        win = min(max(start - overlap, 0), size - tile)
        yield start, end, win, win + tile


def upscale_rgb(rgb: np.ndarray, sr: SRFn, scale: int, tile: int | None = None, overlap: int = 16,
                fixed_tile: bool = False, min_size: int = 1) -> np.ndarray:
    """H x W x 3 uint8/uint16/float RGB -> sH x sW x 3 of the same dtype, rounded and clipped.

    `tile`: the largest LR piece per `sr` call (None: the image whole, any size); an image with both sides <= tile
    runs in one call. Memory is one output image plus one piece's activations. Pieces are mirrored up to
    `min_size` per side (a dynamic artifact's smallest size), or to tile x tile with `fixed_tile`; the output is
    cropped back.
    """
    h, w = rgb.shape[:2]
    peak = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else 1.0
    out = np.empty((h * scale, w * scale, 3), rgb.dtype)
    least = tile if fixed_tile and tile else min_size
    for y0, y1, wy0, wy1 in windows(h, tile or h, overlap):
        for x0, x1, wx0, wx1 in windows(w, tile or w, overlap):
            patch = rgb[wy0:wy1, wx0:wx1].astype(np.float32) / peak
            up = _run_patch(sr, patch, scale, least)
            core = up[(y0 - wy0) * scale:(y1 - wy0) * scale, (x0 - wx0) * scale:(x1 - wx0) * scale]
            out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = _to_dtype(core, peak, rgb.dtype)
    return out


def _run_patch(sr: SRFn, patch: np.ndarray, scale: int, least: int = 1) -> np.ndarray:
    """Run one HWC window, padding a side shorter than `least` up to it (a compiled artifact's smallest or fixed
    size). Mirroring (symmetric) keeps the border closest to the unpadded result among numpy's pad modes on Set5."""
    h, w = patch.shape[:2]
    if h < least or w < least:
        patch = np.pad(patch, ((0, max(least - h, 0)), (0, max(least - w, 0)), (0, 0)), mode="symmetric")
    y = sr(np.ascontiguousarray(patch.transpose(2, 0, 1)[None]))[0].transpose(1, 2, 0)
    return y[: h * scale, : w * scale]


def _to_dtype(x: np.ndarray, peak: float, dtype: np.dtype) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0) * peak
    return np.round(x).astype(dtype) if np.issubdtype(dtype, np.integer) else x.astype(dtype)


def upscale_image(img: np.ndarray, sr: SRFn, scale: int, **tiling) -> np.ndarray:
    """Gray HxW, RGB HxWx3 or RGBA HxWx4 (8/16-bit or float) -> the same layout and dtype, upscaled.

    Gray goes through the model as three equal channels; alpha is not image content the model was
    trained on, so it is upscaled on its own with bicubic.
    """
    if img.ndim == 2:
        rgb = upscale_rgb(np.repeat(img[..., None], 3, axis=2), sr, scale, **tiling)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if img.shape[2] == 4:
        rgb = upscale_rgb(np.ascontiguousarray(img[..., :3]), sr, scale, **tiling)
        alpha = cv2.resize(img[..., 3], (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_CUBIC)
        return np.dstack([rgb, alpha])
    return upscale_rgb(img, sr, scale, **tiling)
