// Streaming-read bandwidth of this machine, the roofline for CPU decode (every weight is
// read once per token): sums a 1 GiB buffer with AVX-512 loads on 1 and 2 threads and
// prints the best of 5 runs. Build and run:
//     gcc -O3 -march=native -fopenmp scripts/membw.c -o /tmp/membw && /tmp/membw
// Decode's effective rate is the model's bytes times tokens per second (wick bench).
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    size_t n = (size_t)1 << 30;
    char *p = aligned_alloc(64, n);
    if (!p) return 1;
    memset(p, 1, n);
    int max_threads = omp_get_num_procs();
    for (int threads = 1; threads <= max_threads; threads *= 2) {
        double best = 0;
        for (int rep = 0; rep < 5; rep++) {
            double t = omp_get_wtime();
            __m512i total = _mm512_setzero_si512();
#pragma omp parallel num_threads(threads)
            {
                __m512i a = _mm512_setzero_si512(), b = a;
#pragma omp for
                for (size_t i = 0; i < n; i += 128) {
                    a = _mm512_add_epi32(a, _mm512_load_si512(p + i));
                    b = _mm512_add_epi32(b, _mm512_load_si512(p + i + 64));
                }
#pragma omp critical
                total = _mm512_add_epi32(total, _mm512_add_epi32(a, b));
            }
            double gbs = n / (omp_get_wtime() - t) / 1e9;
            if (gbs > best) best = gbs;
            volatile int sink = _mm512_reduce_add_epi32(total);
            (void)sink;
        }
        printf("threads %d: %.1f GB/s read\n", threads, best);
    }
    free(p);
    return 0;
}
