/* The fused selective scan as portable C++ (GCC/Clang vector extensions), for runtimes that call native code but not TVM's (ExecuTorch's kernel
 * registry): one pass over time per block of channels, the state in registers, nothing materialised but y.
 *
 * The algorithm of tir_scan.py's CPU schedule: channels across the vector lanes (LANES of them, each with its own
 * A row, delta and u), the state size N as an unrolled loop of vector registers, exp as the branch-free
 * exp2 polynomial of tir_math.py. Time is taken in tiles of TILE steps: each tile's u/delta/z are transposed to
 * [TILE][LANES] so every load and store in the recurrence is a contiguous vector. The compiler vectorises the
 * lane loops (-O3); nothing here is specific to x86 or ARM.
 *
 * Contract (reference.py): u, delta, z [batch, dim, len]; A [dim, N]; B, C [batch, groups, N, len] with groups
 * dividing dim (channel d reads group d / (dim / groups)); D, delta_bias [dim]; D, z, delta_bias may be NULL.
 * y [batch, dim, len]; last_state [batch, dim, N] (NULL: not written).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 16
#define TILE 64
#define MAX_STATE 256

// LANES floats as one value: GCC/Clang lower it to AVX-512, 2 AVX2 or 4 NEON registers
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

static const float LOG2E = 1.4426950408889634f;

/* 2**x: clamp, split into integer k and fraction f in [-0.5, 0.5], the degree-6 Taylor polynomial of 2**f
   (its error on that range is ~1e-7 relative), scaled by 2**k built in the exponent bits. */
static inline vf exp2_poly(vf x) {
    x = x < -126.0f ? -126.0f : x;
    x = x > 126.0f ? 126.0f : x;
    const vf magic = vf{} + 12582912.0f;  // 1.5 * 2**23: adding and subtracting it rounds to the nearest integer
    vf k = (x + magic) - magic;
    vf f = x - k;
    vf p = vf{} + 1.5403530393381606e-4f;
    p = p * f + 1.3333558146428443e-3f;
    p = p * f + 9.6181291076284772e-3f;
    p = p * f + 5.5504108664821580e-2f;
    p = p * f + 2.4022650695910071e-1f;
    p = p * f + 6.9314718055994531e-1f;
    p = p * f + 1.0f;
    vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
    vf scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* log(1 + e) for e in [0, 1]: 2 atanh(s) with s = e / (2 + e) in [0, 1/3], its odd series to s**11 (error below
   1e-7 on that range). */
static inline vf log1p_unit(vf e) {
    vf s = e / (2.0f + e), s2 = s * s;
    vf p = vf{} + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}

static inline vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void scan_block(const float *u, const float *delta, const float *z, const float *A, const float *Bg,
                       const float *Cg, const float *Dv, const float *bias, int softplus_delta, int64_t len,
                       int64_t n_state, int width, float *y, float *last_state) {
    /* `width` <= LANES channels that share one B/C group; u/delta/z/y point at the first channel's row. */
    vf a[MAX_STATE], h[MAX_STATE];
    float d_skip[LANES] = {0}, d_bias[LANES] = {0}, a_row[LANES];
    alignas(64) float tu[TILE][LANES], tdt[TILE][LANES], tz[TILE][LANES], ty[TILE][LANES];
    for (int l = 0; l < width; l++) {
        d_skip[l] = Dv ? Dv[l] : 0.0f;
        d_bias[l] = bias ? bias[l] : 0.0f;
    }
    for (int64_t n = 0; n < n_state; n++) {
        for (int l = 0; l < LANES; l++) a_row[l] = l < width ? A[l * n_state + n] * LOG2E : 0.0f;
        a[n] = load(a_row);
        h[n] = vf{} + 0.0f;
    }
    const vf skip = load(d_skip), dbias = load(d_bias);

    for (int64_t t0 = 0; t0 < len; t0 += TILE) {
        int steps = (int)(len - t0 < TILE ? len - t0 : TILE);
        memset(tu, 0, sizeof tu);
        memset(tdt, 0, sizeof tdt);
        memset(tz, 0, sizeof tz);
        for (int l = 0; l < width; l++)
            for (int s = 0; s < steps; s++) {
                tu[s][l] = u[l * len + t0 + s];
                tdt[s][l] = delta[l * len + t0 + s];
            }
        if (z)
            for (int l = 0; l < width; l++)
                for (int s = 0; s < steps; s++) tz[s][l] = z[l * len + t0 + s];
        for (int s = 0; s < steps; s++) {
            vf dt = load(tdt[s]) + dbias, uu = load(tu[s]);
            if (softplus_delta) {
                // log(1 + e**x) = max(x, 0) + log1p(e**-|x|)
                dt = (dt > 0.0f ? dt : 0.0f) + log1p_unit(exp2_poly((dt < 0.0f ? dt : -dt) * LOG2E));
            }
            vf du = dt * uu, acc = {};
            for (int64_t n = 0; n < n_state; n++) {
                h[n] = exp2_poly(dt * a[n]) * h[n] + du * Bg[n * len + t0 + s];
                acc += h[n] * Cg[n * len + t0 + s];
            }
            vf out = acc + skip * uu;
            if (z) {
                vf zz = load(tz[s]);
                out *= zz / (1.0f + exp2_poly(-zz * LOG2E));
            }
            memcpy(ty[s], &out, sizeof out);
        }
        for (int l = 0; l < width; l++)
            for (int s = 0; s < steps; s++) y[l * len + t0 + s] = ty[s][l];
    }
    if (last_state)
        for (int l = 0; l < width; l++)
            for (int64_t n = 0; n < n_state; n++) last_state[l * n_state + n] = h[n][l];
}

/* Returns 0, or -1 when the sizes are outside what this kernel takes (n_state > MAX_STATE, groups not dividing
   dim). */
extern "C" __attribute__((visibility("default"))) int edgekit_selective_scan_f32(
    const float *u, const float *delta, const float *A, const float *B, const float *C, const float *D,
    const float *z, const float *delta_bias, int delta_softplus, int64_t batch, int64_t dim, int64_t len,
    int64_t n_state, int64_t groups, float *y, float *last_state) {
    if (n_state < 1 || n_state > MAX_STATE || groups < 1 || dim % groups) return -1;
    int64_t per_group = dim / groups;
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t d0 = 0; d0 < dim;) {
            int64_t g = d0 / per_group, group_end = (g + 1) * per_group;
            int width = (int)(group_end - d0 < LANES ? group_end - d0 : LANES);
            int64_t row = (b * dim + d0) * len;
            const float *Bg = B + (b * groups + g) * n_state * len, *Cg = C + (b * groups + g) * n_state * len;
            scan_block(u + row, delta + row, z ? z + row : NULL, A + d0 * n_state, Bg, Cg, D ? D + d0 : NULL,
                       delta_bias ? delta_bias + d0 : NULL, delta_softplus, len, n_state, width, y + row,
                       last_state ? last_state + (b * dim + d0) * n_state : NULL);
            d0 += width;
        }
    }
    return 0;
}
