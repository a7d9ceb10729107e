"""CPU schedule rules (compile/lower/tvm_schedule.py): same outputs as TVM's default loops, and the kernels really
are parallel + vectorised (x86 host and aarch64 NEON)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

tvm = pytest.importorskip("tvm")

from tvm.relax.frontend.torch import from_exported_program  # noqa: E402

from edgekit.compile.export import export_torch  # noqa: E402
from edgekit.compile.lower import tvm_schedule  # noqa: E402
from edgekit.compile.lower.tvm import tvm_target  # noqa: E402
from edgekit.compile.source import from_module  # noqa: E402
from edgekit.targets import get_target  # noqa: E402
from edgekit.zoo import conv_attention  # noqa: E402


class Matmul(nn.Module):
    def forward(self, a, b):
        return a @ b


class Framed(nn.Module):
    """An STFT as a conv (Whisper's and Samba's front end, smaller): one channel, 64 taps every 24 samples, over
    the signal given in hops of 24 samples (so that a dynamic hop count gives export an exact frame count)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 50, 64, stride=24)

    def forward(self, hops):
        return self.conv(hops.flatten(1).unsqueeze(1))


class StridedCausal(nn.Module):
    """Samba's front end, smaller: a strided conv, then a causal depthwise conv cut back to its input's length: at a
    dynamic length the cut ends at (L - 4) // 4 + 1, a bound TVM only takes once proven in range (_inbound_slice)."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv1d(8, 16, 4, stride=4)
        self.causal = nn.Conv1d(16, 16, 4, padding=3, groups=16)

    def forward(self, x):
        y = self.down(x)
        return torch.nn.functional.silu(self.causal(y)[..., :y.shape[-1]])


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(48)

    def forward(self, x):
        return torch.softmax(self.norm(x), dim=-1)


def _cases():
    torch.manual_seed(0)
    return {
        "matmul": (Matmul(), (torch.randn(2, 40, 24), torch.randn(2, 24, 64))),
        "linear_gelu": (nn.Sequential(nn.Linear(32, 64), nn.GELU()), (torch.randn(16, 32),)),
        "conv2d": (nn.Conv2d(8, 32, 3, padding=1), (torch.randn(1, 8, 20, 32),)),
        "conv2d_stride2": (nn.Conv2d(3, 16, 3, stride=2, padding=1), (torch.randn(1, 3, 33, 33),)),
        "depthwise": (nn.Conv2d(16, 16, 7, padding=3, groups=16), (torch.randn(1, 16, 24, 32),)),
        # rows of 40 and 14 pixels: no multiple of AVX-512's 16 lanes (narrower vectors; transposed weights)
        "conv2d_width40": (nn.Conv2d(24, 32, 3, padding=1), (torch.randn(1, 24, 8, 40),)),
        "pointwise_14x14": (nn.Conv2d(48, 32, 1), (torch.randn(1, 48, 14, 14),)),
        "strided_causal_conv1d": (StridedCausal(), (torch.randn(1, 8, 64),)),
        "depthwise_14x14": (nn.Conv2d(32, 32, 5, padding=2, groups=32), (torch.randn(1, 32, 14, 14),)),
        "softmax_layernorm": (Norms(), (torch.randn(2, 10, 48),)),
        "framed_conv1d": (Framed(), (torch.randn(1, 99, 24),)),
        # 101 output frames no vector width divides and a kernel too short to be framed (stays a conv)
        "conv1d_odd_row": (nn.Conv1d(4, 8, 3), (torch.randn(1, 4, 103),)),
        "conv_attention": conv_attention(image_size=32),
    }


def _run(mod, target: dict, inputs) -> np.ndarray:
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(target)), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x.numpy()) for x in inputs])
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def _relax(model, inputs):
    """The torch import edgekit's TVM lowering uses, without its kernel swaps (those come already scheduled)."""
    program = export_torch(from_module(model.eval(), inputs, "case"))
    return from_exported_program(program, keep_params_as_input=False, run_ep_decomposition=False)


@pytest.mark.parametrize("name", list(_cases()))
def test_scheduled_matches_default_and_eager(name):
    model, inputs = _cases()[name]
    target = tvm_target(get_target("host"))
    scheduled, _ = tvm_schedule.schedule(_relax(model, inputs), target)
    default = _run(_relax(model, inputs), target, inputs)
    with torch.no_grad():
        eager = model(*inputs)
    eager = (eager[0] if isinstance(eager, tuple) else eager).numpy()
    got = _run(scheduled, target, inputs)
    np.testing.assert_allclose(got, default, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got, eager, atol=1e-4, rtol=1e-4)


def _loops(mod) -> dict[str, str]:
    return {gv.name_hint: f.script() for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize("name", ["conv2d_width40", "pointwise_14x14", "depthwise_14x14"])
def test_rows_that_are_no_multiple_of_the_vector_still_vectorise(name):
    model, inputs = _cases()[name]
    mod, _ = tvm_schedule.schedule(_relax(model, inputs), tvm_target(get_target("host")))
    conv = next(text for kernel, text in _loops(mod).items() if "conv2d" in kernel)
    assert "T.parallel(" in conv and "T.vectorized(" in conv and "T.unroll(" in conv


def test_one_channel_conv_with_a_long_kernel_runs_as_a_matmul():
    """compile/lower/tvm.py rewrites it (frames gathered once, a matmul over contiguous kernels whose columns are
    padded to whole vector tiles): no conv1d kernel is left."""
    from edgekit.compile.lower.tvm import import_relax

    model, inputs = _cases()["framed_conv1d"]
    target = tvm_target(get_target("host"))
    mod, _ = tvm_schedule.schedule(import_relax(from_module(model.eval(), inputs, "case"), target), target)
    kernels = _loops(mod)
    assert not any("conv1d" in name for name in kernels)
    matmul = next(text for name, text in kernels.items() if "matmul" in name)
    update = matmul.split('T.sblock("matmul_update")')[1].split("T.sblock(")[0]
    assert "T.vectorized(" in matmul and "T.where" not in update  # whole tiles: no predicate on the FMAs


class TiedLM(nn.Module):
    """A token embedding tied to the logits (Whisper's decoder) with a Linear between."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(300, 48)
        self.mix = nn.Linear(48, 48)

    def forward(self, tokens):
        return self.mix(self.embed(tokens)) @ self.embed.weight.T


def test_weights_used_transposed_are_stored_transposed_once():
    """compile/lower/tvm.py: no weight is transposed per call (the tied embedding neither; only the gathered rows
    are), the table is stored once (as its transpose: the gather takes its columns), and the result is eager's."""
    from edgekit.compile.lower.tvm import import_relax

    torch.manual_seed(0)
    model, tokens = TiedLM().eval(), torch.tensor([[3, 299, 0, 41]])
    target = tvm_target(get_target("host"))
    mod = import_relax(from_module(model, (tokens,), "case"), target)
    text = mod["main"].script(show_meta=False)
    # three constants (the table, the Linear's weight and bias), the table used by the gather and the logits alike
    assert len(set(re.findall(r'metadata\["ir.GenericConst"\]\[(\d+)\]', text))) == 3
    assert "R.Tensor((48, 300)" in text and not re.search(r"permute_dims\(metadata", text)
    scheduled, _ = tvm_schedule.schedule(mod, target)
    with torch.no_grad():
        np.testing.assert_allclose(_run(scheduled, target, [tokens]), model(tokens).numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("target_name, lanes", [("host", None), ("android-arm64", 4)])
def test_rules_parallelise_and_vectorise(target_name, lanes):
    model, inputs = _cases()["conv_attention"]
    target = tvm_target(get_target(target_name))
    mod, pipeline = tvm_schedule.schedule(_relax(model, inputs), target)
    if lanes:
        assert f"({lanes} fp32 lanes)" in pipeline
    kernels = _loops(mod)
    conv = next(text for name, text in kernels.items() if "conv2d" in name)
    assert "T.parallel(" in conv and "T.vectorized(" in conv and "T.unroll(" in conv
    assert all("T.parallel(" in text for text in kernels.values())
    tvm.compile(mod, target=tvm.target.Target(target))  # aarch64 too: LLVM accepts the vectorised loops


# Issue #23: symbolic extents. (case, --dynamic text, the sizes it runs at)
DYNAMIC_CASES = {
    "conv2d": ("input0:2=8..64,3=8..64", [(8, 8), (29, 41), (64, 64)]),
    "depthwise": ("input0:2=8..64,3=8..64", [(8, 8), (37, 23), (64, 64)]),
    "matmul": ("input0:1=m:1..96;input1:2=n:1..96", [(1, 1), (41, 53), (96, 96)]),
    "softmax_layernorm": ("input0:1=1..64", [(1,), (37,), (64,)]),
    "framed_conv1d": ("input0:1=4..200", [(4,), (113,), (200,)]),
    "strided_causal_conv1d": ("input0:2=8..200", [(8,), (117,), (200,)]),
    "conv_attention": ("input0:2=16..64,3=16..64", [(16, 16), (41, 29), (64, 64)]),
}


def _at(inputs, dims, size: tuple) -> list:
    """The case's inputs with its dynamic axes at `size` (one value per size name, in order of appearance)."""
    from edgekit.compile import dynamic

    names = list(dict.fromkeys(d.name for axes in dims.values() for d in axes.values()))
    arrays = dynamic.inputs_at(dims, [x.numpy() for x in inputs], dict(zip(names, size)), seed=sum(size))
    return [torch.from_numpy(np.ascontiguousarray(x)) for x in arrays]


@pytest.mark.parametrize("name", list(DYNAMIC_CASES))
def test_symbolic_extents_are_scheduled_and_match_eager_at_each_size(name, tmp_path):
    """One module for a range of sizes: every kernel gets the rules (parallel, vectorised; symbolic loops tiled by a
    constant with a peeled tail), none falls back to default loops, and each size matches eager."""
    from edgekit.compile.lower.tvm import import_relax
    from edgekit.compile.source import with_dynamic
    from edgekit.kernels.attention.relax_pass import link_fcompile, use_fused_attention

    model, inputs = _cases()[name]
    text, sizes = DYNAMIC_CASES[name]
    source = with_dynamic(from_module(model.eval(), inputs, "case"), text)
    target = tvm_target(get_target("host"))
    mod = use_fused_attention(import_relax(source, target), target)  # as lowering does: attention, the kernel
    scheduled, pipeline = tvm_schedule.schedule(mod, target)
    done, total = map(int, re.search(r"(\d+)/(\d+) kernels scheduled", pipeline).groups())
    assert done == total > 0, pipeline
    kernels = _loops(scheduled)
    assert all("T.parallel(" in text for text in kernels.values()), pipeline
    assert any("T.vectorized(" in text for text in kernels.values())
    # exported as lowering does: the attention kernel's x86 micro-kernel is linked in then (link_fcompile)
    library = str(tmp_path / "case.so")
    tvm.compile(scheduled, target=tvm.target.Target(target)).export_library(library, fcompile=link_fcompile(target))
    vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
    for size in sizes:
        xs = _at(inputs, source.dynamic, size)
        out = vm["main"](*[tvm.runtime.tensor(x.numpy()) for x in xs])
        got = (out if hasattr(out, "numpy") else out[0]).numpy()
        with torch.no_grad():
            eager = model(*xs)
        eager = (eager[0] if isinstance(eager, tuple) else eager).numpy()
        assert got.shape == eager.shape
        np.testing.assert_allclose(got, eager, atol=1e-4, rtol=1e-4, err_msg=f"{name} at {size}")


@pytest.mark.parametrize("name", ["conv2d", "matmul"])
def test_symbolic_tiles_accumulate_in_a_constant_register_tile(name):
    """A conv over a symbolic image (and a matmul over symbolic rows and columns): after TVM's buffer compaction
    each thread's accumulator is one constant tile (rows x one vector), not a slice of the whole image, so the tail
    tile's bounds predicate costs nothing in the full tiles (CFSR at a symbolic size ran 1.6x slower before)."""
    from tvm import s_tir

    from edgekit.compile.lower.tvm import import_relax
    from edgekit.compile.source import with_dynamic

    model, inputs = _cases()[name]
    source = with_dynamic(from_module(model.eval(), inputs, "case"), DYNAMIC_CASES[name][0])
    target = tvm_target(get_target("host"))
    scheduled, _ = tvm_schedule.schedule(import_relax(source, target), target)
    gv = next(gv for gv in scheduled.functions if any(op in gv.name_hint for op in ("conv2d", "matmul")))
    passes = [s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
              s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation()]
    compacted = tvm.transform.Sequential(passes)(tvm.IRModule({"main": scheduled[gv]}))["main"].script()
    tiles = {buffer: _shape_at(compacted, at) for buffer, at in
             ((m.group(1), m.end()) for m in re.finditer(r"(\w+) = T\.sblock_alloc_buffer\(", compacted))
             if "conv2d" in buffer or "matmul" in buffer}
    assert tiles, compacted
    for buffer, shape in tiles.items():
        assert not re.sub(r"T\.int64\(\d+\)|[ ,]", "", shape[1:-1]), f"{buffer} keeps a symbolic shape: {shape}"
        dims = [int(d) for d in re.findall(r"T\.int64\((\d+)\)", shape)]
        assert np.prod(dims) <= 32 * 16, f"{buffer} is larger than a vector register file: {shape}"


def _shape_at(script: str, at: int) -> str:
    """The parenthesised shape tuple that starts at `script[at]`."""
    depth = 0
    for end in range(at, len(script)):
        depth += {"(": 1, ")": -1}.get(script[end], 0)
        if depth == 0:
            return script[at:end + 1]
    raise ValueError(script[at:])


class MobileBlock(nn.Module):
    """BlazePose's shape of block: an explicit asymmetric pad (TFLite's SAME at stride 2), a strided depthwise conv,
    batch norm, ReLU6, a pointwise conv with a bias, batch norm; rows of 14 pixels, channels that fill vectors."""

    def __init__(self):
        super().__init__()
        self.depthwise, self.pointwise = nn.Conv2d(32, 32, 3, stride=2, groups=32), nn.Conv2d(32, 48, 1)
        self.norms = nn.ModuleList([nn.BatchNorm2d(32), nn.BatchNorm2d(48)])
        for norm in self.norms:  # statistics a trained model has, so folding them is visible in the result
            norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
            norm.weight.data.uniform_(0.5, 1.5), norm.bias.data.uniform_(-1, 1)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.norms[0](self.depthwise(torch.nn.functional.pad(x, (0, 1, 0, 1)))))
        return self.norms[1](self.pointwise(x))


def _ops(mod) -> set[str]:
    return set(re.findall(r"R\.(?:nn\.)?(\w+)\(", mod["main"].script(show_meta=False)))


def test_mobilenet_block_folds_and_runs_channels_last():
    """compile/lower/tvm.py folds the batch norms into the convs and the pad into the conv's padding, and spells
    ReLU6 as max/min; tvm_schedule.channels_last moves the convs to NHWC (rows of 14 pixels fill no vector, 32 and
    48 channels do). Eager's result either way."""
    from edgekit.compile.lower.tvm import import_relax

    torch.manual_seed(0)
    model, x = MobileBlock().eval(), torch.randn(1, 32, 27, 27)
    target = tvm_target(get_target("host"))
    mod = import_relax(from_module(model, (x,), "case"), target)
    assert not {"batch_norm", "pad", "clip"} & _ops(mod) and "conv2d" in _ops(mod)
    scheduled, pipeline = tvm_schedule.schedule(mod, target)
    assert "convolutions in NHWC" in pipeline
    with torch.no_grad():
        np.testing.assert_allclose(_run(scheduled, target, [x]), model(x).numpy(), atol=1e-4, rtol=1e-4)


def test_rows_that_fill_vectors_keep_nchw():
    """CFSR's case: 64-pixel rows vectorise as they are, so the layout stays."""
    model, inputs = nn.Conv2d(24, 24, 3, padding=1), (torch.randn(1, 24, 16, 64),)
    _, pipeline = tvm_schedule.schedule(_relax(model, inputs), tvm_target(get_target("host")))
    assert "NHWC" not in pipeline
