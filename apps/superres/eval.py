"""The SR-literature evaluation protocol, so numbers compare with published tables.

HR cropped to a multiple of the scale, LR made by MATLAB's bicubic `imresize` (antialiased, mirrored
borders) and stored as uint8, SR output rounded to uint8, PSNR/SSIM on BT.601 luma with `scale` border
pixels dropped. Pillow and OpenCV bicubic differ from MATLAB at borders and in antialiasing, which moves
PSNR by tenths of a dB, hence the small port of the MATLAB algorithm below.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from edgekit.apps.progress import track
from edgekit.errors import EdgekitError

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5, as MATLAB uses."""
    ax = np.abs(x)
    return np.where(ax <= 1, 1.5 * ax**3 - 2.5 * ax**2 + 1,
                    np.where(ax <= 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0))


def _resize_matrix(n_in: int, scale: float) -> np.ndarray:
    """ceil(n_in * scale) x n_in weights of MATLAB imresize along one axis."""
    n_out = int(np.ceil(n_in * scale))
    stretch = min(scale, 1.0)  # downscaling widens the kernel: that is the antialiasing
    width = 4.0 / stretch
    centres = (np.arange(1, n_out + 1) / scale + 0.5 * (1 - 1 / scale))[:, None]
    taps = np.floor(centres - width / 2) + np.arange(int(np.ceil(width)) + 2)[None, :]
    weights = stretch * _cubic(stretch * (centres - taps))
    weights /= weights.sum(1, keepdims=True)
    mirrored = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    source = mirrored[(taps.astype(np.int64) - 1) % (2 * n_in)]
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.repeat(np.arange(n_out), taps.shape[1]), source.ravel()), weights.ravel())
    return matrix


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB `imresize(img, scale, 'bicubic')` for uint8 HxW[xC] images; returns uint8."""
    h, w = img.shape[:2]
    rows, cols = _resize_matrix(h, scale), _resize_matrix(w, scale)
    out = np.einsum("ij,jk...->ik...", rows, img.astype(np.float64))
    out = np.einsum("ij,kj...->ki...", cols, out)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """BT.601 studio-swing luma in [16, 235], float64, as MATLAB rgb2ycbcr."""
    return rgb.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0


def psnr_ssim_y(sr: np.ndarray, hr: np.ndarray, border: int) -> tuple[float, float]:
    crop = (slice(border, -border or None),) * 2
    a, b = y_channel(sr)[crop], y_channel(hr)[crop]
    mse = np.mean((a - b) ** 2)
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    # Gaussian 11x11, sigma 1.5, population covariance: the settings of Wang et al.'s reference SSIM.
    ssim = structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    return float(psnr), float(ssim)


def read_rgb(path: str | Path) -> np.ndarray:
    from edgekit.apps.media import check_image

    check_image(path)  # the header's size before decoding
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise EdgekitError(f"Cannot read {path} as an image. Pass a PNG, JPEG, BMP or TIFF file.")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def dataset_images(data: str | Path) -> list[Path]:
    paths = sorted(p for p in Path(data).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if Path(data).is_dir() else []
    if not paths:
        raise EdgekitError(f"No images found in {data}. Pass --data DIR with HR images (e.g. Set5).")
    return paths


@dataclass
class ImageScore:
    name: str
    psnr_y: float
    ssim_y: float
    bicubic_psnr_y: float


def evaluate(upscale: Callable[[np.ndarray], np.ndarray], data: str | Path, scale: int,
             on_score: Callable[[ImageScore], None] | None = None) -> list[ImageScore]:
    """Score `upscale` (uint8 RGB LR -> uint8 RGB SR) on every HR image under `data`; `on_score` gets each score as
    it is computed."""
    scores = []
    for path in track(dataset_images(data), "superres eval", unit="images"):
        hr = read_rgb(path)
        hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
        lr = imresize(hr, 1 / scale)
        psnr, ssim = psnr_ssim_y(upscale(lr), hr, scale)
        bicubic, _ = psnr_ssim_y(imresize(lr, scale), hr, scale)
        scores.append(ImageScore(path.stem, psnr, ssim, bicubic))
        if on_score:
            on_score(scores[-1])
    return scores
