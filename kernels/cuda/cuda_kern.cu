/* cuda_kern.cu - CUDA twins of kernels/cpu/kern.c: cuBLAS GEMM, LayerNorm,
 * GELU, row softmax, add; device set-up and buffer helpers.  See
 * cuda_kern.h for the API and error conventions. */
#include "kernels/cuda/cuda_kern.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- module state (one device per process) ---------------------------- */

static int s_init = 0;
static int s_device = -1;
static int s_sync_each = 0; /* DM_CUDA_SYNC=1: synchronise after each op */
static int s_max_blocks = 65535;
static cudaStream_t s_stream = NULL;
static cublasHandle_t s_blas = NULL;

/* ---- error helpers ---------------------------------------------------- */

static int cu_err(DmErr *err, cudaError_t e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int cu_err(DmErr *err, cudaError_t e, const char *fmt, ...)
{
    char head[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    cudaGetLastError(); /* a failed call is also the "last error": don't let the next
                           launch check report it again */
    return dm_err(err, "%s: %s (%s)", head, cudaGetErrorString(e), cudaGetErrorName(e));
}

static int blas_err(DmErr *err, cublasStatus_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int blas_err(DmErr *err, cublasStatus_t st, const char *fmt, ...)
{
    char head[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    return dm_err(err, "%s: %s (%s)", head, cublasGetStatusString(st), cublasGetStatusName(st));
}

/* Evaluate a CUDA runtime call; on failure fill err with the formatted
 * context + the CUDA error string and return -1 from the caller. */
#define CU_TRY(call, ...)                                                                          \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return cu_err(err, e_, __VA_ARGS__);                                                   \
    } while (0)

#define NEED_INIT(fn)                                                                              \
    do {                                                                                           \
        if (!s_init)                                                                               \
            return dm_err(err, "%s: CUDA not initialised (call cuda_kern_init first)", fn);        \
    } while (0)

/* Before a kernel launch: clear a stale non-sticky error (from a call made
 * outside this file, e.g. inside NCCL) so that launched() reports only the
 * launch.  Sticky errors (a crashed kernel) come back from the launch. */
#define PRE_LAUNCH() ((void)cudaGetLastError())

/* After a kernel launch: report launch errors (bad configuration, no kernel
 * image for this GPU) and, with DM_CUDA_SYNC, execution errors too. */
static int launched(DmErr *err, const char *fn)
{
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return cu_err(err, e, "%s: kernel launch", fn);
    if (s_sync_each) {
        e = cudaStreamSynchronize(s_stream);
        if (e != cudaSuccess)
            return cu_err(err, e, "%s: cudaStreamSynchronize (DM_CUDA_SYNC)", fn);
    }
    return 0;
}

static unsigned grid_for(size_t n, unsigned block)
{
    size_t g = (n + block - 1) / block;
    if (g > (size_t)s_max_blocks)
        g = (size_t)s_max_blocks;
    return g ? (unsigned)g : 1u;
}

/* ---- kernels (internal linkage: other .cu files may reuse the names) --- */

namespace {

__global__ void k_noop(void) {}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum / max over the block (blockDim.x a multiple of 32, <= 1024); every
 * thread gets the result.  sh: 32 floats of shared memory. */
__device__ float block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* sh may still be read from a previous reduction */
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = lane < nw ? sh[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

__device__ float block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = lane < nw ? sh[lane] : -INFINITY;
        v = warp_max(v);
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

/* y[i, :] = bias for each of M rows. */
__global__ void k_fill_rows(float *__restrict__ y, size_t total, int N,
                            const float *__restrict__ bias)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = bias[i % (size_t)N];
}

/* One block per row; two passes (mean, then variance of x - mean) as the
 * CPU twin.  x and y may alias: each thread reads element i before writing
 * it, and all reads of the reductions finish at their __syncthreads. */
__global__ void k_layernorm(const float *x, int n, const float *__restrict__ g,
                            const float *__restrict__ b, float eps, float *y)
{
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * n;
    float *yr = y + (size_t)blockIdx.x * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += xr[i];
    float mean = block_sum(s, sh) / (float)n;
    float v = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float d = xr[i] - mean;
        v += d * d;
    }
    float var = block_sum(v, sh) / (float)n;
    float inv = 1.0f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        yr[i] = (xr[i] - mean) * inv * g[i] + b[i];
}

/* One block per row, in place.  fmaxf ignores NaN as the CPU's `>` does. */
__global__ void k_softmax_rows(float *x, int n)
{
    __shared__ float sh[32];
    float *xr = x + (size_t)blockIdx.x * n;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        m = fmaxf(m, xr[i]);
    m = block_max(m, sh);
    if (m == -INFINITY) { /* fully masked row: zeros (uniform across the block) */
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            xr[i] = 0.0f;
        return;
    }
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float e = expf(xr[i] - m);
        xr[i] = e;
        s += e;
    }
    float inv = 1.0f / block_sum(s, sh);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        xr[i] *= inv;
}

__global__ void k_gelu(float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752440f));
    }
}

/* No __restrict__: y == x (doubling) is allowed, as on the CPU. */
__global__ void k_add(float *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

/* Threads per row-block: a power of two >= n (min 32), at most 256. */
static unsigned row_block(int n)
{
    unsigned b = 32;
    while (b < (unsigned)n && b < 256)
        b <<= 1;
    return b;
}

} /* namespace */

/* ---- discovery, init -------------------------------------------------- */

extern "C" int cuda_available(char *why, size_t n)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        if (why && n) {
            /* Without any NVIDIA driver the runtime says "driver version is
             * insufficient"; say what is really missing. */
            const char *hint = "";
            if (e == cudaErrorInsufficientDriver) {
                void *h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
                if (h)
                    dlclose(h);
                else
                    hint = "; no NVIDIA driver: libcuda.so.1 not found";
            }
            snprintf(why, n, "cudaGetDeviceCount: %s (%s%s)", cudaGetErrorString(e),
                     cudaGetErrorName(e), hint);
        }
        cudaGetLastError(); /* clear it */
        return 0;
    }
    if (count <= 0) {
        if (why && n)
            snprintf(why, n, "cudaGetDeviceCount: 0 devices");
        return 0;
    }
    if (why && n)
        why[0] = '\0';
    return count;
}

extern "C" void cuda_kern_shutdown(void)
{
    if (s_blas)
        cublasDestroy(s_blas);
    if (s_stream)
        cudaStreamDestroy(s_stream);
    s_blas = NULL;
    s_stream = NULL;
    s_init = 0;
    s_device = -1;
}

extern "C" int cuda_kern_init_device(int device, DmErr *err)
{
    if (s_init) {
        if (device == s_device)
            return 0;
        return dm_err(err, "cuda_kern_init: already initialised on device %d (asked for %d)",
                      s_device, device);
    }
    int count = 0;
    CU_TRY(cudaGetDeviceCount(&count), "cuda_kern_init: cudaGetDeviceCount");
    if (device < 0 || device >= count)
        return dm_err(err, "cuda_kern_init: device %d out of range (%d device%s)", device, count,
                      count == 1 ? "" : "s");
    CU_TRY(cudaSetDevice(device), "cuda_kern_init: cudaSetDevice(%d)", device);
    cudaDeviceProp prop;
    CU_TRY(cudaGetDeviceProperties(&prop, device), "cuda_kern_init: cudaGetDeviceProperties(%d)",
           device);
    s_max_blocks = prop.multiProcessorCount > 0 ? prop.multiProcessorCount * 32 : 65535;
    if (s_max_blocks > 65535)
        s_max_blocks = 65535;
    CU_TRY(cudaStreamCreateWithFlags(&s_stream, cudaStreamNonBlocking),
           "cuda_kern_init: cudaStreamCreateWithFlags");
    s_device = device;
    cublasStatus_t st = cublasCreate(&s_blas);
    if (st != CUBLAS_STATUS_SUCCESS) {
        s_blas = NULL;
        cuda_kern_shutdown();
        return blas_err(err, st, "cuda_kern_init: cublasCreate");
    }
    /* Plain FP32 (no TF32 tensor-op math): results match the CPU to FP32
     * rounding; the tests' GEMM bound would catch TF32. */
    if ((st = cublasSetStream(s_blas, s_stream)) != CUBLAS_STATUS_SUCCESS ||
        (st = cublasSetMathMode(s_blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
        cuda_kern_shutdown();
        return blas_err(err, st, "cuda_kern_init: cublasSetStream/cublasSetMathMode");
    }
    /* A trivial launch finds a missing kernel image for this GPU now, not
     * in the middle of a model. */
    PRE_LAUNCH();
    k_noop<<<1, 1, 0, s_stream>>>();
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(s_stream);
    if (e != cudaSuccess) {
        cuda_kern_shutdown();
        return cu_err(err, e, "cuda_kern_init: test kernel on %s (sm_%d%d)", prop.name,
                      prop.major, prop.minor);
    }
    const char *se = getenv("DM_CUDA_SYNC");
    s_sync_each = se && *se && strcmp(se, "0") != 0;
    s_init = 1;
    return 0;
}

extern "C" int cuda_kern_init(DmErr *err) { return cuda_kern_init_device(0, err); }

extern "C" int cuda_kern_device(void) { return s_init ? s_device : -1; }

extern "C" void *cuda_kern_stream(void) { return s_init ? (void *)s_stream : NULL; }

extern "C" int cuda_kern_describe(char *buf, size_t n, DmErr *err)
{
    NEED_INIT("cuda_kern_describe");
    cudaDeviceProp prop;
    CU_TRY(cudaGetDeviceProperties(&prop, s_device),
           "cuda_kern_describe: cudaGetDeviceProperties(%d)", s_device);
    if (buf && n)
        snprintf(buf, n, "%s (sm_%d%d, %.1f GiB, %d SMs)", prop.name, prop.major, prop.minor,
                 (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0),
                 prop.multiProcessorCount);
    return 0;
}

/* ---- memory ----------------------------------------------------------- */

extern "C" int cuda_malloc(void **d, size_t bytes, DmErr *err)
{
    *d = NULL;
    NEED_INIT("cuda_malloc");
    if (bytes == 0)
        return 0;
    CU_TRY(cudaMalloc(d, bytes), "cuda_malloc: cudaMalloc(%zu bytes)", bytes);
    return 0;
}

extern "C" void cuda_free(void *d)
{
    if (d)
        cudaFree(d);
}

extern "C" int cuda_upload(void *d_dst, const void *src, size_t bytes, DmErr *err)
{
    NEED_INIT("cuda_upload");
    if (bytes == 0)
        return 0;
    CU_TRY(cudaMemcpyAsync(d_dst, src, bytes, cudaMemcpyHostToDevice, s_stream),
           "cuda_upload: cudaMemcpyAsync(%zu bytes, host to device)", bytes);
    CU_TRY(cudaStreamSynchronize(s_stream), "cuda_upload: cudaStreamSynchronize");
    return 0;
}

extern "C" int cuda_download(void *dst, const void *d_src, size_t bytes, DmErr *err)
{
    NEED_INIT("cuda_download");
    if (bytes == 0)
        return 0;
    CU_TRY(cudaMemcpyAsync(dst, d_src, bytes, cudaMemcpyDeviceToHost, s_stream),
           "cuda_download: cudaMemcpyAsync(%zu bytes, device to host)", bytes);
    CU_TRY(cudaStreamSynchronize(s_stream), "cuda_download: cudaStreamSynchronize");
    return 0;
}

extern "C" int cuda_copy_d2d(void *d_dst, const void *d_src, size_t bytes, DmErr *err)
{
    NEED_INIT("cuda_copy_d2d");
    if (bytes == 0)
        return 0;
    CU_TRY(cudaMemcpyAsync(d_dst, d_src, bytes, cudaMemcpyDeviceToDevice, s_stream),
           "cuda_copy_d2d: cudaMemcpyAsync(%zu bytes, device to device)", bytes);
    return s_sync_each ? launched(err, "cuda_copy_d2d") : 0;
}

extern "C" int cuda_memzero(void *d, size_t bytes, DmErr *err)
{
    NEED_INIT("cuda_memzero");
    if (bytes == 0)
        return 0;
    CU_TRY(cudaMemsetAsync(d, 0, bytes, s_stream), "cuda_memzero: cudaMemsetAsync(%zu bytes)",
           bytes);
    return s_sync_each ? launched(err, "cuda_memzero") : 0;
}

extern "C" int cuda_sync(DmErr *err)
{
    NEED_INIT("cuda_sync");
    CU_TRY(cudaStreamSynchronize(s_stream), "cuda_sync: cudaStreamSynchronize");
    return 0;
}

/* ---- GEMM ------------------------------------------------------------- */

/* cuBLAS is column-major.  A row-major [r, c] array with leading dim ld is
 * the column-major [c, r] array (its transpose) with the same ld, so the
 * row-major C = op(A) * op(B) is computed as the column-major
 * C^T = op(B)^T * op(A)^T: swap the operands and M <-> N. */
static int gemm_check(const char *fn, int M, int N, int K, int lda, int ldb, int ldc, int a_cols,
                      int b_cols, DmErr *err)
{
    if (M < 0 || N < 0 || K < 0)
        return dm_err(err, "%s: negative dimension (M=%d N=%d K=%d)", fn, M, N, K);
    if (lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) ||
        ldc < (N > 1 ? N : 1))
        return dm_err(err, "%s: leading dimension too small (M=%d N=%d K=%d lda=%d ldb=%d ldc=%d)",
                      fn, M, N, K, lda, ldb, ldc);
    return 0;
}

extern "C" int cuda_gemm_nt(int M, int N, int K, float alpha, const float *A, int lda,
                            const float *B, int ldb, float beta, float *C, int ldc, DmErr *err)
{
    NEED_INIT("cuda_gemm_nt");
    if (gemm_check("cuda_gemm_nt", M, N, K, lda, ldb, ldc, K, K, err))
        return -1;
    if (M == 0 || N == 0)
        return 0;
    /* C^T[N,M] = B[N,K] (col-major view B^T, transposed) * A^T[K,M] */
    PRE_LAUNCH();
    cublasStatus_t st = cublasSgemm(s_blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, B, ldb, A,
                                    lda, &beta, C, ldc);
    if (st != CUBLAS_STATUS_SUCCESS)
        return blas_err(err, st, "cuda_gemm_nt: cublasSgemm(M=%d N=%d K=%d)", M, N, K);
    return launched(err, "cuda_gemm_nt");
}

extern "C" int cuda_gemm_nn(int M, int N, int K, float alpha, const float *A, int lda,
                            const float *B, int ldb, float beta, float *C, int ldc, DmErr *err)
{
    NEED_INIT("cuda_gemm_nn");
    if (gemm_check("cuda_gemm_nn", M, N, K, lda, ldb, ldc, K, N, err))
        return -1;
    if (M == 0 || N == 0)
        return 0;
    /* C^T[N,M] = B^T[N,K] * A^T[K,M], both already in that layout */
    PRE_LAUNCH();
    cublasStatus_t st = cublasSgemm(s_blas, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &alpha, B, ldb, A,
                                    lda, &beta, C, ldc);
    if (st != CUBLAS_STATUS_SUCCESS)
        return blas_err(err, st, "cuda_gemm_nn: cublasSgemm(M=%d N=%d K=%d)", M, N, K);
    return launched(err, "cuda_gemm_nn");
}

extern "C" int cuda_linear(const float *x, int M, int K, const float *W, const float *bias, int N,
                           float *y, DmErr *err)
{
    NEED_INIT("cuda_linear");
    if (M < 0 || N < 0 || K < 0)
        return dm_err(err, "cuda_linear: negative dimension (M=%d K=%d N=%d)", M, K, N);
    if (M == 0 || N == 0)
        return 0;
    size_t total = (size_t)M * N;
    if (bias) {
        PRE_LAUNCH();
        k_fill_rows<<<grid_for(total, 256), 256, 0, s_stream>>>(y, total, N, bias);
        if (launched(err, "cuda_linear (bias)"))
            return -1;
    } else if (K == 0) {
        return cuda_memzero(y, total * sizeof(float), err);
    }
    if (K == 0)
        return 0;
    if (cuda_gemm_nt(M, N, K, 1.0f, x, K, W, K, bias ? 1.0f : 0.0f, y, N, err))
        return dm_err_prefix(err, "cuda_linear");
    return 0;
}

/* ---- row and elementwise ops ------------------------------------------ */

extern "C" int cuda_layernorm(const float *x, int rows, int n, const float *g, const float *b,
                              float eps, float *y, DmErr *err)
{
    NEED_INIT("cuda_layernorm");
    if (rows < 0 || n < 0)
        return dm_err(err, "cuda_layernorm: negative dimension (rows=%d n=%d)", rows, n);
    if (rows == 0 || n == 0)
        return 0;
    PRE_LAUNCH();
    k_layernorm<<<rows, row_block(n), 0, s_stream>>>(x, n, g, b, eps, y);
    return launched(err, "cuda_layernorm");
}

extern "C" int cuda_softmax_rows(float *x, int rows, int n, DmErr *err)
{
    NEED_INIT("cuda_softmax_rows");
    if (rows < 0 || n < 0)
        return dm_err(err, "cuda_softmax_rows: negative dimension (rows=%d n=%d)", rows, n);
    if (rows == 0 || n == 0)
        return 0;
    PRE_LAUNCH();
    k_softmax_rows<<<rows, row_block(n), 0, s_stream>>>(x, n);
    return launched(err, "cuda_softmax_rows");
}

extern "C" int cuda_gelu(float *x, size_t n, DmErr *err)
{
    NEED_INIT("cuda_gelu");
    if (n == 0)
        return 0;
    PRE_LAUNCH();
    k_gelu<<<grid_for(n, 256), 256, 0, s_stream>>>(x, n);
    return launched(err, "cuda_gelu");
}

extern "C" int cuda_add(float *y, const float *x, size_t n, DmErr *err)
{
    NEED_INIT("cuda_add");
    if (n == 0)
        return 0;
    PRE_LAUNCH();
    k_add<<<grid_for(n, 256), 256, 0, s_stream>>>(y, x, n);
    return launched(err, "cuda_add");
}
