// Kernels for tests/kernel_emu.rs's checks of the tensor-core wrappers of
// kernels/tensor_core.cuh on the emulator. One warp each.

#include <stdint.h>

#include "../tensor_core.cuh"

// d = a b + c with one mma: a [16][16] row-major, b given as [n = 8][k = 16], c and d
// [16][8] row-major. Each lane builds its fragments by the layout the PTX ISA documents.
template <typename T>
__device__ void mma_one(float* d, const uint16_t* a, const uint16_t* b, const float* c) {
    const int l = threadIdx.x, g = l / 4, t = l % 4;
    uint32_t ar[4], br[2];
    float acc[4];
    for (int i = 0; i < 8; i += 2) {
        const int row = g + 8 * (i / 2 % 2), col = 2 * t + 8 * (i / 4);
        ar[i / 2] = (uint32_t)a[row * 16 + col] | (uint32_t)a[row * 16 + col + 1] << 16;
    }
    for (int i = 0; i < 4; i += 2) {
        const int k = 2 * t + 8 * (i / 2);
        br[i / 2] = (uint32_t)b[g * 16 + k] | (uint32_t)b[g * 16 + k + 1] << 16;
    }
    for (int i = 0; i < 4; i++) acc[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + (i % 2)];
    tc::mma_16816<T>(acc, ar, br);
    for (int i = 0; i < 4; i++) d[(g + 8 * (i / 2)) * 8 + 2 * t + (i % 2)] = acc[i];
}

extern "C" __global__ void emu_mma_bf16(float* d, const uint16_t* a, const uint16_t* b,
                                        const float* c) {
    mma_one<__nv_bfloat16>(d, a, b, c);
}
extern "C" __global__ void emu_mma_f16(float* d, const uint16_t* a, const uint16_t* b,
                                       const float* c) {
    mma_one<__half>(d, a, b, c);
}

// out[lane][4]: ldmatrix .x4 (trans != 0: .trans) of m ([32 rows][8], copied to shared
// memory), lane l giving the address of shared row rows[l].
extern "C" __global__ void emu_ldmatrix(uint32_t* out, const uint16_t* m, const int* rows,
                                        int trans) {
    __shared__ uint4 sm[32];
    const int l = threadIdx.x;
    sm[l] = reinterpret_cast<const uint4*>(m)[l];
    __syncwarp();
    uint32_t r[4];
    if (trans)
        tc::ldmatrix_x4<true>(r, &sm[rows[l]]);
    else
        tc::ldmatrix_x4<false>(r, &sm[rows[l]]);
    for (int i = 0; i < 4; i++) out[l * 4 + i] = r[i];
}

// The attention kernel's use of them: d ([16][16] f32) = a b with a [16 rows][16 k] and
// b [16 k][16 n] both row-major in shared memory; a through ldmatrix, b through ldmatrix
// of its transpose (bt: [n][k], as keys are stored) when trans == 0, through ldmatrix
// .trans of b itself (as values are) otherwise.
extern "C" __global__ void emu_ldmatrix_mma_bf16(float* d, const uint16_t* a,
                                                 const uint16_t* b, const uint16_t* bt,
                                                 int trans) {
    __shared__ uint4 sa[32], sb[32];
    const int l = threadIdx.x, g = l / 4, t = l % 4, m = l / 8, r = l % 8;
    sa[l] = reinterpret_cast<const uint4*>(a)[l];
    sb[l] = reinterpret_cast<const uint4*>(trans ? b : bt)[l];
    __syncwarp();
    const uint16_t* A = reinterpret_cast<const uint16_t*>(sa);
    const uint16_t* B = reinterpret_cast<const uint16_t*>(sb);
    uint32_t af[4], bf[4];
    // A: matrix m is rows 8 (m % 2).., columns 8 (m / 2)..
    tc::ldmatrix_x4<false>(af, A + (8 * (m % 2) + r) * 16 + 8 * (m / 2));
    if (trans) {
        // b [k][n]: matrix m is k rows 8 (m % 2).., n columns 8 (m / 2)..
        tc::ldmatrix_x4<true>(bf, B + (8 * (m % 2) + r) * 16 + 8 * (m / 2));
    } else {
        // bt [n][k]: matrix m is n rows 8 (m / 2).., k columns 8 (m % 2)..
        tc::ldmatrix_x4<false>(bf, B + (8 * (m / 2) + r) * 16 + 8 * (m % 2));
    }
    for (int nt = 0; nt < 2; nt++) {
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        const uint32_t b2[2] = {bf[2 * nt], bf[2 * nt + 1]};
        tc::mma_16816<__nv_bfloat16>(acc, af, b2);
        for (int i = 0; i < 4; i++) d[(g + 8 * (i / 2)) * 16 + nt * 8 + 2 * t + (i % 2)] = acc[i];
    }
}

// out[thread][3]: the first 32-bit word of this thread's shared slot after cp.async of
// src[thread] into it, (0) before any wait, (1) after cp_async_wait<1> with a second group
// in flight (the first group landed, the second not), (2) after cp_async_wait<0>. The slots
// start as zeros; the second group copies src2.
extern "C" __global__ void emu_cp_async(uint32_t* out, const uint32_t* src,
                                        const uint32_t* src2) {
    __shared__ uint4 a[32], b[32];
    const int t = threadIdx.x;
    a[t].x = a[t].y = a[t].z = a[t].w = 0u;
    b[t] = a[t];
    tc::cp_async16(&a[t], src + 4 * t);
    tc::cp_async_commit();
    tc::cp_async16(&b[t], src2 + 4 * t);
    tc::cp_async_commit();
    out[t * 3] = a[t].x;
    tc::cp_async_wait<1>();
    out[t * 3 + 1] = a[t].x + b[t].x;
    tc::cp_async_wait<0>();
    out[t * 3 + 2] = a[t].x + b[t].x;
}
