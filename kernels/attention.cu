// wick's CUDA kernels for the paged KV cache: rotary embeddings, cache writes, paged
// attention over a flattened batch (decode, prefill and chunked prefill in one step: decode
// rows on the split-context kernel and its reduction, prompt rows on the tensor-core
// prefill kernel), and block copies.
//
// Device cache layout, K and V alike: [num_blocks][num_kv_heads][block_size][head_dim],
// so one key (or value) of one head is head_dim contiguous elements and a warp reads it
// with one coalesced load. (The CPU cache stores keys transposed within a block instead,
// for its SIMD lanes; see src/kv/cache.rs.)
//
// Element types: __nv_bfloat16 (suffix bf16) and __half (suffix f16). All arithmetic is
// in f32 (the prefill kernel's products on tensor cores: 16-bit inputs, f32 accumulators).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "tensor_core.cuh"

#define WARP 32
// Warps per attention thread block; each warp walks every NWARPS-th key of its range.
#define NWARPS 4
// Query heads of one KV head handled by one thread block (their queries stay in
// registers and every key and value is loaded once for all of them).
#define GMAX 8
#define NO_SLOT 0xffffffffu
#define NOT_SPLIT 0xffffffffu  // part_start of a row that is not split (ops::launch)
#define PREFILL_ROW 0xfffffffeu  // part_start of a prompt row: prefill_attention's (ops::launch)

__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __half from_f<__half>(float x) {
    return __float2half(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Loads E consecutive elements starting at p (E * sizeof(T) bytes, aligned to that size)
// as floats.
template <typename T, int E>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float* out) {
    static_assert(sizeof(T) == 2, "16-bit element types only");
    if constexpr (E == 8) {
        uint4 raw = *reinterpret_cast<const uint4*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < 8; i++) out[i] = to_f(e[i]);
    } else if constexpr (E == 4) {
        uint2 raw = *reinterpret_cast<const uint2*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; i++) out[i] = to_f(e[i]);
    } else if constexpr (E == 2) {
        uint32_t raw = *reinterpret_cast<const uint32_t*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
        out[0] = to_f(e[0]);
        out[1] = to_f(e[1]);
    } else {
#pragma unroll
        for (int i = 0; i < E; i++) out[i] = to_f(p[i]);
    }
}

// ---------------------------------------------------------------------------------------
// Rotary embeddings. x, out: [tokens][heads][head_dim]; positions: [tokens];
// inv_freq: [rot_dim / 2]. The first rot_dim (even, at most head_dim) dimensions of each
// head are rotated, the rest copied (partial rotary); interleaved != 0: pairs (2i, 2i+1)
// (GGUF llama), else (i, i + rot_dim/2) (Hugging Face). cos and sin are multiplied by
// scale (longrope's attention factor; 1 otherwise). Angles as the CPU path computes them
// (src/ops/rope.rs): f32 position * f32 inverse frequency, then an accurate sincos.
// grid: tokens; block: any.
template <typename T>
__device__ void rope(const T* __restrict__ x, T* __restrict__ out,
                     const uint32_t* __restrict__ positions,
                     const float* __restrict__ inv_freq, int heads, int head_dim, int rot_dim,
                     int interleaved, float scale) {
    const int t = blockIdx.x;
    const int half = rot_dim / 2;
    const float pos = (float)positions[t];
    const size_t row = (size_t)t * heads * head_dim;
    for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
        const int h = i / half, j = i % half;
        const T* head = x + row + (size_t)h * head_dim;
        T* dst = out + row + (size_t)h * head_dim;
        const int a = interleaved ? 2 * j : j;
        const int b = interleaved ? 2 * j + 1 : j + half;
        float s, c;
        sincosf(pos * inv_freq[j], &s, &c);
        c *= scale;
        s *= scale;
        const float x0 = to_f(head[a]), x1 = to_f(head[b]);
        dst[a] = from_f<T>(x0 * c - x1 * s);
        dst[b] = from_f<T>(x0 * s + x1 * c);
    }
    // The dimensions past rot_dim pass through.
    const int rest = head_dim - rot_dim;
    for (int i = threadIdx.x; i < heads * rest; i += blockDim.x) {
        const size_t e = row + (size_t)(i / rest) * head_dim + rot_dim + i % rest;
        out[e] = x[e];
    }
}

// ---------------------------------------------------------------------------------------
// Writes the new tokens' K and V ([tokens][kv_heads][head_dim]) into their cache slots.
// A slot of NO_SLOT is skipped. grid: tokens; block: any.
template <typename T>
__device__ void write_kv(const T* __restrict__ k, const T* __restrict__ v,
                         T* __restrict__ k_cache, T* __restrict__ v_cache,
                         const uint32_t* __restrict__ slots, int kv_heads, int head_dim,
                         int block_size) {
    const int t = blockIdx.x;
    const uint32_t slot = slots[t];
    if (slot == NO_SLOT) return;
    const size_t block = slot / block_size, within = slot % block_size;
    const int row = kv_heads * head_dim;
    for (int i = threadIdx.x; i < row; i += blockDim.x) {
        const int h = i / head_dim, c = i % head_dim;
        const size_t dst = ((block * kv_heads + h) * block_size + within) * head_dim + c;
        k_cache[dst] = k[(size_t)t * row + i];
        v_cache[dst] = v[(size_t)t * row + i];
    }
}

// ---------------------------------------------------------------------------------------
// Paged attention for the decode rows of a flattened batch (a row whose part_start is
// PREFILL_ROW, a prompt row, is prefill_attention's: its block returns at once).
//
// Row r belongs to sequence s = row_seq[r]; it is query number r - q_start[s] of the
// sequence's q_len[s] new tokens, whose K/V are already in the cache; it attends to keys
// 0 .. context_len[s] - q_len[s] + (r - q_start[s]) (causal), of which only the last
// `window` when window > 0 (a sliding window: the query at position p sees keys
// p + 1 - window ..= p; the keys below it are never read). Keys are read through the
// sequence's block table (block_tables[s * max_blocks ..]). Each score is q.k * scale,
// then, when softcap > 0, softcap * tanh(score / softcap) (Gemma 2's soft-capping).
//
// grid: (rows, kv_heads * subgroups, most partitions of a row), block: NWARPS * WARP
// threads. A thread block handles one row, up to GMAX query heads of one KV head
// (subgroup sg covers heads kvh * group + sg * GMAX ..), and, for a split row
// (part_start[r] != NOT_SPLIT, a decode row: src/ops/launch.rs plan_splits), keys
// lo + [p * part_size, (p + 1) * part_size) of the row's range, lo its first visible key
// (0 without a window); a row that is not split takes all its keys in partition 0, and
// blocks past a row's partitions (those past its window's keys too) return at once. Each
// warp keeps an online softmax (running max, sum, weighted values) per head, a lane
// holding head_dim / 32 dimensions; the warps are then merged in shared memory. A row that
// is not split writes its normalized output as T; a split row's partials (unnormalized
// sum, max, denominator) go to scratch slot part_start[r] + p of part_acc / part_ml
// ([slot][head][dim] and [slot][head][2]) for reduce_partitions.
template <typename T, int D>
__device__ void paged_attention(
    T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_ml,
    const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
    const uint32_t* __restrict__ row_seq, const uint32_t* __restrict__ q_start,
    const uint32_t* __restrict__ q_len, const uint32_t* __restrict__ context_len,
    const uint32_t* __restrict__ block_tables, const uint32_t* __restrict__ part_start,
    int max_blocks, int num_heads, int kv_heads, int block_size, int part_size, float scale,
    int window, float softcap) {
    constexpr int E = D / WARP;
    __shared__ float sm_m[NWARPS][GMAX];
    __shared__ float sm_l[NWARPS][GMAX];
    __shared__ float sm_acc[NWARPS][GMAX][D];

    const int p = blockIdx.z;
    const int group = num_heads / kv_heads;
    const int subgroups = (group + GMAX - 1) / GMAX;
    const int kvh = blockIdx.y / subgroups;
    const int sg = blockIdx.y % subgroups;
    const int h0 = kvh * group + sg * GMAX;
    const int ng = min(GMAX, group - sg * GMAX);
    const int r = blockIdx.x;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;

    const uint32_t s = row_seq[r];
    const int n_keys = (int)context_len[s] - (int)q_len[s] + (r - (int)q_start[s]) + 1;
    const uint32_t first = part_start[r];
    if (first == PREFILL_ROW) return;  // prefill_attention's row
    const bool split = first != NOT_SPLIT;
    const int lo = window > 0 ? max(0, n_keys - window) : 0;  // the first visible key
    const int parts = split ? (n_keys - lo + part_size - 1) / part_size : 1;
    if (p >= parts) return;  // the whole block, before any barrier
    const int k0 = lo + (split ? p * part_size : 0);
    const int k1 = split ? min(n_keys, k0 + part_size) : n_keys;
    const uint32_t* table = block_tables + (size_t)s * max_blocks;

    float qr[GMAX][E];
    float m[GMAX], l[GMAX], acc[GMAX][E];
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int e = 0; e < E; e++) {
            acc[g][e] = 0.f;
            qr[g][e] = 0.f;
        }
        if (g < ng) {
            load_vec<T, E>(q + ((size_t)r * num_heads + h0 + g) * D + lane * E, qr[g]);
#pragma unroll
            for (int e = 0; e < E; e++) qr[g][e] *= scale;
        }
    }

    for (int j = k0 + warp; j < k1; j += NWARPS) {
        const uint32_t blk = table[j / block_size];
        const size_t base =
            (((size_t)blk * kv_heads + kvh) * block_size + (j % block_size)) * D + lane * E;
        float kr[E], vr[E];
        load_vec<T, E>(k_cache + base, kr);
        load_vec<T, E>(v_cache + base, vr);
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g < ng) {
                float dot = 0.f;
#pragma unroll
                for (int e = 0; e < E; e++) dot = fmaf(qr[g][e], kr[e], dot);
                dot = warp_sum(dot);
                if (softcap > 0.f) dot = softcap * tanhf(dot / softcap);
                const float mn = fmaxf(m[g], dot);
                const float corr = __expf(m[g] - mn);  // 0 for the first key (m = -inf)
                const float pj = __expf(dot - mn);
                l[g] = l[g] * corr + pj;
#pragma unroll
                for (int e = 0; e < E; e++) acc[g][e] = fmaf(pj, vr[e], acc[g][e] * corr);
                m[g] = mn;
            }
        }
    }

#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (lane == 0) {
            sm_m[warp][g] = m[g];
            sm_l[warp][g] = l[g];
        }
#pragma unroll
        for (int e = 0; e < E; e++) sm_acc[warp][g][lane * E + e] = acc[g][e];
    }
    __syncthreads();

    for (int i = threadIdx.x; i < ng * D; i += blockDim.x) {
        const int g = i / D, c = i % D;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < NWARPS; w++) mx = fmaxf(mx, sm_m[w][g]);
        float sum = 0.f, a = 0.f;
        if (mx != -INFINITY) {
#pragma unroll
            for (int w = 0; w < NWARPS; w++) {
                const float f = sm_l[w][g] > 0.f ? __expf(sm_m[w][g] - mx) : 0.f;
                sum += sm_l[w][g] * f;
                a += sm_acc[w][g][c] * f;
            }
        }
        const int h = h0 + g;
        if (!split) {
            out[((size_t)r * num_heads + h) * D + c] = from_f<T>(sum > 0.f ? a / sum : 0.f);
        } else {
            const size_t idx = ((size_t)first + p) * num_heads + h;
            part_acc[idx * D + c] = a;
            if (c == 0) {
                part_ml[idx * 2] = mx;
                part_ml[idx * 2 + 1] = sum;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Prefill attention on tensor cores (FlashAttention-2 over the paged cache) for the rows
// of prompt sequences: those with q_len > 1, whose part_start is PREFILL_ROW
// (src/ops/launch.rs plan_splits); paged_attention skips them.
//
// The query rows of one KV head of one sequence are (token, head) pairs, token-major: row i
// is new token i / group of the sequence, query head kvh * group + i % group, so a tile
// holds every query head of the group and each K/V tile is loaded once for all of them.
// Token i (0-based among the sequence's q_len new tokens) sees keys
// 0 .. context_len - q_len + i (the cached prefix, then causal within the chunk), of which
// only the last `window` when window > 0 (as paged_attention; scores soft-capped the same
// way when softcap > 0).
//
// grid: (tiles, kv_heads), tiles at least the sum over prompt sequences of
// ceil(q_len * group / PF_BM) (blocks past them return); block: PF_WARPS * WARP. Blocks take
// the prompt sequences' tiles in order, each sequence's last (longest) tile first. A block
// copies its PF_BM x D query tile into shared memory, then walks the keys in tiles of BN
// from the tile holding the first key any of its rows sees (with a window, the K/V tiles
// below every row's window are never loaded), each gathered through the block table into
// shared memory with cp.async (zeros past the tile's last key), the next tile's copies in
// flight while this one is used (for head sizes up to 128); warp w owns tile rows
// 16 w .. 16 w + 15: S = Q K^T with mma.m16n8k16 (f32 accumulators; fragments through
// ldmatrix), masking, an online softmax per row (max and sum in f32; a row's four lanes
// merged with shuffles), then O += P V with P rounded to T (as FlashAttention does) and V
// through ldmatrix .trans. A row with no visible key in a K/V tile (all below its window)
// keeps its running max at -inf and gains nothing from it. Shared-memory rows are
// XOR-swizzled in 16-byte chunks, so the eight rows one ldmatrix reads hit distinct banks.
#define PF_WARPS 4
#define PF_BM (16 * PF_WARPS)

// Keys per K/V tile and K/V buffers (2: the next tile's copies overlap this tile's
// products): with the query tile, 48 KiB of static shared memory at most.
template <int D>
struct PrefillTile {
    static constexpr int BN = D >= 256 ? 16 : D >= 128 ? 32 : 64;
    static constexpr int STAGES = D >= 256 ? 1 : 2;
};

// Index (in 16-byte chunks) of chunk c of row r of a [rows][D] tile in shared memory.
template <int D>
__device__ __forceinline__ int swz(int r, int c) {
    return r * (D / 8) + (c ^ (r & 7));
}

template <typename T, int D>
__device__ void prefill_attention(T* __restrict__ out, const T* __restrict__ q,
                                  const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                                  const uint32_t* __restrict__ q_start,
                                  const uint32_t* __restrict__ q_len,
                                  const uint32_t* __restrict__ context_len,
                                  const uint32_t* __restrict__ block_tables, int num_seqs,
                                  int max_blocks, int num_heads, int kv_heads, int block_size,
                                  float scale, int window, float softcap) {
    constexpr int BM = PF_BM, BN = PrefillTile<D>::BN, STAGES = PrefillTile<D>::STAGES;
    constexpr int C = D / 8;
    static_assert(D % 64 == 0, "the swizzle needs 8 chunks a row at least");
    __shared__ uint4 sq[BM * C];
    __shared__ uint4 sk[STAGES][BN * C];
    __shared__ uint4 sv[STAGES][BN * C];

    const int group = num_heads / kv_heads;
    const int kvh = blockIdx.y;
    int b = blockIdx.x, s = -1, tile = 0;
    for (int i = 0; i < num_seqs; i++) {
        const int n = (int)q_len[i];
        if (n <= 1) continue;  // a decode row: paged_attention's
        const int tiles = (n * group + BM - 1) / BM;
        if (b < tiles) {
            s = i;
            tile = tiles - 1 - b;
            break;
        }
        b -= tiles;
    }
    if (s < 0) return;  // the whole block, before any barrier
    const int n_q = (int)q_len[s];
    const int rows = n_q * group;
    const int row0 = tile * BM;
    const int prefix = (int)context_len[s] - n_q;
    const int n_keys = prefix + (min(row0 + BM, rows) - 1) / group + 1;  // the tile's keys
    // The first key any row of the tile sees (its first token's window starts lowest).
    const int key_lo = window > 0 ? max(0, prefix + row0 / group + 1 - window) : 0;
    const uint32_t* table = block_tables + (size_t)s * max_blocks;
    const size_t q_row0 = q_start[s];

    uint4 zero;
    zero.x = zero.y = zero.z = zero.w = 0u;
    // The query tile (rows past the sequence's: zeros), in the first copy group.
    for (int i = threadIdx.x; i < BM * C; i += blockDim.x) {
        const int r = i / C, c = i % C, ri = row0 + r;
        if (ri < rows) {
            const int h = kvh * group + ri % group;
            tc::cp_async16(&sq[swz<D>(r, c)],
                           q + ((q_row0 + ri / group) * num_heads + h) * D + c * 8);
        } else {
            sq[swz<D>(r, c)] = zero;
        }
    }
    // Copies key tile `tile` (keys past the tile's last: zeros) into buffer `buf`.
    auto load_kv = [&](int tile, int buf) {
        const int k0 = tile * BN;
        for (int i = threadIdx.x; i < BN * C; i += blockDim.x) {
            const int r = i / C, c = i % C, j = k0 + r;
            if (j < n_keys) {
                const size_t base = (((size_t)table[j / block_size] * kv_heads + kvh) * block_size +
                                     j % block_size) * D + c * 8;
                tc::cp_async16(&sk[buf][swz<D>(r, c)], k_cache + base);
                tc::cp_async16(&sv[buf][swz<D>(r, c)], v_cache + base);
            } else {
                sk[buf][swz<D>(r, c)] = zero;
                sv[buf][swz<D>(r, c)] = zero;
            }
        }
    };
    // K/V tiles it0 .. n_tiles - 1 (the ones below it0 hold no key the tile's rows see).
    const int it0 = key_lo / BN;
    const int n_tiles = (n_keys + BN - 1) / BN;
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (it0 + st < n_tiles) load_kv(it0 + st, st);
        tc::cp_async_commit();
    }

    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int g = lane / 4, t = lane % 4;
    const int mi = lane / 8, r8 = lane % 8;  // the ldmatrix row this lane addresses
    // This lane's two rows (g and g + 8 of its warp's 16): keys lo .. lim - 1 are visible.
    // Rows past the sequence's see every key of the tile (finite, never written).
    int lo[2], lim[2];
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        const int ri = row0 + 16 * warp + g + 8 * h2;
        lim[h2] = ri < rows ? prefix + ri / group + 1 : n_keys;
        lo[h2] = ri < rows && window > 0 ? max(0, lim[h2] - window) : 0;
    }
    float o[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int it = 0; it0 + it < n_tiles; it++) {
        const int k0 = (it0 + it) * BN, buf = it % STAGES;
        // Every warp is done with the buffer the prefetch below fills (the last tile's when
        // STAGES is 1, the one before it when 2).
        __syncthreads();
        if (it0 + it + STAGES - 1 < n_tiles)
            load_kv(it0 + it + STAGES - 1, (it + STAGES - 1) % STAGES);
        tc::cp_async_commit();
        tc::cp_async_wait<STAGES - 1>();  // this thread's copies of tile it (and of Q) landed
        __syncthreads();                  // and every thread's

        // S = Q K^T for this warp's 16 rows and the tile's BN keys.
        float sc[BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t af[4];
            tc::ldmatrix_x4<false>(af, &sq[swz<D>(16 * warp + 8 * (mi % 2) + r8, 2 * kk + mi / 2)]);
#pragma unroll
            for (int np = 0; np < BN / 16; np++) {
                uint32_t bf[4];
                tc::ldmatrix_x4<false>(bf, &sk[buf][swz<D>(16 * np + 8 * (mi / 2) + r8, 2 * kk + mi % 2)]);
                tc::mma_16816<T>(sc[2 * np], af, bf);
                tc::mma_16816<T>(sc[2 * np + 1], af, bf + 2);
            }
        }

        // Scale, soft-cap, mask, and the online softmax (each row's max over its four
        // lanes).
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int j = k0 + nt * 8 + 2 * t + (i & 1);
                float x = sc[nt][i] * scale;
                if (softcap > 0.f) x = softcap * tanhf(x / softcap);
                x = j >= lo[i / 2] && j < lim[i / 2] ? x : -INFINITY;
                sc[nt][i] = x;
                mx[i / 2] = fmaxf(mx[i / 2], x);
            }
        }
        float corr[2];
#pragma unroll
        for (int h2 = 0; h2 < 2; h2++) {
            mx[h2] = fmaxf(mx[h2], __shfl_xor_sync(0xffffffffu, mx[h2], 1));
            mx[h2] = fmaxf(mx[h2], __shfl_xor_sync(0xffffffffu, mx[h2], 2));
            // A row that has seen no visible key yet (all masked: below its window) keeps
            // m = -inf; its exponents are taken against 0 so they give 0, not NaN.
            const float base = mx[h2] == -INFINITY ? 0.f : mx[h2];
            corr[h2] = __expf(m[h2] - base);  // 0 while m = -inf
            m[h2] = mx[h2];
            mx[h2] = base;
            l[h2] *= corr[h2];
        }
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
#pragma unroll
            for (int i = 0; i < 4; i++) o[dt][i] *= corr[i / 2];
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float p = __expf(sc[nt][i] - mx[i / 2]);
                sc[nt][i] = p;
                l[i / 2] += p;
            }
        }

        // O += P V: the score accumulators are P's A fragments, 16 keys at a time.
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            uint32_t pa[4];
            pa[0] = tc::pack2<T>(sc[2 * kk][0], sc[2 * kk][1]);
            pa[1] = tc::pack2<T>(sc[2 * kk][2], sc[2 * kk][3]);
            pa[2] = tc::pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            pa[3] = tc::pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t vf[4];
                tc::ldmatrix_x4<true>(vf, &sv[buf][swz<D>(16 * kk + 8 * (mi % 2) + r8, 2 * dp + mi / 2)]);
                tc::mma_16816<T>(o[2 * dp], pa, vf);
                tc::mma_16816<T>(o[2 * dp + 1], pa, vf + 2);
            }
        }
    }

#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        l[h2] += __shfl_xor_sync(0xffffffffu, l[h2], 1);
        l[h2] += __shfl_xor_sync(0xffffffffu, l[h2], 2);
        const int ri = row0 + 16 * warp + g + 8 * h2;
        if (ri < rows) {
            const int h = kvh * group + ri % group;
            T* dst = out + ((q_row0 + ri / group) * num_heads + h) * D + 2 * t;
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                dst[dt * 8] = from_f<T>(o[dt][2 * h2] / l[h2]);
                dst[dt * 8 + 1] = from_f<T>(o[dt][2 * h2 + 1] / l[h2]);
            }
        }
    }
}

// Merges the partitions of paged_attention's split rows. grid: (split rows, num_heads);
// block: head_dim. A split row is a decode row (its sequence's only query row), so its
// keys are its sequence's whole context, or with window > 0 the last `window` of them
// (paged_attention's partitions start at the window, so only those are read).
template <typename T>
__device__ void reduce_partitions(T* __restrict__ out, const float* __restrict__ part_acc,
                                  const float* __restrict__ part_ml,
                                  const uint32_t* __restrict__ split_rows,
                                  const uint32_t* __restrict__ part_start,
                                  const uint32_t* __restrict__ row_seq,
                                  const uint32_t* __restrict__ context_len, int num_heads,
                                  int head_dim, int part_size, int window) {
    const int r = split_rows[blockIdx.x], h = blockIdx.y;
    const int ctx = (int)context_len[row_seq[r]];
    const int keys = window > 0 ? min(ctx, window) : ctx;
    const int parts = (keys + part_size - 1) / part_size;
    const size_t first = part_start[r];
    float mx = -INFINITY;
    for (int p = 0; p < parts; p++) {
        const size_t i = (first + p) * num_heads + h;
        if (part_ml[i * 2 + 1] > 0.f) mx = fmaxf(mx, part_ml[i * 2]);
    }
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
        float sum = 0.f, a = 0.f;
        if (mx != -INFINITY) {
            for (int p = 0; p < parts; p++) {
                const size_t i = (first + p) * num_heads + h;
                const float l = part_ml[i * 2 + 1];
                if (l > 0.f) {
                    const float f = __expf(part_ml[i * 2] - mx);
                    sum += l * f;
                    a += part_acc[i * head_dim + c] * f;
                }
            }
        }
        out[((size_t)r * num_heads + h) * head_dim + c] = from_f<T>(sum > 0.f ? a / sum : 0.f);
    }
}

// Copies `len` elements from offset src to offset dst of one buffer (a KV block of one
// layer; the ranges never overlap). grid: any; block: any.
__device__ void copy_range(uint16_t* __restrict__ buf, size_t src, size_t dst, size_t len) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < len;
         i += (size_t)gridDim.x * blockDim.x) {
        buf[dst + i] = buf[src + i];
    }
}

// ---------------------------------------------------------------------------------------
// Entry points (C names, one per element type and head size).

#define ROPE(SUFFIX, T)                                                                    \
    extern "C" __global__ void wick_rope_##SUFFIX(                                         \
        const T* x, T* out, const uint32_t* positions, const float* inv_freq, int heads,  \
        int head_dim, int rot_dim, int interleaved, float scale) {                         \
        rope<T>(x, out, positions, inv_freq, heads, head_dim, rot_dim, interleaved, scale); \
    }

#define WRITE_KV(SUFFIX, T)                                                                \
    extern "C" __global__ void wick_write_kv_##SUFFIX(                                     \
        const T* k, const T* v, T* k_cache, T* v_cache, const uint32_t* slots,            \
        int kv_heads, int head_dim, int block_size) {                                      \
        write_kv<T>(k, v, k_cache, v_cache, slots, kv_heads, head_dim, block_size);       \
    }

// Thread blocks of paged_attention<T, D> that must fit on one SM at once (its registers
// are capped to fit): for head size 64, 7 (72 registers, as it used before soft-capping
// added tanhf to its inner loop; with no bound ptxas takes 76 on sm_90, 6 blocks).
template <int D>
struct DecodeMinBlocks {
    static constexpr int N = D == 64 ? 7 : 1;
};

#define PAGED_ATTENTION(SUFFIX, T, D)                                                      \
    extern "C" __global__ void __launch_bounds__(NWARPS * WARP, DecodeMinBlocks<D>::N)     \
        wick_paged_attention_##SUFFIX##_d##D(                                              \
            T* out, float* part_acc, float* part_ml, const T* q, const T* k_cache,         \
            const T* v_cache, const uint32_t* row_seq, const uint32_t* q_start,            \
            const uint32_t* q_len, const uint32_t* context_len,                            \
            const uint32_t* block_tables, const uint32_t* part_start, int max_blocks,      \
            int num_heads, int kv_heads, int block_size, int part_size, float scale,       \
            int window, float softcap) {                                                   \
        paged_attention<T, D>(out, part_acc, part_ml, q, k_cache, v_cache, row_seq,       \
                              q_start, q_len, context_len, block_tables, part_start,       \
                              max_blocks, num_heads, kv_heads, block_size, part_size,      \
                              scale, window, softcap);                                     \
    }

#define PREFILL_ATTENTION(SUFFIX, T, D)                                                    \
    extern "C" __global__ void __launch_bounds__(PF_WARPS * WARP)                          \
        wick_prefill_attention_##SUFFIX##_d##D(                                            \
            T* out, const T* q, const T* k_cache, const T* v_cache,                        \
            const uint32_t* q_start, const uint32_t* q_len, const uint32_t* context_len,   \
            const uint32_t* block_tables, int num_seqs, int max_blocks, int num_heads,     \
            int kv_heads, int block_size, float scale, int window, float softcap) {        \
        prefill_attention<T, D>(out, q, k_cache, v_cache, q_start, q_len, context_len,    \
                                block_tables, num_seqs, max_blocks, num_heads, kv_heads,  \
                                block_size, scale, window, softcap);                       \
    }

#define REDUCE(SUFFIX, T)                                                                  \
    extern "C" __global__ void wick_reduce_partitions_##SUFFIX(                            \
        T* out, const float* part_acc, const float* part_ml, const uint32_t* split_rows,   \
        const uint32_t* part_start, const uint32_t* row_seq, const uint32_t* context_len,  \
        int num_heads, int head_dim, int part_size, int window) {                          \
        reduce_partitions<T>(out, part_acc, part_ml, split_rows, part_start, row_seq,     \
                             context_len, num_heads, head_dim, part_size, window);        \
    }

ROPE(bf16, __nv_bfloat16)
ROPE(f16, __half)
WRITE_KV(bf16, __nv_bfloat16)
WRITE_KV(f16, __half)
PAGED_ATTENTION(bf16, __nv_bfloat16, 64)
PAGED_ATTENTION(bf16, __nv_bfloat16, 128)
PAGED_ATTENTION(bf16, __nv_bfloat16, 256)
PAGED_ATTENTION(f16, __half, 64)
PAGED_ATTENTION(f16, __half, 128)
PAGED_ATTENTION(f16, __half, 256)
PREFILL_ATTENTION(bf16, __nv_bfloat16, 64)
PREFILL_ATTENTION(bf16, __nv_bfloat16, 128)
PREFILL_ATTENTION(bf16, __nv_bfloat16, 256)
PREFILL_ATTENTION(f16, __half, 64)
PREFILL_ATTENTION(f16, __half, 128)
PREFILL_ATTENTION(f16, __half, 256)
REDUCE(bf16, __nv_bfloat16)
REDUCE(f16, __half)

extern "C" __global__ void wick_copy_range(uint16_t* buf, unsigned long long src,
                                           unsigned long long dst, unsigned long long len) {
    copy_range(buf, (size_t)src, (size_t)dst, (size_t)len);
}
