"""`make bench` cases: CFSR x4 on one 128x128 tile, fp32 and int8 (the app's recipe: calibrated on Set14 tiles,
PSNR-gated), beside the authors' own ONNX export in ONNX Runtime; and one dynamic-size artifact beside static ones."""
from __future__ import annotations

from pathlib import Path

from edgekit import paths
from edgekit.apps.spec import DynamicBench, ModelCase, QuantRecipe

from .model import example_inputs, from_pretrained, resolve_weights
from .quantize import int8_options

TILE = 128
# one artifact for any LR size up to 512x512, timed beside static artifacts at the tile and at an odd whole image
DYNAMIC = DynamicBench("input0:2=h:16..512,3=w:16..512", ({"h": TILE, "w": TILE}, {"h": 193, "w": 257}))


def cases() -> list:
    weights = resolve_weights(None, 4)
    if not weights.is_file():
        return []
    inputs = example_inputs(TILE, TILE)
    data = paths.data("sr", "Set14")
    int8 = None
    if data.is_dir():
        options = int8_options(data, 4, TILE)
        int8 = QuantRecipe(options["calibration"], metric=options["task_metric"], max_drop=options["max_drop"],
                           auto_fallback=options["auto_fallback"])
    return [ModelCase("cfsr_x4", from_pretrained(weights, 4), inputs, int8=int8,
                      peers=_authors_onnx(weights.parent / "CFSRx4.onnx", inputs),
                      work_unit=("MP_out", (TILE * 4) ** 2 / 1e6), dynamic=DYNAMIC)]


def _authors_onnx(path: Path, inputs: tuple) -> dict:
    if not path.is_file():
        return {}
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: inputs[0].numpy()}
    return {"authors' ONNX in onnxruntime": lambda: session.run(None, feed)}
