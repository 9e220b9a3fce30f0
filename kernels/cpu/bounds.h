/* bounds.h - the machine's limits, measured at run time, so timings of the
 * model can be stated as fractions of what this machine can do:
 *
 *  - sgemm GFLOP/s through kern_gemm_nt (the BLAS the model uses);
 *  - memory read bandwidth (a read-only sum over a buffer much larger than
 *    the caches, on n threads);
 *  - the fp32 FMA peak of the vector units (register-only FMA chains on n
 *    threads), for AVX-512 and AVX2 where the CPU has them, and the bf16
 *    dot-product peak (vdpbf16ps chains) where it has AVX512-BF16.
 *
 * GFLOP/s and GB/s are 1e9 per second.  Each measurement warms up once and
 * returns the best of `reps` timed runs. */
#ifndef DM_BOUNDS_H
#define DM_BOUNDS_H

#include <stddef.h>

#include "common/dm_error.h"

/* C[M,N] = A[M,K] * B[N,K]^T on random data: best GFLOP/s (2*M*N*K flops). */
int bound_sgemm(int M, int N, int K, int reps, double *gflops, DmErr *err);

/* The encoder's GEMM backend (kern_gemm, packed weights; bf16 or float32)
 * on the five linears of a Swin stage of each dim C in dims (q|k|v [3C, C],
 * proj [C, C], fc1 [4C, C], fc2 [C, 4C], merge [2C, 4C]), M rows each:
 * total flops over the sum of each shape's best time. */
int bound_encoder_gemm(const int *dims, int ndims, int M, int bf16, int reps, double *gflops,
                       DmErr *err);

/* Read bandwidth over `bytes` (rounded down to 4 KiB) with nthreads threads
 * (the caller's thread is one of them): the better of a plain sequential
 * read and one that also requests the data 1 KiB ahead, non-temporally. */
int bound_read_bandwidth(size_t bytes, int nthreads, int reps, double *gbps, DmErr *err);

/* FMA peak in GFLOP/s (an FMA counts 2 flops).  isa: "avx512f" or "avx2",
 * or "avx512bf16" for the bfloat16 dot-product peak (vdpbf16ps: 32
 * products summed into 16 float32 lanes, 64 flops).
 * Runs are short (a few ms) and there are 20 * reps of them, so that on a
 * shared machine the best one had its cores to itself.
 * Returns 0 and sets *gflops = 0 when the CPU lacks the ISA. */
int bound_fma_peak(const char *isa, int nthreads, int reps, double *gflops, DmErr *err);

/* What ran: the BLAS library's build string, its core (kernel set) name,
 * its thread count and threading model ("pthreads", "OpenMP", "serial"). */
typedef struct BlasInfo {
    const char *config;
    const char *corename;
    int threads;
    const char *parallel;
} BlasInfo;
void bound_blas_info(BlasInfo *bi);

/* CPU vector features the running CPU reports, space-separated, e.g.
 * "sse4.2 avx avx2 fma avx512f avx512bw avx512vl avx512vnni avx512bf16". */
void bound_cpu_features(char *buf, size_t n);

#endif
