"""Selective-scan kernels vs the float64 reference: lengths, state sizes, options, layouts, builds."""

import itertools
import shutil
import subprocess

import pytest
import torch
import tvm

from edgekit.kernels import selective_scan, selective_state_update
from edgekit.kernels.scan import build, tir_scan
from edgekit.kernels.scan.decomposed import chunked_scan
from edgekit.kernels.scan.mamba_block import TinyMamba
from edgekit.kernels.scan.reference import (parallel_scan, selective_scan_ref,
                                            selective_state_update_ref)
from edgekit.kernels.scan.ssd import ssd_chunked, ssd_scan
from edgekit.targets import TARGETS, get_target

LENGTHS = (1, 7, 372, 784, 1134, 4096)
STATES = (16, 64, 128)
FLAGS = list(itertools.product((False, True), repeat=4))  # has D, z, delta_bias, softplus
# fp32 recurrence over up to 4096 steps; errors seen are ~1e-7 of the output scale.
RTOL, ATOL_OF_SCALE = 1e-4, 1e-5
# The project's targets (edgekit/targets.py): every aarch64 target users compile for, and those with a CUDA GPU.
ARM64_TARGETS = sorted(n for n, t in TARGETS.items() if t.arch == "aarch64")
CUDA_TARGETS = sorted(n for n, t in TARGETS.items() if t.cuda_arch)
ELF_MACHINE = {"aarch64": 183, "x86_64": 62}  # ELF e_machine field


def _cpu_target(name):
    """The TVM target of `name`'s CPU: its target dict, or for a GPU target the CPU it carries as host."""
    target = get_target(name).tvm_target()
    return target.get("host", target)


def _scan_inputs(batch, dim, length, n, groups=None, flags=(True, True, True, True), seed=0):
    gen = torch.Generator().manual_seed(seed)
    has_d, has_z, has_bias, softplus = flags

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    bc_shape = (batch, n, length) if groups is None else (batch, groups, n, length)
    # Softplus takes raw projections; without it delta must already be a positive step size.
    delta = randn(batch, dim, length) * 0.5 if softplus else torch.rand(batch, dim, length, generator=gen) * 0.3
    args = dict(u=randn(batch, dim, length), delta=delta, A=-torch.exp(randn(dim, n) * 0.5),
                B=randn(*bc_shape), C=randn(*bc_shape))
    opts = dict(D=randn(dim) if has_d else None, z=randn(batch, dim, length) if has_z else None,
                # A non-negative bias keeps dt >= 0 when no softplus follows (decay <= 1).
                delta_bias=torch.rand(dim, generator=gen) * 0.1 if has_bias else None,
                delta_softplus=softplus)
    return args, opts


def _assert_close(actual, expected):
    assert torch.isfinite(expected).all(), "the reference itself overflowed: fix the test inputs"
    atol = ATOL_OF_SCALE * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected, rtol=RTOL, atol=atol)


def _check_scan(scan, batch, dim, length, n, groups=None, flags=(True, True, True, True)):
    args, opts = _scan_inputs(batch, dim, length, n, groups, flags)
    out, last = scan(**args, **opts, return_last_state=True)
    ref_out, ref_last = selective_scan_ref(**args, **opts, return_last_state=True)
    assert out.shape == (batch, dim, length) and last.shape == (batch, dim, n)
    assert out.dtype == last.dtype == torch.float32
    _assert_close(out, ref_out)
    _assert_close(last, ref_last)


def _sampled_grid():
    """Every (L, N) pair once; options and B/C layouts rotate so each flag combination appears."""
    for i, (length, n) in enumerate(itertools.product(LENGTHS, STATES)):
        yield pytest.param(length, n, FLAGS[i % len(FLAGS)], (None, 1, 2)[i % 3],
                           id=f"L{length}-N{n}-flags{i % len(FLAGS)}-G{(None, 1, 2)[i % 3]}")


@pytest.mark.parametrize("length,n,flags,groups", list(_sampled_grid()))
def test_kernel_matches_reference(length, n, flags, groups):
    _check_scan(selective_scan, 2, 4, length, n, groups, flags)


@pytest.mark.parametrize("length,n,flags,groups", list(_sampled_grid()))
def test_native_kernel_matches_reference(length, n, flags, groups):
    """scan_cpu.cc (the kernel ExecuTorch artifacts ship) on the same grid; 6 channels: a lane block of 16 is
    partly empty, and with 2 groups each block stops at its group's end."""
    from edgekit.kernels.scan import native

    _check_scan(native.selective_scan, 2, 6, length, n, groups, flags)


def test_native_kernel_refuses_sizes_it_cannot_take():
    from edgekit.kernels.scan import native

    args, opts = _scan_inputs(1, 4, 8, 257)
    with pytest.raises(ValueError, match="1..256 states"):
        native.selective_scan(**args, **opts)


@pytest.mark.slow
@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("n", STATES)
@pytest.mark.parametrize("length", LENGTHS)
def test_kernel_full_grid(length, n, flags):
    _check_scan(selective_scan, 1, 3, length, n, 3, flags)


@pytest.mark.parametrize("n", [1, 10, 33])
def test_state_size_not_a_power_of_two(n):
    _check_scan(selective_scan, 2, 4, 50, n)


def test_one_group_per_channel_and_ungrouped_layout_agree():
    _check_scan(selective_scan, 2, 6, 40, 16, groups=6)
    args, opts = _scan_inputs(2, 6, 40, 16)
    grouped = dict(args, B=args["B"][:, None], C=args["C"][:, None])
    torch.testing.assert_close(selective_scan(**grouped, **opts), selective_scan(**args, **opts))


def test_non_contiguous_inputs():
    args, opts = _scan_inputs(2, 4, 33, 16)
    strided = {k: v.transpose(-1, -2).contiguous().transpose(-1, -2) for k, v in args.items()}
    assert not strided["u"].is_contiguous()
    torch.testing.assert_close(selective_scan(**strided, **opts), selective_scan(**args, **opts))


def test_inputs_that_require_grad_run_forward():
    args, opts = _scan_inputs(1, 4, 9, 16)
    expected = selective_scan(**args, **opts)
    args["u"].requires_grad_(True)
    torch.testing.assert_close(selective_scan(**args, **opts), expected)


def test_returns_output_only_by_default():
    args, opts = _scan_inputs(1, 2, 5, 16)
    assert isinstance(selective_scan(**args, **opts), torch.Tensor)


@pytest.mark.parametrize("length", [1, 7, 372])
def test_parallel_scan_matches_reference(length):
    _check_scan(parallel_scan, 2, 4, length, 16, groups=2)


@pytest.mark.parametrize("length,chunk", [(1, 16), (7, 4), (372, 16), (784, 32)])
def test_chunked_scan_matches_reference(length, chunk):
    def scan(**kw):
        return chunked_scan(**kw, chunk=chunk)
    _check_scan(scan, 2, 4, length, 16, groups=2)


def _update_inputs(batch, dim, n, groups, flags, seed=1):
    args, opts = _scan_inputs(batch, dim, 1, n, groups, flags, seed)
    step = dict(x=args["u"][..., 0], dt=args["delta"][..., 0], A=args["A"],
                B=args["B"][..., 0], C=args["C"][..., 0], D=opts["D"],
                z=None if opts["z"] is None else opts["z"][..., 0],
                dt_bias=opts["delta_bias"], dt_softplus=opts["delta_softplus"])
    state = torch.randn(batch, dim, n, generator=torch.Generator().manual_seed(seed))
    return state, step


@pytest.mark.parametrize("n,groups,flags", [(16, None, FLAGS[-1]), (64, 2, FLAGS[5]),
                                            (128, 1, FLAGS[10]), (10, None, FLAGS[0])])
def test_state_update_matches_reference(n, groups, flags):
    state, step = _update_inputs(3, 36, n, groups, flags)  # two full channel blocks and a tail
    ref_out, ref_state = selective_state_update_ref(state, **step)
    out = selective_state_update(state, **step)
    _assert_close(out, ref_out)
    _assert_close(state, ref_state)  # updated in place


def test_state_updates_reproduce_the_scan():
    args, opts = _scan_inputs(2, 4, 20, 16, groups=2)
    expected, expected_last = selective_scan(**args, **opts, return_last_state=True)
    state = torch.zeros(2, 4, 16)
    outs = [selective_state_update(
        state, args["u"][..., t], args["delta"][..., t], args["A"], args["B"][..., t],
        args["C"][..., t], D=opts["D"], z=opts["z"][..., t], dt_bias=opts["delta_bias"],
        dt_softplus=True) for t in range(20)]
    torch.testing.assert_close(torch.stack(outs, dim=-1), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, expected_last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change,message", [
    (dict(u=torch.zeros(2, 4, 8, dtype=torch.float64)), "u must be a CPU float32 tensor"),
    (dict(delta=torch.zeros(2, 4, 9)), r"delta must have shape \[2, 4, 8\]"),
    (dict(A=torch.zeros(5, 16)), r"A must have shape \[4, \*\]"),
    (dict(B=torch.zeros(2, 3, 16, 8)), "B has 3 groups, which must divide the 4 channels"),
    (dict(C=torch.zeros(2, 16)), r"C must have shape \[2, \*, 16, 8\]"),
    (dict(D=torch.zeros(3)), r"D must have shape \[4\]"),
    (dict(u=[[0.0]]), "u must be a torch.Tensor, got list"),
])
def test_bad_inputs_name_the_problem(change, message):
    args, _ = _scan_inputs(2, 4, 8, 16)
    with pytest.raises(ValueError, match=message):
        selective_scan(**{**args, **change})


def test_state_update_needs_contiguous_state():
    state, step = _update_inputs(2, 4, 16, None, FLAGS[0])
    with pytest.raises(ValueError, match="state must be contiguous"):
        selective_state_update(state.transpose(0, 1).contiguous().transpose(0, 1), **step)


def test_host_build_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_KERNEL_CACHE", str(tmp_path))
    build.host_kernel.cache_clear()
    opts = tir_scan.Options(n_state=8)
    build.host_kernel("scan", opts)
    assert len(list(tmp_path.glob("scan-*.so"))) == 1

    build.host_kernel.cache_clear()
    monkeypatch.setattr(build, "build", lambda *a: pytest.fail("rebuilt despite the disk cache"))
    build.host_kernel("scan", opts)
    build.host_kernel.cache_clear()


@pytest.mark.parametrize("target_name", sorted({*ARM64_TARGETS, *CUDA_TARGETS}))
def test_cross_library_builds_into_the_kernel_cache(target_name, tmp_path, monkeypatch):
    """A device library for each project target, linked by its cross compiler (None: the host's) and cached."""
    target = get_target(target_name)
    spec = target.tvm_target()
    if shutil.which(target.cross_compiler or "g++") is None:
        pytest.skip(f"compiler {target.cross_compiler or 'g++'} not installed")
    if target.cuda_arch and shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    monkeypatch.setenv("EDGEKIT_KERNEL_CACHE", str(tmp_path))
    path = build.cross_library("scan", tir_scan.Options(16), spec, target.cross_compiler)
    assert path.parent == tmp_path and path.name.startswith("scan-")
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == ELF_MACHINE[target.arch]
    monkeypatch.setattr(build, "build", lambda *a: pytest.fail("rebuilt despite the disk cache"))
    assert build.cross_library("scan", tir_scan.Options(16), spec, target.cross_compiler) == path


@pytest.mark.parametrize("target_name", ARM64_TARGETS)
@pytest.mark.parametrize("kernel", ["scan", "state_update"])
def test_neon_build_uses_vector_fma(kernel, target_name):
    module = build.build(kernel, tir_scan.Options(16, True, True, True, True), _cpu_target(target_name))
    assert "fmla\tv" in module.mod.inspect_source("asm")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("target_name", CUDA_TARGETS)
def test_cuda_build(target_name):
    module = build.build("scan", tir_scan.Options(16, True, True, True, True), get_target(target_name).tvm_target())
    cuda = [m for m in module.mod.imports if m.kind == "cuda"]
    assert cuda and "selective_scan_kernel" in cuda[0].inspect_source()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("kernel", ["scan", "state_update"])
@pytest.mark.parametrize("target_name", CUDA_TARGETS)
def test_cuda_source_compiles_to_cubin(kernel, target_name, tmp_path):
    """The CUDA module carries source that is compiled when loaded; nvcc proves it compiles."""
    target = get_target(target_name).tvm_target()
    module = build.build(kernel, tir_scan.Options(16, True, True, True, True), target)
    source = tmp_path / "kernel.cu"
    source.write_text(next(m for m in module.mod.imports if m.kind == "cuda").inspect_source())
    cubin = tmp_path / "kernel.cubin"
    subprocess.run(["nvcc", f"-arch={target['arch']}", "-cubin", "-o", cubin, source], check=True)
    assert cubin.stat().st_size > 0


def test_tiny_mamba_exports_and_takes_the_kernel():
    torch.manual_seed(0)
    model = TinyMamba().eval()
    x = torch.randn(2, 50, 32)
    with torch.no_grad():
        eager = model(x)
        exported = torch.export.export(model, (x,)).module()(x)
        for block in model.blocks:
            block.scan = selective_scan
        with_kernel = model(x)
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_kernel, eager, rtol=1e-4, atol=1e-4)


class _ChunkedScan(torch.nn.Module):
    def forward(self, u, delta, A, B, C, D, z, delta_bias):
        return chunked_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True,
                            return_last_state=True)


def _chunked_scan_program():
    args, opts = _scan_inputs(1, 4, 40, 16, groups=2)
    inputs = (*args.values(), opts["D"], opts["z"], opts["delta_bias"])
    with torch.no_grad():
        expected = _ChunkedScan()(*inputs)
    return torch.export.export(_ChunkedScan(), inputs), inputs, expected


def test_chunked_scan_runs_in_tvm():
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    program, inputs, expected = _chunked_scan_program()
    exe = tvm.compile(from_exported_program(program), target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    outputs = vm["main"](*(tvm.runtime.from_dlpack(t) for t in inputs))
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(torch.from_numpy(got.numpy()), want, rtol=1e-5, atol=1e-5)


def test_chunked_scan_runs_in_onnxruntime(tmp_path):
    import onnxruntime

    program, inputs, expected = _chunked_scan_program()
    torch.onnx.export(program, inputs, tmp_path / "scan.onnx", dynamo=True)
    session = onnxruntime.InferenceSession(tmp_path / "scan.onnx")
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    for got, want in zip(session.run(None, feeds), expected):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-5, atol=1e-5)


def test_scan_op_becomes_the_tvm_kernel_or_the_decomposition():
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from edgekit.kernels.scan.torch_op import decompose, relax_convert_map, selective_scan_op

    torch.manual_seed(0)
    reference = TinyMamba().eval()
    model = TinyMamba(scan=selective_scan_op).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 50, 32)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    program = torch.export.export(model, (x,))

    def scan_nodes(graph):
        return [n for n in graph.nodes if n.target is torch.ops.edgekit.selective_scan.default]

    assert len(scan_nodes(program.graph)) == 2
    decomposed = decompose(program)
    assert not scan_nodes(decomposed.graph)
    torch.testing.assert_close(decomposed.module()(x), expected, rtol=1e-5, atol=1e-5)

    target = {"kind": "llvm"}
    mod = from_exported_program(program, custom_convert_map=relax_convert_map(target))
    assert "edgekit_selective_scan" in [gv.name_hint for gv in mod.functions]
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(target)), tvm.cpu())
    got = vm["main"](tvm.runtime.from_dlpack(x))
    torch.testing.assert_close(torch.from_numpy(got[0].numpy()), expected, rtol=1e-4, atol=1e-4)


def _ssd_reference(x, dt, A, B, C, D, z):
    """Mamba-2 as the float64 Mamba-1 reference: each (head, p) is a channel, A shared over N."""
    batch, length, heads, head_dim = x.shape

    def channels(t):
        return t.reshape(batch, length, -1).transpose(1, 2)

    y, state = selective_scan_ref(
        channels(x), channels(dt.repeat_interleave(head_dim, -1)),
        A.repeat_interleave(head_dim)[:, None].expand(-1, B.shape[-1]),
        B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), D.repeat_interleave(head_dim), channels(z),
        delta_softplus=True, return_last_state=True)
    return y.transpose(1, 2).reshape(x.shape), state.reshape(batch, heads, head_dim, -1)


@pytest.mark.parametrize("length,chunk", [(1, 16), (37, 16), (300, 64)])
def test_ssd_forms_match_reference(length, chunk):
    gen = torch.Generator().manual_seed(0)
    batch, heads, head_dim, groups, n = 2, 4, 8, 2, 16
    x, z = (torch.randn(batch, length, heads, head_dim, generator=gen) for _ in range(2))
    dt = torch.randn(batch, length, heads, generator=gen) * 0.5
    A, D, dt_bias = (torch.randn(heads, generator=gen) for _ in range(3))
    A = -torch.exp(A * 0.5)
    B, C = (torch.randn(batch, length, groups, n, generator=gen) for _ in range(2))
    expected = _ssd_reference(x, dt + dt_bias, A, B, C, D, z)
    for got in (ssd_chunked(x, dt, A, B, C, D, z, dt_bias, True, True, chunk=chunk),
                ssd_scan(x, dt, A, B, C, D, z, dt_bias, True, True)):
        _assert_close(got[0], expected[0])
        _assert_close(got[1], expected[1])


@pytest.mark.emulator
def test_neon_build_under_emulator(emulator_sysroot):
    """The aarch64 NEON scan for android-arm64 run under the emulator: every length and state size, options
    rotating."""
    from edgekit.kernels.scan.api import scan_arguments
    from edgekit.runtimes import emulator

    target = get_target("android-arm64")
    calls, cases = [], []
    for length, n, flags, groups in (p.values for p in _sampled_grid()):
        args, opts = _scan_inputs(1, 4, length, n, groups, flags)
        kernel_opts, inputs, outputs = scan_arguments(**args, **opts)
        library = build.cross_library("scan", kernel_opts, target.tvm_target(), target.cross_compiler)
        calls.append((library, tir_scan.FUNC_NAMES["scan"], [t.contiguous().numpy() for t in (*inputs, *outputs)],
                      [len(inputs), len(inputs) + 1]))
        cases.append((selective_scan_ref(**args, **opts, return_last_state=True), n))
    for ((ref_out, ref_last), n), (out, last) in zip(cases, emulator.call_functions(calls)):
        _assert_close(torch.from_numpy(out), ref_out)
        _assert_close(torch.from_numpy(last)[..., :n], ref_last)
