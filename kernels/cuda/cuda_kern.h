/* cuda_kern.h - CUDA tensor operations on float32 row-major device arrays.
 *
 * Only present in CUDA=1 builds (DM_CUDA defined); plain C, callable from C
 * and C++ (no CUDA headers needed by callers).  Every operation has a CPU
 * twin in kernels/cpu/kern.h with the same argument order and semantics;
 * pointers named d_* / the float arrays of the ops are DEVICE pointers.
 *
 * Model: one process drives one device.  cuda_kern_init() selects the
 * device and creates one CUDA stream and one cuBLAS handle; all ops, copies
 * and collectives are enqueued on that stream in call order.  Ops return as
 * soon as the work is enqueued (0), so an error in a running kernel shows
 * up at the next synchronising call (cuda_download, cuda_sync); set
 * DM_CUDA_SYNC=1 in the environment to synchronise after every op and get
 * the error from the op that caused it.  Not thread-safe: call from one
 * thread (or serialise).
 *
 * Errors follow common/dm_error.h: 0 on success, -1 with a one-line DmErr
 * naming the function, the CUDA/cuBLAS/NCCL call and its error string,
 * e.g. "cuda_malloc: cudaMalloc(4096 bytes): out of memory
 * (cudaErrorMemoryAllocation)". */
#ifndef DM_CUDA_KERN_H
#define DM_CUDA_KERN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "common/dm_error.h" /* a C header without its own extern "C" guard */

/* ---- device discovery and set-up -------------------------------------- */

/* Number of usable CUDA devices (>0), or 0 when there is none or the
 * driver/runtime cannot be used; then `why` (if non-NULL, n > 0) receives
 * the reason, e.g. "cudaGetDeviceCount: no CUDA-capable device is detected
 * (cudaErrorNoDevice)".  Safe to call before cuda_kern_init, repeatedly. */
int cuda_available(char *why, size_t n);

/* Initialise on device 0 / on `device`: cudaSetDevice, create the stream
 * and the cuBLAS handle (FP32 math, no TF32).  A second call with the same
 * device is a no-op; with another device it fails (shut down first). */
int cuda_kern_init(DmErr *err);
int cuda_kern_init_device(int device, DmErr *err);
/* Release the stream and the cuBLAS handle (not the caller's buffers). */
void cuda_kern_shutdown(void);
/* Current device after init, else -1. */
int cuda_kern_device(void);
/* One line describing the device: "NVIDIA A100-SXM4-40GB (sm_80, 40 GiB,
 * 108 SMs)"; -1 if not initialised or the query fails. */
int cuda_kern_describe(char *buf, size_t n, DmErr *err);
/* The library's cudaStream_t, as void * (NULL before init). */
void *cuda_kern_stream(void);

/* ---- device memory ---------------------------------------------------- */

/* *d = device allocation of `bytes` (bytes == 0 gives *d = NULL, 0). */
int cuda_malloc(void **d, size_t bytes, DmErr *err);
/* Free a cuda_malloc buffer; NULL is ignored.  Synchronises the device. */
void cuda_free(void *d);
/* Host -> device, device -> host (both wait for completion, so the host
 * buffer may be reused / read on return), device -> device (enqueued). */
int cuda_upload(void *d_dst, const void *src, size_t bytes, DmErr *err);
int cuda_download(void *dst, const void *d_src, size_t bytes, DmErr *err);
int cuda_copy_d2d(void *d_dst, const void *d_src, size_t bytes, DmErr *err);
/* Zero `bytes` bytes of device memory (enqueued). */
int cuda_memzero(void *d, size_t bytes, DmErr *err);
/* Wait for everything enqueued so far; reports asynchronous errors. */
int cuda_sync(DmErr *err);

/* ---- operations (twins of kern.h; all pointers are device pointers) --- */

/* y[M,N] = x[M,K] * W[N,K]^T (+ bias[N] if non-NULL); cuBLAS sgemm.  y must
 * not alias x, W or bias. */
int cuda_linear(const float *x, int M, int K, const float *W, const float *bias, int N, float *y,
                DmErr *err);
/* C[M,N] = alpha * A[M,K] * B^T (B is [N,K]) + beta * C, row-major with
 * leading dims (lda >= K, ldb >= K, ldc >= N). */
int cuda_gemm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc, DmErr *err);
/* C[M,N] = alpha * A[M,K] * B[K,N] + beta * C (lda >= K, ldb >= N, ldc >= N). */
int cuda_gemm_nn(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc, DmErr *err);
/* LayerNorm over the last dim as kern_layernorm (biased variance, eps inside
 * the sqrt); x and y may alias. */
int cuda_layernorm(const float *x, int rows, int n, const float *g, const float *b, float eps,
                   float *y, DmErr *err);
/* Exact (erf) GELU in place. */
int cuda_gelu(float *x, size_t n, DmErr *err);
/* Row softmax in place (max-subtracted); a row that is all -inf becomes
 * zeros, as kern_softmax_rows. */
int cuda_softmax_rows(float *x, int rows, int n, DmErr *err);
/* y += x */
int cuda_add(float *y, const float *x, size_t n, DmErr *err);

/* ---- NCCL (multi-GPU all-reduce) -------------------------------------- */

/* Opaque copy of ncclUniqueId: rank 0 creates it, the caller ships the
 * bytes to every rank (MPI, socket, file), every rank passes it to
 * cuda_nccl_init. */
#define DM_NCCL_ID_BYTES 128
typedef struct DmNcclId {
    char bytes[DM_NCCL_ID_BYTES];
} DmNcclId;
typedef struct DmNcclComm DmNcclComm;

/* NCCL library version as an integer (e.g. 22809) into *version. */
int cuda_nccl_version(int *version, DmErr *err);
int cuda_nccl_unique_id(DmNcclId *id, DmErr *err);
/* Collective: every rank of `nranks` calls it with its `rank` and the same
 * id, after cuda_kern_init_device on its own device.  Blocks until all
 * ranks have joined. */
int cuda_nccl_init(DmNcclComm **comm, int nranks, int rank, const DmNcclId *id, DmErr *err);
/* recv[i] = sum over ranks of send[i], float32, `count` elements, on the
 * library stream; send == recv (in place) is allowed.  Waits for the result
 * (polling for NCCL asynchronous errors, so a dead peer is reported rather
 * than hanging forever only if NCCL detects it; on error the communicator
 * is aborted and must be destroyed). */
int cuda_nccl_allreduce_sum(DmNcclComm *comm, const float *d_send, float *d_recv, size_t count,
                            DmErr *err);
int cuda_nccl_rank(const DmNcclComm *comm);
int cuda_nccl_size(const DmNcclComm *comm);
/* Finalize + destroy (or just free an aborted one); NULL is ignored. */
void cuda_nccl_destroy(DmNcclComm *comm);

#ifdef __cplusplus
}
#endif

#endif
