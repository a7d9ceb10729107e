"""int8 for CFSR: calibration tiles cut from HR images (never the evaluation set), PSNR-Y on the held-out
tiles as the accuracy gate's task metric, and the budget the gate enforces.

The compile gate holds out the last quarter of the calibration samples; the tiles are shuffled with a fixed
seed so that quarter spans the images instead of being the last few.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .eval import dataset_images, imresize, psnr_ssim_y, read_rgb

# Budget on the held-out calibration tiles, 40% of the 0.10 dB the issue allows on Set5: measured Set5 drops were
# 1.5-2.3x the held-out figure (0.045 held-out gave 0.066 on ONNX Runtime, 0.103 on ExecuTorch).
MAX_DROP_DB = 0.04
TILES_PER_IMAGE = 8


def calibration_pairs(data: str | Path, scale: int, size: int, per_image: int = TILES_PER_IMAGE
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(LR tiles 1 x 3 x size x size float32 in [0, 1], matching HR crops uint8 HWC), shuffled. LR is the
    MATLAB-bicubic downscale the eval uses; tiles sit at evenly spaced positions along each image's diagonal
    and its anti-diagonal."""
    lrs, hrs = [], []
    for path in dataset_images(data):
        hr = read_rgb(path)
        hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
        lr = imresize(hr, 1 / scale)
        h, w = lr.shape[:2]
        if min(h, w) < size:
            continue
        for i, t in enumerate(np.linspace(0, 1, per_image)):
            y, x = int(t * (h - size)), int((t if i % 2 else 1 - t) * (w - size))
            lrs.append(lr[y:y + size, x:x + size].transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
            hrs.append(hr[y * scale:(y + size) * scale, x * scale:(x + size) * scale])
    order = np.random.default_rng(0).permutation(len(lrs))
    return [lrs[i] for i in order], [hrs[i] for i in order]


def _key(x: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()


class PsnrY:
    """Task metric for the int8 gate: mean PSNR-Y (dB) of the model's rounded output against the HR crop of
    each held-out LR tile, with the eval protocol's `scale`-pixel border."""
    metric_name = "psnr_y_db"

    def __init__(self, lr_tiles: list[np.ndarray], hr_tiles: list[np.ndarray], scale: int):
        self.hr = {_key(lr): hr for lr, hr in zip(lr_tiles, hr_tiles)}
        self.scale = scale

    def __call__(self, run, samples: list[list[np.ndarray]]) -> float:
        scores = []
        for (lr,) in samples:
            sr = np.clip(run([lr])[0][0].transpose(1, 2, 0), 0.0, 1.0)
            psnr, _ = psnr_ssim_y(np.round(sr * 255.0).astype(np.uint8), self.hr[_key(lr)], self.scale)
            scores.append(psnr)
        return float(np.mean(scores))


def int8_options(calibration: str | Path, scale: int, tile: int) -> dict:
    """compile_model options for int8 CFSR: calibrated on `calibration`'s HR images, gated on PSNR-Y,
    with the most sensitive layers kept in float until the drop fits MAX_DROP_DB."""
    lrs, hrs = calibration_pairs(calibration, scale, tile)
    return {"quantize": "int8", "calibration": [(x,) for x in lrs], "task_metric": PsnrY(lrs, hrs, scale),
            "max_drop": MAX_DROP_DB, "auto_fallback": True}
