"""Which attention an ExecuTorch artifact runs, chosen by measurement.

ExecuTorch offers two paths for scaled_dot_product_attention: its fused `llama.custom_sdpa` kernel, or
the math decomposition (bmm + softmax + bmm) that XNNPACK delegates. On this 2-core x86 host, fp32,
B=1 H=8 L=1024 D=64 (same run, loaded machine): custom_sdpa 263 ms vs 401 ms non-causal and 163 ms vs
455 ms causal. The custom kernel ships only in the Python runtime (it links libtorch through
libcustom_ops_aot_lib); the lean C++ runtime a phone or Jetson gets has no such kernel library, so
device targets keep the XNNPACK decomposition.
"""
from __future__ import annotations

import torch

CUSTOM = "llama.custom_sdpa"
DECOMPOSED = "xnnpack-decomposition"


def register() -> None:
    """Load ExecuTorch's custom-op library (torch.ops.llama.*), for export and for the Python runtime."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers on import)


def has_sdpa(program) -> bool:
    return any(node.target is torch.ops.aten.scaled_dot_product_attention.default
               for node in program.graph_module.graph.nodes)


def use_custom_sdpa(program):
    """Every SDPA the fused kernel supports (no mask tensor, no dropout, same heads and length for q and k/v) becomes
    llama.custom_sdpa; the rest get the math decomposition XNNPACK would have been given."""
    register()
    return program.run_decompositions({torch.ops.aten.scaled_dot_product_attention.default: _sdpa})


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    # custom_sdpa reads a KV cache: with start_pos 0 it sees only the first Lq keys, so Lq must equal Lk
    fused = (attn_mask is None and dropout_p == 0.0 and q.dim() == 4 and q.shape[1] == k.shape[1]
             and q.shape[2] == k.shape[2])
    # custom_sdpa's causal mask is top-left aligned (start_pos 0), as torch's is_causal
    if fused:
        out = torch.ops.llama.custom_sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0, None, 0.0,
                                          is_causal, scale)
        return out.transpose(1, 2)
    return _math(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def _math(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    if enable_gqa and q.shape[-3] != k.shape[-3]:
        repeat = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(repeat, dim=-3), v.repeat_interleave(repeat, dim=-3)
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        lq, lk = q.shape[-2], k.shape[-2]
        scores = scores.masked_fill(~torch.ones(lq, lk, dtype=torch.bool).tril(), float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.nn.functional.dropout(scores.softmax(-1), dropout_p) @ v
