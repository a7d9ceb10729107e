"""The accuracy gate: no quantized artifact ships without a measured figure against fp32.

Without an app's task metric the metric is the cosine similarity of the outputs to fp32 (1.0 for fp32
itself), so `max_drop=0.001` keeps cosine >= 0.999; the output SNR is reported beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Outputs = list[np.ndarray]
# A task metric scores a model given as `run(inputs) -> outputs` on the held-out samples; higher is better.
TaskMetric = Callable[[Callable[[list[np.ndarray]], Outputs], list[list[np.ndarray]]], float]


@dataclass
class Score:
    metric: str
    fp32: float
    quantized: float
    snr_db: float
    cosine: float

    @property
    def drop(self) -> float:
        return self.fp32 - self.quantized

    def as_dict(self) -> dict:
        return {"metric": self.metric, "fp32": self.fp32, "quantized": self.quantized, "drop": self.drop,
                "snr_db": self.snr_db, "cosine": self.cosine}


def output_agreement(reference: list[Outputs], got: list[Outputs]) -> tuple[float, float]:
    """(SNR dB, cosine similarity) over all held-out outputs concatenated."""
    ref = np.concatenate([o.astype(np.float64).ravel() for outs in reference for o in outs])
    new = np.concatenate([o.astype(np.float64).ravel() for outs in got for o in outs])
    noise = float(np.sum((ref - new) ** 2))
    snr = float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref ** 2)) / noise)
    cos = float(ref @ new / max(np.linalg.norm(ref) * np.linalg.norm(new), 1e-30))
    return snr, cos


def score(run_fp32, run_quant, held_out: list[list[np.ndarray]], task_metric: TaskMetric | None) -> Score:
    reference = [run_fp32(x) for x in held_out]
    got = [run_quant(x) for x in held_out]
    snr, cos = output_agreement(reference, got)
    if task_metric is None:
        return Score("cosine", 1.0, cos, snr, cos)
    name = getattr(task_metric, "metric_name", getattr(task_metric, "__name__", "task_metric"))
    # the metric sees the outputs already computed: each model runs once per sample
    return Score(name, task_metric(_replay(held_out, reference), held_out),
                 task_metric(_replay(held_out, got), held_out), snr, cos)


def _replay(samples: list[list[np.ndarray]], outputs: list[Outputs]):
    by_sample = {id(s[0]): o for s, o in zip(samples, outputs)}
    return lambda inputs: by_sample[id(inputs[0])]


def sensitivity_report(rows: list[tuple[str, float]], drop: float, max_drop: float, metric: str,
                       auto_fallback: bool = False) -> str:
    lines = "\n".join(f"  {name:<32} {d:+.4g}" for name, d in rows[:10])
    return (f"int8 accuracy gate failed: {metric} drops by {drop:.4g} (allowed {max_drop:g}).\n"
            f"Per-layer sensitivity ({metric} drop with only that layer in int8), worst first:\n{lines}\n"
            + ("Raise --max-drop, or compile this backend in float." if auto_fallback else
               "Pass --auto-fallback to keep the most sensitive layers in float, or raise --max-drop."))
