/* cuda_nccl.cu - minimal NCCL wrapper: unique id, communicator per rank,
 * float32 sum all-reduce on the cuda_kern stream.  The collectives layer
 * (MPI / single-process / NCCL) is built on top of this later. */
#include "kernels/cuda/cuda_kern.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static_assert(sizeof(ncclUniqueId) == DM_NCCL_ID_BYTES, "DM_NCCL_ID_BYTES != ncclUniqueId size");

struct DmNcclComm {
    ncclComm_t comm;
    int rank, nranks;
    int aborted; /* ncclCommAbort already freed comm */
};

/* "<context>: <ncclGetErrorString> (<ncclGetLastError detail>)" */
static int nccl_err(DmErr *err, ncclResult_t r, ncclComm_t comm, const char *context)
{
    const char *detail = ncclGetLastError(comm);
    if (detail && *detail)
        return dm_err(err, "%s: %s (%s)", context, ncclGetErrorString(r), detail);
    return dm_err(err, "%s: %s", context, ncclGetErrorString(r));
}

extern "C" int cuda_nccl_version(int *version, DmErr *err)
{
    ncclResult_t r = ncclGetVersion(version);
    if (r != ncclSuccess)
        return nccl_err(err, r, NULL, "cuda_nccl_version: ncclGetVersion");
    return 0;
}

extern "C" int cuda_nccl_unique_id(DmNcclId *id, DmErr *err)
{
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return nccl_err(err, r, NULL, "cuda_nccl_unique_id: ncclGetUniqueId");
    memcpy(id->bytes, u.internal, sizeof id->bytes);
    return 0;
}

extern "C" int cuda_nccl_init(DmNcclComm **out, int nranks, int rank, const DmNcclId *id,
                              DmErr *err)
{
    *out = NULL;
    int dev = cuda_kern_device();
    if (dev < 0)
        return dm_err(err, "cuda_nccl_init: CUDA not initialised (call cuda_kern_init_device "
                           "first)");
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return dm_err(err, "cuda_nccl_init: rank %d out of range for %d ranks", rank, nranks);
    cudaError_t ce = cudaSetDevice(dev); /* NCCL binds the communicator to the current device */
    if (ce != cudaSuccess)
        return dm_err(err, "cuda_nccl_init: cudaSetDevice(%d): %s (%s)", dev,
                      cudaGetErrorString(ce), cudaGetErrorName(ce));
    ncclUniqueId u;
    memcpy(u.internal, id->bytes, sizeof u.internal);
    DmNcclComm *c = (DmNcclComm *)calloc(1, sizeof *c);
    if (!c)
        return dm_err(err, "cuda_nccl_init: out of memory");
    ncclResult_t r = ncclCommInitRank(&c->comm, nranks, u, rank);
    if (r != ncclSuccess) {
        char ctx[128];
        snprintf(ctx, sizeof ctx, "cuda_nccl_init: ncclCommInitRank(rank %d of %d, device %d)",
                 rank, nranks, dev);
        free(c);
        return nccl_err(err, r, NULL, ctx);
    }
    c->rank = rank;
    c->nranks = nranks;
    *out = c;
    return 0;
}

extern "C" int cuda_nccl_allreduce_sum(DmNcclComm *c, const float *d_send, float *d_recv,
                                       size_t count, DmErr *err)
{
    if (!c || c->aborted)
        return dm_err(err, "cuda_nccl_allreduce_sum: %s communicator",
                      c ? "aborted" : "no");
    cudaStream_t stream = (cudaStream_t)cuda_kern_stream();
    if (!stream)
        return dm_err(err, "cuda_nccl_allreduce_sum: CUDA not initialised");
    if (count == 0)
        return 0;
    ncclResult_t r = ncclAllReduce(d_send, d_recv, count, ncclFloat32, ncclSum, c->comm, stream);
    if (r != ncclSuccess) {
        char ctx[128];
        snprintf(ctx, sizeof ctx, "cuda_nccl_allreduce_sum: ncclAllReduce(%zu floats, rank %d of %d)",
                 count, c->rank, c->nranks);
        return nccl_err(err, r, c->comm, ctx);
    }
    /* Wait by polling, so an asynchronous NCCL error (peer gone, network
     * failure) aborts the communicator instead of blocking forever in
     * cudaStreamSynchronize. */
    for (unsigned spin = 0;; spin++) {
        cudaError_t e = cudaStreamQuery(stream);
        if (e == cudaSuccess)
            return 0;
        if (e != cudaErrorNotReady)
            return dm_err(err, "cuda_nccl_allreduce_sum: cudaStreamQuery: %s (%s)",
                          cudaGetErrorString(e), cudaGetErrorName(e));
        ncclResult_t ae = ncclSuccess;
        r = ncclCommGetAsyncError(c->comm, &ae);
        if (r == ncclSuccess && ae != ncclSuccess && ae != ncclInProgress) {
            char ctx[160];
            snprintf(ctx, sizeof ctx,
                     "cuda_nccl_allreduce_sum: asynchronous NCCL error (rank %d of %d; "
                     "communicator aborted)",
                     c->rank, c->nranks);
            nccl_err(err, ae, c->comm, ctx);
            ncclCommAbort(c->comm);
            c->aborted = 1;
            return -1;
        }
        if (spin > 1000) {
            struct timespec ts = {0, 50 * 1000}; /* 50 us */
            nanosleep(&ts, NULL);
        }
    }
}

extern "C" int cuda_nccl_rank(const DmNcclComm *c) { return c ? c->rank : -1; }
extern "C" int cuda_nccl_size(const DmNcclComm *c) { return c ? c->nranks : 0; }

extern "C" void cuda_nccl_destroy(DmNcclComm *c)
{
    if (!c)
        return;
    if (!c->aborted) {
        ncclCommFinalize(c->comm);
        ncclCommDestroy(c->comm);
    }
    free(c);
}
