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
        } else {
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
