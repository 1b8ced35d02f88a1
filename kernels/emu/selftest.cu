// Kernels for the emulator's own tests (tests/kernel_emu.rs): warp operations with known
// results, and GPU bugs the emulator must report. Compiled into the emulator only (build.rs
// builds PTX from kernels/*.cu, not from this directory).

#include <stdint.h>

// out: [threads][8]: xor 1, xor 16, down 3, up 5, idx 7, ballot of odd lanes, any, all.
extern "C" __global__ void emu_warp_ops(int* out) {
    const int t = threadIdx.x, lane = t % 32;
    int* o = out + t * 8;
    o[0] = __shfl_xor_sync(0xffffffffu, t, 1);
    o[1] = __shfl_xor_sync(0xffffffffu, t, 16);
    o[2] = __shfl_down_sync(0xffffffffu, t, 3);
    o[3] = __shfl_up_sync(0xffffffffu, t, 5);
    o[4] = __shfl_sync(0xffffffffu, t, 7);
    o[5] = (int)__ballot_sync(0xffffffffu, lane & 1);
    o[6] = __any_sync(0xffffffffu, lane == 31);
    o[7] = __all_sync(0xffffffffu, lane < 31);
}

// A block-wide sum through shared memory: out[block] = sum of thread ids + block id.
extern "C" __global__ void emu_block_sum(int* out) {
    __shared__ int partial[32];
    int v = threadIdx.x + blockIdx.x;
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0;
        for (int w = 0; w < (int)(blockDim.x / 32); w++) s += partial[w];
        out[blockIdx.x] = s;
    }
}

// Bug: odd threads wait at a barrier the even ones never reach.
extern "C" __global__ void emu_bug_divergent_barrier(int* out) {
    if (threadIdx.x % 2) __syncthreads();
    out[threadIdx.x] = 1;
}

// Bug: two halves of the block at two different barriers.
extern "C" __global__ void emu_bug_two_barriers(int* out) {
    if (threadIdx.x < 32) {
        __syncthreads();
        out[threadIdx.x] = 1;
    } else {
        __syncthreads();
        out[threadIdx.x] = 2;
    }
}

// Bug: half a warp shuffles with a full mask.
extern "C" __global__ void emu_bug_divergent_shuffle(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

// Bug: writes one element past the end of out (n elements).
extern "C" __global__ void emu_bug_out_of_bounds(float* out, int n) {
    if (threadIdx.x == 0) out[n] = 1.0f;
}

// Bug: a 16-byte load from a 2-byte aligned address.
extern "C" __global__ void emu_bug_misaligned(const uint16_t* in, unsigned* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(in + 1);
    out[threadIdx.x] = v.x;
}

// Bug: writes through a const parameter.
extern "C" __global__ void emu_bug_writes_input(const float* in) {
    if (threadIdx.x == 0) const_cast<float*>(in)[0] = 5.0f;
}

// Bug: thread 0 publishes a value in shared memory with no barrier before the others read
// it. Correct only if thread 0 happens to run first.
extern "C" __global__ void emu_bug_missing_barrier(int* out) {
    __shared__ int value;
    if (threadIdx.x == 0) value = (int)blockIdx.x + 1;
    out[blockIdx.x * blockDim.x + threadIdx.x] = value;
}
