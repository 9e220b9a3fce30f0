/* coll.h - the collectives of data-parallel training behind one small
 * interface, with three implementations chosen at open:
 *   - single: one process, every operation is the identity;
 *   - mpi:    MPI_Allreduce / MPI_Allgather over the given communicator;
 *             when every rank is on one node the float sum goes through an
 *             MPI shared-memory window instead ("mpi-shm": each rank sums
 *             its slice of all ranks' buffers, three barriers a call);
 *             DOCMINT_COLL=mpi in the environment keeps MPI_Allreduce;
 *   - nccl:   (CUDA=1 builds with a GPU on every rank) ncclAllReduce of
 *             the float buffer on the rank's GPU (rank's local index
 *             modulo the node's devices), the communicator bootstrapped
 *             over MPI (ncclGetUniqueId on rank 0, MPI_Bcast).  The small
 *             control operations (hash gather, broadcast) stay on MPI.
 * A CUDA=1 build without a usable GPU on some rank says why on stderr
 * (rank 0) and uses MPI: every rank must pick the same implementation, so
 * the choice is agreed with an MPI_Allreduce.
 *
 * Sums are in float32; MPI's and NCCL's reduction orders give every rank
 * the same bits (the callers still check it: coll_same_u64). */
#ifndef DM_COLL_H
#define DM_COLL_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "common/dm_error.h"

typedef struct Coll Coll;

typedef enum { COLL_AUTO = 0, COLL_MPI = 1 } CollWant;

/* Open over comm (MPI must be initialised).  COLL_AUTO takes NCCL when
 * built with CUDA and every rank has a GPU, else MPI (single for one
 * rank); COLL_MPI never uses NCCL.  Collective: every rank calls it. */
int coll_open(MPI_Comm comm, CollWant want, Coll **out, DmErr *err);
void coll_close(Coll **c);

int coll_rank(const Coll *c);
int coll_size(const Coll *c);
/* "single", "mpi", "mpi-shm" or "nccl". */
const char *coll_backend(const Coll *c);
/* Why a CUDA build did not use NCCL ("" otherwise). */
const char *coll_note(const Coll *c);

/* buf[i] = sum over ranks of buf[i] (float32, in place). */
int coll_allreduce_sum(Coll *c, float *buf, size_t n, DmErr *err);
/* Same for a few doubles (statistics). */
int coll_allreduce_sum_f64(Coll *c, double *buf, int n, DmErr *err);
/* Gather one 64-bit value from every rank into all[size]. */
int coll_allgather_u64(Coll *c, uint64_t v, uint64_t *all, DmErr *err);
/* Wait until every rank is here (timing: separates waiting for the
 * slowest rank from the transfer of the all-reduce that follows). */
int coll_barrier(Coll *c, DmErr *err);
/* Broadcast bytes from rank 0. */
int coll_bcast(Coll *c, void *buf, size_t bytes, DmErr *err);

#endif
