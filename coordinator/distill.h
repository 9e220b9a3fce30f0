/* distill.h - the distill stage: data-parallel training of a student's
 * decoder (or the whole model, "train": "all") from a teacher-logit store
 * or, without one, on the corpus's gold answers (cross-entropy alone),
 * SPMD over the ranks of the job.
 *
 * Every rank loads the student, the store's item list and the corpus; each
 * epoch is a permutation of the items seeded by (seed, epoch); step s of
 * an epoch takes items [s*B, (s+1)*B) of it and rank r computes its slice
 * [r*B/R, (r+1)*B/R).  Each item's gradient is scaled by its loss
 * positions over the positions of the whole global batch (the token mean
 * a padded batch of B gives in PyTorch), so the summed gradient does not
 * depend on how the batch is split over ranks.  One all-reduce per step
 * sums the gradient buffer; then every rank clips the global norm and
 * takes the same AdamW step.  Rank 0 writes train.jsonl, the checkpoints,
 * the final student and losses.png. */
#ifndef DM_DISTILL_H
#define DM_DISTILL_H

#include "kernels/comm/coll.h"
#include "coordinator/job.h"

/* Run the job (stage "distill") on every rank of coll; threads: compute
 * threads of this rank.  Returns the process exit status (0 done or
 * nothing to do, 1 failed); the message is printed by rank 0, or by the
 * rank that failed alone. */
int distill_run(const Job *job, Coll *coll, int threads, int quiet);

/* Learning rate at step s (0-based) of total, as transformers'
 * get_{linear,cosine,constant}_schedule_with_warmup. */
double distill_lr(const DistillSpec *d, long s, long total);

/* Epoch permutation of n items: perm[i] for seed and epoch. */
void distill_permutation(uint64_t seed, long epoch, int n, int *perm);

/* Reorder perm (n item indices) so that the items of one page are
 * contiguous: pages in the order of their first item in perm, a page's
 * items in their order in perm.  page_of[i] is item i's page, 0 <=
 * page_of[i] < npages.  work: room for n + 2 * npages + 1 ints. */
void distill_group_pages(int n, int *perm, const int *page_of, int npages, int *work);

#endif
