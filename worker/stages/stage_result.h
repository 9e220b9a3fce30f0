/* stage_result.h - what every worker stage does the same way with a shard
 * and its Result: walk the pages, record a failed item as an ErrorRecord,
 * free what it put in the Result. */
#ifndef DM_STAGE_RESULT_H
#define DM_STAGE_RESULT_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/dm_error.h"
#include "records.pb-c.h"

/* One page of a stage: its records (or error records) appended to res;
 * -1 only when the whole shard must fail (out of memory). */
typedef int (*StagePageFn)(void *stage, const Docmint__Page *pg, Docmint__Result *res,
                           DmErr *err);

/* Every page of shard in order, stopping between pages when *cancel (may
 * be NULL) becomes non-zero (-1, "cancelled"). */
int stage_shard(void *stage, StagePageFn page, const Docmint__Shard *shard, Docmint__Result *res,
                const atomic_int *cancel, DmErr *err);

/* Append an ErrorRecord of stage for question qid: item "QID", or
 * "QID/ANSWER" when answer >= 0.  -1 when out of memory. */
int stage_add_error(Docmint__Result *res, const char *stage, int64_t qid, int answer,
                    const char *reason);

/* Free a string of a record unless it is protobuf-c's shared empty one. */
void stage_free_str(char *s);

/* Free res's error records and their array (n_errors back to 0). */
void stage_free_errors(Docmint__Result *res);

#endif
