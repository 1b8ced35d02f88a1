// Device-side greedy selection: per logits row, the argmax token (lowest id among equal
// maxima, as the CPU sampler) and its log-probability under the untempered softmax, so a
// greedy step copies 8 bytes per row to the host instead of the whole vocabulary.

#include <stdint.h>

#define THREADS 1024

// Merges (max, index, sum of exp(x - max)) states.
__device__ __forceinline__ void merge(float& m, uint32_t& i, float& s, float m2, uint32_t i2,
                                      float s2) {
    if (m2 > m || (m2 == m && i2 < i)) {
        s = s * __expf(m - m2) + s2;
        m = m2;
        i = i2;
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
        } else if (x != -INFINITY) {  // a masked token adds nothing (and -inf - -inf is NaN)
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
        ids[blockIdx.x] = bi == 0xffffffffu ? 0 : bi;
        logprobs[blockIdx.x] = bi == 0xffffffffu ? -INFINITY : -logf(bs);
    }
}

// ---------------------------------------------------------------------------------------
// Device sampling for rows with temperature, top_k, top_p and min_p (no penalties, bias or
// typical_p): the rule of src/sampling/gumbel.rs, which is its reference. Every filter is
// a threshold on the tempered logit y = (x - max) / T, found by binary search over the
// bits of -y with block-wide counts and sums; the token is the argmax of y + Gumbel noise
// over the kept set, the noise a hash of (seed, step, token id).

struct RowSample {
    float temperature;
    float top_p;
    float min_p;
    uint32_t top_k;
    unsigned long long seed;
    uint32_t step;
    uint32_t pad;
};

__device__ __forceinline__ float uniform01(unsigned long long seed, uint32_t step, uint32_t id) {
    unsigned long long z = seed ^ (((unsigned long long)step << 32) | id);
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((float)(z >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

// bits(-y), which order as the floats for y <= 0; 0 for y = 0 (the row's maximum), whose
// negation is -0.0 (bits 0x80000000, after every other key): fmaxf(-y, 0.f) may return
// either zero, so the sign is not left to it.
__device__ __forceinline__ uint32_t order_key(float y) { return y < 0.f ? __float_as_uint(-y) : 0u; }

// Block-wide sums and maxima (all threads get the result). `scratch` holds THREADS / 32.
__device__ double block_sum(double v, double* scratch) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double total = 0.0;
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

// Count (mass == false) or mass (mass == true) of the row's y with order_key(y) <= bound.
__device__ double kept(const float* x, int vocab, float m, float inv_t, uint32_t bound, bool mass,
                       double* scratch) {
    double acc = 0.0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float y = (x[j] - m) * inv_t;
        if (order_key(y) <= bound) acc += mass ? exp((double)y) : 1.0;
    }
    return block_sum(acc, scratch);
}

// Smallest b in [0, hi] with kept(b) >= target (hi if none): the same search as gumbel.rs.
__device__ uint32_t search(const float* x, int vocab, float m, float inv_t, uint32_t hi, bool mass,
                           double target, double* scratch) {
    uint32_t lo = 0;
    while (lo < hi) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if (kept(x, vocab, m, inv_t, mid, mass, scratch) >= target) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return hi;
}

// grid: rows; block: THREADS.
// At least one block per SM, not two: with two ptxas caps it at 32 registers and spills
// on sm_90 (tests/kernel_ptx.rs); rows rarely outnumber the SMs twice over.
extern "C" __global__ void __launch_bounds__(THREADS, 1)
    wick_sample_f32(const float* __restrict__ logits, int vocab,
                    const RowSample* __restrict__ params, uint32_t* __restrict__ ids,
                    float* __restrict__ logprobs) {
    __shared__ double scratch[THREADS / 32];
    __shared__ float fscratch[THREADS / 32];
    __shared__ float best_s[THREADS / 32];
    __shared__ uint32_t best_i[THREADS / 32];
    const float* x = logits + (size_t)blockIdx.x * vocab;
    const RowSample p = params[blockIdx.x];

    float local = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) local = fmaxf(local, x[j]);
    const float m = block_max(local, fscratch);
    const float inv_t = 1.0f / p.temperature;

    const uint32_t all = 0x7f800000u;  // bits of +inf: every y is kept
    uint32_t bound = all;
    if (p.top_k > 0 && p.top_k < (uint32_t)vocab) {
        bound = search(x, vocab, m, inv_t, all, false, (double)p.top_k, scratch);
    }
    if (p.top_p < 1.0f) {
        const double target = (double)p.top_p * kept(x, vocab, m, inv_t, bound, true, scratch);
        bound = search(x, vocab, m, inv_t, bound, true, target, scratch);
    }
    if (p.min_p > 0.0f) bound = min(bound, order_key(logf(p.min_p)));

    // Gumbel-max over the kept set, and the kept set's normaliser.
    float bs = -INFINITY;
    uint32_t bi = 0xffffffffu;
    double z = 0.0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float y = (x[j] - m) * inv_t;
        if (order_key(y) <= bound) {
            z += exp((double)y);
            const float s = y + -logf(-logf(uniform01(p.seed, p.step, (uint32_t)j)));
            if (s > bs) {  // j rises within a thread: the lowest id wins ties
                bs = s;
                bi = j;
            }
        }
    }
    z = block_sum(z, scratch);
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
        const uint32_t id = bi == 0xffffffffu ? 0 : bi;
        ids[blockIdx.x] = id;
        logprobs[blockIdx.x] = (x[id] - m) * inv_t - (float)log(z);
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
