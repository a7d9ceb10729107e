// edgekit::selective_scan.out as an ExecuTorch kernel: the fused scan of scan_cpu.cc, registered with the
// runtime's kernel registry when this library is loaded (Python runtime: dlopen after executorch's own libraries;
// C++ runner: dlopen of the artifact's library before the program loads). Built against the executorch wheel's
// headers and libexecutorch.so (kernels/scan/native.py).
#include <cstdint>

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>

extern "C" int edgekit_selective_scan_f32(const float *u, const float *delta, const float *A, const float *B,
                                          const float *C, const float *D, const float *z, const float *delta_bias,
                                          int delta_softplus, int64_t batch, int64_t dim, int64_t len,
                                          int64_t n_state, int64_t groups, float *y, float *last_state);

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;
template <typename T>
using optional = executorch::aten::optional<T>;

const float *data_or_null(const optional<Tensor> &t) {
    return t.has_value() ? t.value().const_data_ptr<float>() : nullptr;
}

bool is_float(const Tensor &t) { return t.scalar_type() == ScalarType::Float; }

bool optional_fits(const optional<Tensor> &t, int64_t batch, int64_t dim, int64_t len, bool per_step) {
    if (!t.has_value()) return true;
    const Tensor &v = t.value();
    if (!is_float(v)) return false;
    return per_step ? (v.dim() == 3 && v.size(0) == batch && v.size(1) == dim && v.size(2) == len)
                    : (v.dim() == 1 && v.size(0) == dim);
}

Tensor &selective_scan_out(KernelRuntimeContext &ctx, const Tensor &u, const Tensor &delta, const Tensor &A,
                           const Tensor &B, const Tensor &C, const optional<Tensor> &D, const optional<Tensor> &z,
                           const optional<Tensor> &delta_bias, bool delta_softplus, Tensor &out) {
    // B and C come grouped, [batch, groups, N, L] (the export keeps the model's layout; the 3-d [batch, N, L]
    // form is one group)
    ET_KERNEL_CHECK(ctx, u.dim() == 3 && is_float(u) && is_float(delta) && is_float(A) && is_float(B) &&
                             is_float(C) && is_float(out), InvalidArgument, out);
    const int64_t batch = u.size(0), dim = u.size(1), len = u.size(2);
    ET_KERNEL_CHECK(ctx, delta.dim() == 3 && delta.size(0) == batch && delta.size(1) == dim && delta.size(2) == len,
                    InvalidArgument, out);
    ET_KERNEL_CHECK(ctx, A.dim() == 2 && A.size(0) == dim, InvalidArgument, out);
    const int64_t n_state = A.size(1);
    const bool grouped = B.dim() == 4;
    const int64_t groups = grouped ? B.size(1) : 1;
    for (const Tensor *m : {&B, &C}) {
        ET_KERNEL_CHECK(ctx, m->dim() == (grouped ? 4 : 3) && m->size(0) == batch && m->size(m->dim() - 2) == n_state &&
                                 m->size(m->dim() - 1) == len && (!grouped || m->size(1) == groups),
                        InvalidArgument, out);
    }
    ET_KERNEL_CHECK(ctx, optional_fits(D, batch, dim, len, false) && optional_fits(z, batch, dim, len, true) &&
                             optional_fits(delta_bias, batch, dim, len, false), InvalidArgument, out);
    ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, u.sizes()) == Error::Ok, InvalidArgument, out);
    const int status = edgekit_selective_scan_f32(
        u.const_data_ptr<float>(), delta.const_data_ptr<float>(), A.const_data_ptr<float>(), B.const_data_ptr<float>(),
        C.const_data_ptr<float>(), data_or_null(D), data_or_null(z), data_or_null(delta_bias), delta_softplus ? 1 : 0,
        batch, dim, len, n_state, groups, out.mutable_data_ptr<float>(), nullptr);
    ET_KERNEL_CHECK(ctx, status == 0, InvalidArgument, out);
    return out;
}

}  // namespace

EXECUTORCH_LIBRARY(edgekit, "selective_scan.out", selective_scan_out);
