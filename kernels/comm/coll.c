/* coll.c - single-process, MPI and NCCL collectives (coll.h). */
#include "kernels/comm/coll.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef DM_CUDA
#include "kernels/cuda/cuda_kern.h"
#endif

typedef enum { S_SINGLE, S_MPI, S_NCCL } S_Kind;

struct Coll {
    MPI_Comm comm;
    int rank, size;
    S_Kind kind;
    char note[256];
    /* all ranks on one node: float sums through a shared-memory window */
    int one_node;
    MPI_Win win;
    float *seg0;       /* rank 0's segment; segment r at seg0 + r * seg_cap */
    size_t seg_cap;    /* floats per segment, 0: no window */
#ifdef DM_CUDA
    DmNcclComm *nccl;
    float *d_buf;      /* device staging buffer of the all-reduce */
    size_t d_cap;      /* floats */
#endif
};

/* MPI counts are int: large buffers go in chunks. */
#define S_CHUNK ((size_t)1 << 30)

static int s_mpi_err(DmErr *err, int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "error %d", rc);
    return dm_err(err, "%s: %s", what, msg);
}

#ifdef DM_CUDA
/* NCCL on this rank's GPU, when every rank has one; 0 when set up, 1 when
 * MPI is to be used (c->note says why), -1 on error. */
static int s_try_nccl(Coll *c, DmErr *err)
{
    char why[200] = "";
    int ndev = cuda_available(why, sizeof why);
    int have = ndev > 0, all = 0;
    MPI_Allreduce(&have, &all, 1, MPI_INT, MPI_MIN, c->comm);
    if (!all) {
        snprintf(c->note, sizeof c->note, "built with CUDA but %s: using MPI for the all-reduce",
                 have ? "another rank has no usable GPU" : why);
        return 1;
    }
    MPI_Comm local;
    int lrank = 0;
    MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &lrank);
    MPI_Comm_free(&local);
    int ok = cuda_kern_init_device(lrank % ndev, err) == 0;
    DmNcclId id;
    memset(&id, 0, sizeof id);
    if (c->rank == 0 && ok)
        ok = cuda_nccl_unique_id(&id, err) == 0;
    int all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, c->comm);
    if (!all_ok)
        return ok ? dm_err(err, "NCCL set-up failed on another rank") : -1;
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, c->comm);
    if (cuda_nccl_init(&c->nccl, c->size, c->rank, &id, err))
        return -1;
    c->kind = S_NCCL;
    return 0;
}
#endif

int coll_open(MPI_Comm comm, CollWant want, Coll **out, DmErr *err)
{
    *out = NULL;
    Coll *c = calloc(1, sizeof *c);
    if (!c)
        return dm_err(err, "coll_open: out of memory");
    c->comm = comm;
    MPI_Comm_rank(comm, &c->rank);
    MPI_Comm_size(comm, &c->size);
    c->kind = c->size == 1 ? S_SINGLE : S_MPI;
    if (c->size > 1) {
        MPI_Comm local;
        int lsize = 0, all = 0;
        MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &local);
        MPI_Comm_size(local, &lsize);
        MPI_Comm_free(&local);
        int mine = lsize == c->size && !(getenv("DOCMINT_COLL") && !strcmp(getenv("DOCMINT_COLL"), "mpi"));
        MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, comm);
        c->one_node = all;
    }
#ifdef DM_CUDA
    if (c->size > 1 && want == COLL_AUTO) {
        int rc = s_try_nccl(c, err);
        if (rc < 0) {
            free(c);
            return dm_err_prefix(err, "coll_open");
        }
    }
#else
    (void)want;
#endif
    *out = c;
    return 0;
}

void coll_close(Coll **pc)
{
    Coll *c = *pc;
    if (!c)
        return;
    if (c->seg_cap) {
        MPI_Win_unlock_all(c->win);
        MPI_Win_free(&c->win);
    }
#ifdef DM_CUDA
    cuda_free(c->d_buf);
    cuda_nccl_destroy(c->nccl);
#endif
    free(c);
    *pc = NULL;
}

int coll_rank(const Coll *c) { return c->rank; }
int coll_size(const Coll *c) { return c->size; }
const char *coll_note(const Coll *c) { return c->note; }

const char *coll_backend(const Coll *c)
{
    return c->kind == S_SINGLE ? "single" : c->kind == S_NCCL ? "nccl" : c->one_node ? "mpi-shm" : "mpi";
}

#ifdef DM_CUDA
static int s_nccl_sum(Coll *c, float *buf, size_t n, DmErr *err)
{
    if (n > c->d_cap) {
        cuda_free(c->d_buf);
        c->d_buf = NULL;
        c->d_cap = 0;
        if (cuda_malloc((void **)&c->d_buf, n * sizeof(float), err))
            return -1;
        c->d_cap = n;
    }
    if (cuda_upload(c->d_buf, buf, n * sizeof(float), err) ||
        cuda_nccl_allreduce_sum(c->nccl, c->d_buf, c->d_buf, n, err) ||
        cuda_download(buf, c->d_buf, n * sizeof(float), err))
        return -1;
    return 0;
}
#endif

/* The window of n floats per rank (collective; every rank asks for the
 * same n, since the callers all-reduce the same buffer). */
static int s_window(Coll *c, size_t n, DmErr *err)
{
    if (n <= c->seg_cap)
        return 0;
    if (c->seg_cap) {
        MPI_Win_unlock_all(c->win);
        MPI_Win_free(&c->win);
        c->seg_cap = 0;
    }
    float *mine = NULL;
    int rc = MPI_Win_allocate_shared((MPI_Aint)(n * sizeof(float)), sizeof(float), MPI_INFO_NULL,
                                     c->comm, &mine, &c->win);
    if (rc != MPI_SUCCESS)
        return s_mpi_err(err, rc, "coll_allreduce_sum: MPI_Win_allocate_shared");
    MPI_Aint sz;
    int du;
    MPI_Win_shared_query(c->win, 0, &sz, &du, &c->seg0);
    MPI_Win_lock_all(MPI_MODE_NOCHECK, c->win);
    c->seg_cap = n;
    /* Segments are contiguous unless the implementation says otherwise:
     * check instead of assuming. */
    for (int r = 1; r < c->size; r++) {
        float *p;
        MPI_Win_shared_query(c->win, r, &sz, &du, &p);
        if (p != c->seg0 + (size_t)r * n)
            return dm_err(err, "coll_allreduce_sum: shared window segments are not contiguous");
    }
    return 0;
}

static int s_sync(Coll *c, DmErr *err)
{
    MPI_Win_sync(c->win);
    int rc = MPI_Barrier(c->comm);
    MPI_Win_sync(c->win);
    return rc == MPI_SUCCESS ? 0 : s_mpi_err(err, rc, "coll_allreduce_sum: MPI_Barrier");
}

/* One node: every rank copies its buffer into its segment, sums its slice
 * of all segments in rank order into rank 0's segment, and copies the
 * result back.  Three barriers instead of the thousands of small hand-offs
 * of a message-passing all-reduce through shared memory (each of which
 * waits for the peer to be scheduled on a busy node); every rank reads the
 * same bits. */
static int s_shm_sum(Coll *c, float *buf, size_t n, DmErr *err)
{
    if (s_window(c, n, err))
        return -1;
    size_t cap = c->seg_cap;
    memcpy(c->seg0 + (size_t)c->rank * cap, buf, n * sizeof(float));
    if (s_sync(c, err))
        return -1;
    size_t lo = n * (size_t)c->rank / (size_t)c->size, hi = n * (size_t)(c->rank + 1) / (size_t)c->size;
    for (int r = 1; r < c->size; r++) {
        const float *src = c->seg0 + (size_t)r * cap;
        for (size_t i = lo; i < hi; i++)
            c->seg0[i] += src[i];
    }
    if (s_sync(c, err))
        return -1;
    memcpy(buf, c->seg0, n * sizeof(float));
    return s_sync(c, err); /* rank 0's segment is rewritten by the next call */
}

int coll_allreduce_sum(Coll *c, float *buf, size_t n, DmErr *err)
{
    if (c->kind == S_SINGLE || n == 0)
        return 0;
#ifdef DM_CUDA
    if (c->kind == S_NCCL)
        return s_nccl_sum(c, buf, n, err);
#endif
    if (c->one_node)
        return s_shm_sum(c, buf, n, err);
    for (size_t off = 0; off < n; off += S_CHUNK) {
        int cnt = (int)(n - off < S_CHUNK ? n - off : S_CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, cnt, MPI_FLOAT, MPI_SUM, c->comm);
        if (rc != MPI_SUCCESS)
            return s_mpi_err(err, rc, "coll_allreduce_sum: MPI_Allreduce");
    }
    return 0;
}

int coll_allreduce_sum_f64(Coll *c, double *buf, int n, DmErr *err)
{
    if (c->kind == S_SINGLE || n == 0)
        return 0;
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, c->comm);
    return rc == MPI_SUCCESS ? 0 : s_mpi_err(err, rc, "coll_allreduce_sum_f64: MPI_Allreduce");
}

int coll_allgather_u64(Coll *c, uint64_t v, uint64_t *all, DmErr *err)
{
    if (c->kind == S_SINGLE) {
        all[0] = v;
        return 0;
    }
    int rc = MPI_Allgather(&v, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, c->comm);
    return rc == MPI_SUCCESS ? 0 : s_mpi_err(err, rc, "coll_allgather_u64: MPI_Allgather");
}

int coll_barrier(Coll *c, DmErr *err)
{
    if (c->kind == S_SINGLE)
        return 0;
    int rc = MPI_Barrier(c->comm);
    return rc == MPI_SUCCESS ? 0 : s_mpi_err(err, rc, "coll_barrier: MPI_Barrier");
}

int coll_bcast(Coll *c, void *buf, size_t bytes, DmErr *err)
{
    if (c->kind == S_SINGLE || bytes == 0)
        return 0;
    for (size_t off = 0; off < bytes; off += S_CHUNK) {
        int cnt = (int)(bytes - off < S_CHUNK ? bytes - off : S_CHUNK);
        int rc = MPI_Bcast((char *)buf + off, cnt, MPI_BYTE, 0, c->comm);
        if (rc != MPI_SUCCESS)
            return s_mpi_err(err, rc, "coll_bcast: MPI_Bcast");
    }
    return 0;
}
