// Device-side greedy selection: per logits row, the argmax token (lowest id among equal
// maxima, as the CPU sampler; NaN never chosen) and its log-probability under the
// untempered softmax, so a greedy step copies 8 bytes per row to the host instead of the
// whole vocabulary. A row with no logit above -inf gets token 0xffffffff (NO_TOKEN).

#include <stdint.h>

#define THREADS 1024

// Merges (max, index, sum of exp(x - max)) states. Equal maxima add their sums as they
// are (two +inf maxima: exp(inf - inf) would be NaN).
__device__ __forceinline__ void merge(float& m, uint32_t& i, float& s, float m2, uint32_t i2,
                                      float s2) {
    if (m2 > m) {
        s = s * __expf(m - m2) + s2;
        m = m2;
        i = i2;
    } else if (m2 == m) {
        s = s + s2;
        if (i2 < i) i = i2;
    } else {
        s = s + s2 * __expf(m2 - m);
    }
}

// grid: rows; block: THREADS.
extern "C" __global__ void __launch_bounds__(THREADS)
    wick_greedy_f32(const float* __restrict__ logits, int vocab, uint32_t* __restrict__ ids,
                    float* __restrict__ logprobs) {
    __shared__ float sm_m[THREADS / 32];
    __shared__ uint32_t sm_i[THREADS / 32];
    __shared__ float sm_s[THREADS / 32];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float m = -INFINITY, s = 0.f;
    uint32_t idx = 0xffffffffu;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float x = row[j];
        if (x > m) {
            s = s * __expf(m - x) + 1.f;  // m = -inf at first: s stays 0 * 0 + 1
            m = x;
            idx = j;
        } else if (x == m) {  // an equal maximum (+inf too, where x - m is NaN)
            s += 1.f;
        } else if (x > -INFINITY) {  // masked (-inf) and NaN tokens add nothing
            s += __expf(x - m);
        }
    }
    // Warp, then block reduction.
    for (int o = 16; o > 0; o /= 2) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const uint32_t i2 = __shfl_xor_sync(0xffffffffu, idx, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        if (i2 != 0xffffffffu) {
            if (idx == 0xffffffffu) {
                m = m2;
                idx = i2;
                s = s2;
            } else {
                merge(m, idx, s, m2, i2, s2);
            }
        }
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        sm_m[warp] = m;
        sm_i[warp] = idx;
        sm_s[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float bm = -INFINITY, bs = 0.f;
        uint32_t bi = 0xffffffffu;
        for (int w = 0; w < (int)(blockDim.x / 32); w++) {
            if (sm_i[w] == 0xffffffffu) continue;
            if (bi == 0xffffffffu) {
                bm = sm_m[w];
                bi = sm_i[w];
                bs = sm_s[w];
            } else {
                merge(bm, bi, bs, sm_m[w], sm_i[w], sm_s[w]);
            }
        }
        // No logit above -inf: no token (NO_TOKEN), which fails the request.
        ids[blockIdx.x] = bi;
        logprobs[blockIdx.x] = bi == 0xffffffffu ? -INFINITY : -logf(bs);
    }
}

// ---------------------------------------------------------------------------------------
// Device sampling for rows with temperature, top_k, top_p and min_p (after logit_bias and
// the penalties, wick_adjust_f32): the rule of src/sampling/gumbel.rs, which is its
// reference. Every filter is a bound on the key of the tempered logit y = (x - max) / T;
// top_k's bound is the k-th smallest key and top_p's the smallest key holding the mass,
// each found by a radix select (four passes of 8 bits, a shared-memory histogram per
// pass), top_p only among what top_k kept. Masses are fixed-point integers (exp(y) in
// units of 2^-32), so their sums do not depend on the order of the atomic additions. The
// token is the argmax of y + Gumbel noise over the kept set, the noise a hash of (seed,
// step, token id). About 11 passes over the row at most, in f32.

struct RowSample {
    float temperature;
    float top_p;
    float min_p;
    uint32_t top_k;
    unsigned long long seed;
    uint32_t step;
    uint32_t row;  // the logits row to draw from
};

#define NO_TOKEN 0xffffffffu
#define KEEP_ALL 0x7f800000u  // bits of +inf: every y above -inf (and -inf) is kept

// A uniform in [2^-24, 1 - 2^-24] from (seed, step, token): 23 bits of splitmix64's
// finalizer, every value exact in f32, so never 0 or 1 (gumbel.rs::uniform).
__device__ __forceinline__ float uniform01(unsigned long long seed, uint32_t step, uint32_t id) {
    unsigned long long z = seed ^ (((unsigned long long)step << 32) | id);
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((float)(z >> 41) + 0.5f) * (1.0f / 8388608.0f);
}

// (x - m) / T, 0 for the maximum (+inf included), -inf for NaN (gumbel.rs::tempered).
__device__ __forceinline__ float tempered(float x, float m, float inv_t) {
    if (x == m) return 0.f;
    if (x != x) return -INFINITY;
    return (x - m) * inv_t;
}

// bits(-y), which order as the floats for y <= 0; 0 for y = 0 (the row's maximum), whose
// negation is -0.0 (bits 0x80000000, after every other key): fmaxf(-y, 0.f) may return
// either zero, so the sign is not left to it.
__device__ __forceinline__ uint32_t order_key(float y) {
    return y < 0.f ? __float_as_uint(-y) : (y == 0.f ? 0u : 0xffffffffu);
}

// exp(y) in units of 2^-32, truncated (gumbel.rs::weight).
__device__ __forceinline__ unsigned long long weight(float y) {
    return (unsigned long long)(expf(y) * 4294967296.0f);
}

// Block-wide sums and maxima (all threads get the result). `scratch` holds THREADS / 32.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    T total = 0;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) total += scratch[w];
    return total;
}

__device__ float block_max(float v, float* scratch) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) m = fmaxf(m, scratch[w]);
    return m;
}

// Radix select over the keys <= `limit`: the smallest b with total(keys <= b) >= target,
// where total counts tokens (MASS false) or adds their weights (MASS true); `limit` when
// no b reaches it. Digit by digit from the top, a histogram of the next 8 bits of the
// keys that share the chosen prefix; thread 0 walks it to the digit where the running
// total reaches the target.
template <bool MASS>
__device__ uint32_t radix_select(const float* x, int vocab, float m, float inv_t, uint32_t limit,
                                 double target, unsigned long long* hist, uint32_t* chosen,
                                 unsigned long long* below) {
    uint32_t prefix = 0, mask = 0;
    unsigned long long before = 0;  // total of the keys below the prefix
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += blockDim.x) hist[d] = 0;
        __syncthreads();
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            const float y = tempered(x[j], m, inv_t);
            const uint32_t k = order_key(y);
            if (k <= limit && (k & mask) == prefix) {
                atomicAdd(&hist[(k >> shift) & 255u], MASS ? weight(y) : 1ull);
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            // No digit reaching the target (every key <= limit totals less): 255 at every
            // level, so the result is `limit`.
            uint32_t d = 255;
            unsigned long long acc = before;
            for (uint32_t i = 0; i < 255; i++) {
                if ((double)(acc + hist[i]) >= target) {
                    d = i;
                    break;
                }
                acc += hist[i];
            }
            *chosen = d;
            *below = acc;
        }
        __syncthreads();
        prefix |= *chosen << shift;
        mask |= 255u << shift;
        before = *below;
        __syncthreads();  // `chosen` is rewritten by the next digit
    }
    return min(prefix, limit);
}

// grid: draws (one RowSample each, naming its logits row); block: THREADS.
// At least one block per SM, not two: with two ptxas caps it at 32 registers and spills
// on sm_90 (tests/kernel_ptx.rs); rows rarely outnumber the SMs twice over.
extern "C" __global__ void __launch_bounds__(THREADS, 1)
    wick_sample_f32(const float* __restrict__ logits, int vocab,
                    const RowSample* __restrict__ params, uint32_t* __restrict__ ids,
                    float* __restrict__ logprobs) {
    __shared__ unsigned long long hist[256];
    __shared__ unsigned long long uscratch[THREADS / 32];
    __shared__ float fscratch[THREADS / 32];
    __shared__ float best_s[THREADS / 32];
    __shared__ uint32_t best_i[THREADS / 32];
    __shared__ uint32_t chosen;
    __shared__ unsigned long long below;
    const RowSample p = params[blockIdx.x];
    const float* x = logits + (size_t)p.row * vocab;

    float local = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) local = fmaxf(local, x[j]);
    const float m = block_max(local, fscratch);
    if (m == -INFINITY) {  // nothing above -inf (or only NaN): no token
        if (threadIdx.x == 0) {
            ids[blockIdx.x] = NO_TOKEN;
            logprobs[blockIdx.x] = -INFINITY;
        }
        return;
    }
    const float inv_t = 1.0f / p.temperature;

    uint32_t bound = KEEP_ALL;
    if (p.top_k > 0 && p.top_k < (uint32_t)vocab) {
        bound = radix_select<false>(x, vocab, m, inv_t, KEEP_ALL, (double)p.top_k, hist,
                                    &chosen, &below);
    }
    if (p.top_p < 1.0f) {
        unsigned long long mass = 0;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            const float y = tempered(x[j], m, inv_t);
            if (order_key(y) <= bound) mass += weight(y);
        }
        const double target = (double)p.top_p * (double)block_sum(mass, uscratch);
        bound = radix_select<true>(x, vocab, m, inv_t, bound, target, hist, &chosen, &below);
    }
    if (p.min_p > 0.0f) bound = min(bound, order_key(logf(p.min_p)));

    // Gumbel-max over the kept set, and the kept set's normaliser.
    float bs = -INFINITY;
    uint32_t bi = NO_TOKEN;
    float z = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float y = tempered(x[j], m, inv_t);
        if (order_key(y) <= bound && y > -INFINITY) {
            z += expf(y);
            const float s = y + -logf(-logf(uniform01(p.seed, p.step, (uint32_t)j)));
            if (s > bs) {  // j rises within a thread: the lowest id wins ties
                bs = s;
                bi = j;
            }
        }
    }
    const float zs = block_sum(z, fscratch);
    for (int o = 16; o > 0; o /= 2) {
        const float s2 = __shfl_xor_sync(0xffffffffu, bs, o);
        const uint32_t i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        if (s2 > bs || (s2 == bs && i2 < bi)) {
            bs = s2;
            bi = i2;
        }
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        best_s[warp] = bs;
        best_i[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x / 32); w++) {
            if (best_s[w] > bs || (best_s[w] == bs && best_i[w] < bi)) {
                bs = best_s[w];
                bi = best_i[w];
            }
        }
        // The row's maximum is always kept: bi is a token.
        ids[blockIdx.x] = bi;
        logprobs[blockIdx.x] = bi == NO_TOKEN ? -INFINITY : tempered(x[bi], m, inv_t) - logf(zs);
    }
}

// logit_bias and the penalties (src/sampling/adjust.rs states the rule): entry i changes
// logit `packed[i]` of the flattened [rows, vocab] logits, in place:
//   x += bias; x = x < 0 ? x * factor : x / factor; x -= sub
// with bias, factor and sub the f32 bits at packed[n + i], packed[2n + i], packed[3n + i].
// Every entry names a different logit. The _rn intrinsics keep each operation rounded on
// its own (no fused multiply-add), as the host sampler's arithmetic is.
extern "C" __global__ void wick_adjust_f32(float* logits, const uint32_t* packed, uint32_t n) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const uint32_t at = packed[i];
        float x = __fadd_rn(logits[at], __uint_as_float(packed[n + i]));
        const float f = __uint_as_float(packed[2 * n + i]);
        x = x < 0.f ? __fmul_rn(x, f) : __fdiv_rn(x, f);
        logits[at] = __fsub_rn(x, __uint_as_float(packed[3 * n + i]));
    }
}

// Grammar masks (src/grammar, src/engine/masks.rs): `packed` holds n row numbers of the
// [rows, vocab] logits, then each row's mask, ceil(vocab / 32) words apiece (bit j % 32 of
// word j / 32 allows token j). Every token a row's mask does not allow becomes -inf, in
// place, before the choice.
// grid: (x, n); block: 256.
extern "C" __global__ void wick_mask_f32(float* logits, uint32_t vocab, const uint32_t* packed,
                                         uint32_t n) {
    const uint32_t words = (vocab + 31) / 32;
    const uint32_t r = blockIdx.y;
    float* row = logits + (size_t)packed[r] * vocab;
    const uint32_t* mask = packed + n + (size_t)r * words;
    for (uint32_t j = blockIdx.x * blockDim.x + threadIdx.x; j < vocab; j += blockDim.x * gridDim.x) {
        if (((mask[j / 32] >> (j % 32)) & 1u) == 0u) row[j] = -INFINITY;
    }
}
