// Tensor-core instructions as small device functions: on the GPU each is one inline PTX
// instruction; on the CPU emulator (kernels/emu, WICK_EMU) the same function gathers the
// warp's registers at a warp-wide synchronisation point and computes every lane's result
// with the per-thread fragment layouts the PTX ISA documents ("Matrix Fragments for
// mma.m16n8k16 with floating point type", "Warp-level matrix load instruction: ldmatrix").
// tests/kernel_emu.rs checks each against a plain matrix product.
//
// Names used in the layouts: lane l of the warp, g = l / 4 (groupID) and t = l % 4
// (threadID_in_group). A register of 16-bit elements holds two, the lower-numbered one in
// its low 16 bits.
//
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32: D (16x8) += A (16x16) B
// (16x8), f32 accumulators.
//   A, 4 registers a[0..3] = elements a0..a7: a[i/2] holds (row, col) with
//     row = g + 8 * (i / 2 % 2), col = 2 t + (i % 2) + 8 * (i / 4).
//   B, 2 registers b[0..1] = elements b0..b3: row (k) = 2 t + (i % 2) + 8 * (i / 2),
//     col (n) = g.
//   C/D, 4 floats c[0..3]: row = g + 8 * (i / 2), col = 2 t + (i % 2).
// ldmatrix.sync.aligned.m8n8.x4.shared.b16: four 8x8 matrices of 16-bit elements, each row
// 16 contiguous bytes (16-byte aligned) whose address lane 8 m + r gives for row r of
// matrix m; register m of lane l receives row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1
// of matrix m. With .trans, the transposed matrix: rows 2 (l % 4) and 2 (l % 4) + 1 of
// column l / 4.
//
// On the emulator the accumulation is f32 fused multiply-adds in k order, starting from C;
// the GPU adds the same exact products in f32 in an order of its own, so results agree
// within f32 rounding, not bit for bit.

#ifndef WICK_TENSOR_CORE_CUH
#define WICK_TENSOR_CORE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>
#ifdef WICK_EMU
#include <vector>
#endif

namespace tc {

#ifdef WICK_EMU
inline float elem_f(__half, uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
inline float elem_f(__nv_bfloat16, uint16_t bits) {
    return __bfloat162float(__ushort_as_bfloat16(bits));
}
inline uint16_t half_of(uint32_t reg, int i) { return (uint16_t)(reg >> (16 * i)); }

template <typename T>
struct MmaOperands {
    float* d;
    const uint32_t* a;
    const uint32_t* b;
};

template <typename T>
void mma_all(void* const* lanes, unsigned) {
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; l++) {
        const auto* o = static_cast<const MmaOperands<T>*>(lanes[l]);
        const int g = l / 4, t = l % 4;
        for (int i = 0; i < 8; i++)
            A[g + 8 * (i / 2 % 2)][2 * t + (i % 2) + 8 * (i / 4)] =
                elem_f(T{}, half_of(o->a[i / 2], i % 2));
        for (int i = 0; i < 4; i++)
            B[2 * t + (i % 2) + 8 * (i / 2)][g] = elem_f(T{}, half_of(o->b[i / 2], i % 2));
    }
    for (int l = 0; l < 32; l++) {
        auto* o = static_cast<MmaOperands<T>*>(lanes[l]);
        const int g = l / 4, t = l % 4;
        for (int i = 0; i < 4; i++) {
            const int row = g + 8 * (i / 2), col = 2 * t + (i % 2);
            float acc = o->d[i];
            for (int k = 0; k < 16; k++) acc = fmaf(A[row][k], B[k][col], acc);
            o->d[i] = acc;
        }
    }
}

struct LdOperands {
    const uint16_t* row;  // this lane's row address
    uint32_t* r;          // its four destination registers
};

template <bool TRANS>
void ldmatrix_all(void* const* lanes, unsigned) {
    uint16_t M[4][8][8];
    for (int l = 0; l < 32; l++) {
        const auto* o = static_cast<const LdOperands*>(lanes[l]);
        if (reinterpret_cast<uintptr_t>(o->row) % 16) wick_emu::misaligned(o->row, 16);
        for (int c = 0; c < 8; c++) M[l / 8][l % 8][c] = o->row[c];
    }
    for (int l = 0; l < 32; l++) {
        auto* o = static_cast<LdOperands*>(lanes[l]);
        for (int m = 0; m < 4; m++) {
            const int r = l / 4, c = 2 * (l % 4);
            const uint16_t lo = TRANS ? M[m][c][r] : M[m][r][c];
            const uint16_t hi = TRANS ? M[m][c + 1][r] : M[m][r][c + 1];
            o->r[m] = (uint32_t)lo | (uint32_t)hi << 16;
        }
    }
}
#endif

// d += A B on the tensor cores (m16n8k16, row.col, f32 accumulators); T: __half or
// __nv_bfloat16. Every lane of the warp must call it together.
template <typename T>
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef WICK_EMU
    MmaOperands<T> o{d, a, b};
    wick_emu::warp_collective(0xffffffffu, &o, mma_all<T>, __builtin_FILE(), __builtin_LINE());
#else
    if constexpr (std::is_same<T, __half>::value) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#endif
}

// Four 8x8 matrices of 16-bit elements from shared memory (ldmatrix .x4; TRANS: .trans):
// `row` is this lane's row address (see above). Every lane of the warp calls it together.
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
#ifdef WICK_EMU
    LdOperands o{static_cast<const uint16_t*>(row), r};
    wick_emu::warp_collective(0xffffffffu, &o, ldmatrix_all<TRANS>, __builtin_FILE(),
                              __builtin_LINE());
#else
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(row);
    if constexpr (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr));
    }
#endif
}

// Asynchronous copies, global to shared memory (cp.async.cg.shared.global, 16 bytes; both
// addresses 16-byte aligned), in groups: cp_async_commit closes this thread's group of the
// copies issued since the last one, cp_async_wait<N> waits until at most N of this
// thread's groups are still in flight. Another thread sees the data only after a barrier
// that follows the wait. On the emulator a copy reads its source when issued and writes
// its destination only when a wait retires its group, so a read before the wait (or a
// missing wait) sees the old contents.
#ifdef WICK_EMU
struct CpAsyncCopy {
    void* dst;
    uint4 data;
};
struct CpAsyncThread {
    uint64_t block = 0;
    int open = 0;  // copies of the group being built (at the end of `copies`)
    std::vector<CpAsyncCopy> copies;
    std::vector<int> groups;  // committed groups' sizes, oldest first
};
inline CpAsyncThread& cp_async_thread() {
    static __thread std::vector<CpAsyncThread>* threads = nullptr;
    if (!threads) threads = new std::vector<CpAsyncThread>;
    const size_t t = threadIdx.x + (size_t)blockDim.x * (threadIdx.y + (size_t)blockDim.y * threadIdx.z);
    if (threads->size() <= t) threads->resize(t + 1);
    CpAsyncThread& s = (*threads)[t];
    if (s.block != wick_emu::block_serial()) s = CpAsyncThread{wick_emu::block_serial()};
    return s;
}
#endif

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#ifdef WICK_EMU
    if (reinterpret_cast<uintptr_t>(smem) % 16) wick_emu::misaligned(smem, 16);
    CpAsyncThread& s = cp_async_thread();
    s.copies.push_back(CpAsyncCopy{smem, *static_cast<const uint4*>(gmem)});
    s.open++;
#else
    const uint32_t dst = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef WICK_EMU
    CpAsyncThread& s = cp_async_thread();
    s.groups.push_back(s.open);
    s.open = 0;
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef WICK_EMU
    CpAsyncThread& s = cp_async_thread();
    while (s.groups.size() > (size_t)N) {
        const int n = s.groups.front();
        s.groups.erase(s.groups.begin());
        for (int i = 0; i < n; i++) memcpy(s.copies[i].dst, &s.copies[i].data, 16);
        s.copies.erase(s.copies.begin(), s.copies.begin() + n);
    }
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Two floats as one register of two 16-bit elements (lo in the low half), rounded to T.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    return (uint32_t)__half_as_ushort(__float2half_rn(lo)) |
           (uint32_t)__half_as_ushort(__float2half_rn(hi)) << 16;
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16;
}

}  // namespace tc

#endif  // WICK_TENSOR_CORE_CUH
