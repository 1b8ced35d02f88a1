// CUDA device code as host C++: what wick's kernels (kernels/*.cu) use, defined so that the
// unmodified .cu files compile with g++ and run on the CPU through the emulator
// (runtime.cpp). build.rs compiles each .cu file in a generated translation unit that
// includes this header first; `#include <cuda_fp16.h>` and `<cuda_bf16.h>` resolve to the
// stubs in emu/include/.
//
// Execution model (runtime.cpp): the blocks of a launch run one after another on the
// launching thread; the threads of a block are fibers (user-level threads with their own
// stacks) switched at every __syncthreads and warp shuffle, so a thread runs until it has
// to wait for others. __syncthreads waits for every thread of the block at the same call;
// a warp shuffle for every lane of its mask at the same call. A thread that waits where
// the others never come (a divergent barrier or shuffle, a real GPU bug) is reported as a
// deadlock, never a hang. __shared__ variables are static thread-locals: one copy per
// launching thread, shared by the fibers of the block it runs.

#ifndef WICK_EMU_H
#define WICK_EMU_H
// Device code that must differ on the emulator (inline PTX) tests this.
#define WICK_EMU 1

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------------------
// Qualifiers.

#ifdef WICK_EMU_SCAN
// build.rs preprocesses each .cu file with WICK_EMU_SCAN to list its kernels: these
// markers survive preprocessing so the kernels' names and launch bounds can be read.
#define __global__ __wick_global__
#define __launch_bounds__(...) __wick_launch_bounds__(__VA_ARGS__)
#else
#define __global__
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __forceinline__ inline
// One copy per OS thread: the fibers of the block that thread runs share it.
#define __shared__ static __thread
#define __constant__ static const

// ---------------------------------------------------------------------------------------
// Built-in types and variables.

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

namespace wick_emu {
// Reports a misaligned vector access (a fault on the GPU) and ends the launch.
void misaligned(const void* p, int align);
}  // namespace wick_emu

// Vector types: a load or store of a whole vector checks its alignment, as the GPU's
// vector memory instructions require it.
#define WICK_EMU_VEC(NAME, T, ALIGN, ...)                                                  \
    struct alignas(ALIGN) NAME {                                                           \
        T __VA_ARGS__;                                                                     \
        NAME() = default;                                                                  \
        NAME(const NAME& o) {                                                              \
            if (reinterpret_cast<uintptr_t>(&o) % ALIGN) wick_emu::misaligned(&o, ALIGN);  \
            memcpy(static_cast<void*>(this), &o, sizeof(NAME));                            \
        }                                                                                  \
        NAME& operator=(const NAME& o) {                                                   \
            if (reinterpret_cast<uintptr_t>(&o) % ALIGN) wick_emu::misaligned(&o, ALIGN);  \
            if (reinterpret_cast<uintptr_t>(this) % ALIGN) wick_emu::misaligned(this, ALIGN); \
            memcpy(static_cast<void*>(this), &o, sizeof(NAME));                            \
            return *this;                                                                  \
        }                                                                                  \
    };
WICK_EMU_VEC(uint2, unsigned int, 8, x, y)
WICK_EMU_VEC(uint4, unsigned int, 16, x, y, z, w)
WICK_EMU_VEC(int2, int, 8, x, y)
WICK_EMU_VEC(int4, int, 16, x, y, z, w)
WICK_EMU_VEC(float2, float, 8, x, y)
WICK_EMU_VEC(float4, float, 16, x, y, z, w)
#undef WICK_EMU_VEC

// Set by the emulator for the fiber (thread) that runs.
extern __thread uint3 threadIdx;
extern __thread uint3 blockIdx;
extern __thread dim3 blockDim;
extern __thread dim3 gridDim;
static constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------
// Synchronisation (runtime.cpp). The call site (file and line, taken as default arguments)
// identifies a barrier or shuffle: every participant must reach the same one.

namespace wick_emu {
void syncthreads(const char* file, int line);
enum { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, VOTE_BALLOT, SYNC_WARP, WARP_COLLECTIVE };
// Warp exchange: waits for every lane of `mask` at this call, then returns this lane's
// result (the source lane's value bits for shuffles, the ballot for votes).
uint64_t warp_exchange(int op, unsigned mask, uint64_t value, int size, int arg, int width,
                       const char* file, int line);

// A warp-wide instruction (tensor-core mma, ldmatrix: kernels/tensor_core.cuh): waits for
// every lane of `mask` at this call, then runs fn once with each lane's `operands`
// (lanes[l], null for lanes outside the mask), before any of them goes on; fn reads every
// lane's inputs and writes every lane's outputs through them.
void warp_collective(unsigned mask, void* operands, void (*fn)(void* const* lanes, unsigned mask),
                     const char* file, int line);
// A number that identifies the block the calling thread runs (it grows with every block
// the launching OS thread runs): per-thread emulator state of one block is told apart by it.
uint64_t block_serial();

template <typename T>
inline T shfl(int op, unsigned mask, T var, int arg, int width, const char* file, int line) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                  "warp shuffles move values of up to 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &var, sizeof(T));
    bits = warp_exchange(op, mask, bits, (int)sizeof(T), arg, width, file, line);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}
}  // namespace wick_emu

#define WICK_EMU_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()

inline void __syncthreads(WICK_EMU_SITE) { wick_emu::syncthreads(file, line); }
inline void __syncwarp(unsigned mask = 0xffffffffu, WICK_EMU_SITE) {
    wick_emu::warp_exchange(wick_emu::SYNC_WARP, mask, 0, 4, 0, 32, file, line);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = 32, WICK_EMU_SITE) {
    return wick_emu::shfl(wick_emu::SHFL_IDX, mask, var, src, width, file, line);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, WICK_EMU_SITE) {
    return wick_emu::shfl(wick_emu::SHFL_UP, mask, var, (int)delta, width, file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, WICK_EMU_SITE) {
    return wick_emu::shfl(wick_emu::SHFL_DOWN, mask, var, (int)delta, width, file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, WICK_EMU_SITE) {
    return wick_emu::shfl(wick_emu::SHFL_XOR, mask, var, lane_mask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, WICK_EMU_SITE) {
    return (unsigned)wick_emu::warp_exchange(wick_emu::VOTE_BALLOT, mask, pred != 0, 4, 0, 32,
                                             file, line);
}
inline bool __any_sync(unsigned mask, int pred, WICK_EMU_SITE) {
    return __ballot_sync(mask, pred, file, line) != 0u;
}
inline bool __all_sync(unsigned mask, int pred, WICK_EMU_SITE) {
    return __ballot_sync(mask, !pred, file, line) == 0u;
}
#undef WICK_EMU_SITE

// ---------------------------------------------------------------------------------------
// Arithmetic.

inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// The GPU's fast exponential: ex2.approx.ftz of x * log2(e). The product's rounding is
// the main part of its error; results below the smallest normal flush to zero.
inline float __expf(float x) {
    const float r = exp2f(x * 1.4426950408889634f);
    return r < 1.17549435e-38f ? 0.0f : r;
}
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
// Round-to-nearest arithmetic, each operation rounded on its own (the host's IEEE ops).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline unsigned __float_as_uint(float x) {
    unsigned u;
    memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}
inline int __float_as_int(float x) { return (int)__float_as_uint(x); }
inline float __int_as_float(int i) { return __uint_as_float((unsigned)i); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }

// Atomics. The fibers of a block switch only at barriers and shuffles, and blocks run one
// after another, so a plain read-modify-write is atomic here.
template <typename T>
inline T atomicAdd(T* p, T v) {
    static_assert(std::is_arithmetic<T>::value, "atomicAdd on numbers");
    const T old = *p;
    *p = old + v;
    return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
    const T old = *p;
    if (v > old) *p = v;
    return old;
}

// ---------------------------------------------------------------------------------------
// 16-bit floats: storage types with the hardware's conversions (round to nearest even;
// NaN becomes the canonical 0x7fff).

struct __half {
    unsigned short __x;
};
struct __nv_bfloat16 {
    unsigned short __x;
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

namespace wick_emu {
inline uint16_t f32_to_f16_bits(float f) {
    const uint32_t x = __float_as_uint(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;
    if (ax >= 0x477ff000u) return sign | 0x7c00u;  // 65520 and up round to infinity
    const uint32_t e = ax >> 23;
    if (e >= 113) {  // a normal half
        uint32_t h = ((e - 112) << 10) | ((ax >> 13) & 0x3ffu);
        const uint32_t rest = ax & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
        return sign | (uint16_t)h;
    }
    // Subnormal (or zero): units of 2^-24.
    const uint32_t shift = 126 - e;
    if (shift > 24) return sign;
    const uint32_t mant = (ax & 0x7fffffu) | (e ? 0x800000u : 0u);
    uint32_t h = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

inline float f16_bits_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu;
    const uint32_t m = h & 0x3ffu;
    if (e == 0x1f) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e != 0) return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
    const float v = (float)m * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return sign ? -v : v;
}

inline uint16_t f32_to_bf16_bits(float f) {
    uint32_t x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

inline float bf16_bits_to_f32(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }
}  // namespace wick_emu

inline float __half2float(__half h) { return wick_emu::f16_bits_to_f32(h.__x); }
inline __half __float2half(float f) { return __half{wick_emu::f32_to_f16_bits(f)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline float __bfloat162float(__nv_bfloat16 b) { return wick_emu::bf16_bits_to_f32(b.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) {
    return __nv_bfloat16{wick_emu::f32_to_bf16_bits(f)};
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }

// ---------------------------------------------------------------------------------------
// The kernel table build.rs generates after each .cu file: every `extern "C" __global__`
// function with its parameter list, so launches are checked against it and called with
// typed arguments.

namespace wick_emu {
struct Param {
    char cls;         // 'p' pointer, 'i' signed integer, 'u' unsigned integer, 'f' float
    unsigned size;    // bytes of the parameter
    unsigned elem;    // pointers: bytes of the pointee
    bool writable;    // pointers: the pointee is not const
};

struct Kernel {
    const char* name;
    void (*call)(void* const* args);  // args[i] points to parameter i's value
    const Param* params;
    int nparams;
    int launch_bounds;  // most threads per block (__launch_bounds__), 0 if none
};

struct Table {
    const Kernel* kernels;
    size_t count;
};

template <typename T>
constexpr Param param() {
    if constexpr (std::is_pointer<T>::value) {
        using E = typename std::remove_pointer<T>::type;
        return Param{'p', (unsigned)sizeof(T), (unsigned)sizeof(E), !std::is_const<E>::value};
    } else if constexpr (std::is_floating_point<T>::value) {
        return Param{'f', (unsigned)sizeof(T), 0, false};
    } else {
        static_assert(std::is_integral<T>::value, "kernel parameters: pointers and numbers");
        return Param{std::is_signed<T>::value ? 'i' : 'u', (unsigned)sizeof(T), 0, false};
    }
}

template <typename F>
struct Signature;
template <typename... A>
struct Signature<void (*)(A...)> {
    static constexpr int count = sizeof...(A);
    static constexpr Param params[count > 0 ? count : 1] = {param<A>()...};
    template <size_t... I>
    static void call(void (*f)(A...), void* const* args, std::index_sequence<I...>) {
        f(*static_cast<A*>(args[I])...);
    }
};
}  // namespace wick_emu

#define WICK_EMU_KERNEL(NAME, BOUNDS)                                                      \
    ::wick_emu::Kernel {                                                                   \
        #NAME,                                                                             \
            [](void* const* args) {                                                        \
                using S = ::wick_emu::Signature<decltype(&NAME)>;                          \
                S::call(&NAME, args, std::make_index_sequence<S::count>{});                \
            },                                                                             \
            ::wick_emu::Signature<decltype(&NAME)>::params,                                \
            ::wick_emu::Signature<decltype(&NAME)>::count, (BOUNDS)                        \
    }

#endif  // WICK_EMU_H
