/* stage_result.c - the shard walk and error records shared by the worker
 * stages (stage_result.h). */
#include "worker/stages/stage_result.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int stage_shard(void *stage, StagePageFn page, const Docmint__Shard *shard, Docmint__Result *res,
                const atomic_int *cancel, DmErr *err)
{
    res->shard_id = shard->shard_id;
    res->lease_id = shard->lease_id;
    res->lease_token = shard->lease_token; /* borrowed: the shard outlives the result's send */
    for (size_t p = 0; p < shard->n_pages; p++) {
        if (cancel && atomic_load(cancel))
            return dm_err(err, "cancelled");
        if (page(stage, shard->pages[p], res, err))
            return -1;
    }
    return 0;
}

int stage_add_error(Docmint__Result *res, const char *stage, int64_t qid, int answer,
                    const char *reason)
{
    Docmint__ErrorRecord **v = realloc(res->errors, (res->n_errors + 1) * sizeof *v);
    if (!v)
        return -1;
    res->errors = v;
    Docmint__ErrorRecord *e = malloc(sizeof *e);
    if (!e)
        return -1;
    docmint__error_record__init(e);
    res->errors[res->n_errors++] = e;
    char item[48];
    if (answer < 0)
        snprintf(item, sizeof item, "%" PRId64, qid);
    else
        snprintf(item, sizeof item, "%" PRId64 "/%d", qid, answer);
    e->item = strdup(item);
    e->stage = strdup(stage);
    e->reason = strdup(reason);
    e->question_id = qid;
    return e->item && e->stage && e->reason ? 0 : -1;
}

void stage_free_str(char *s)
{
    if (s && s != protobuf_c_empty_string)
        free(s);
}

void stage_free_errors(Docmint__Result *res)
{
    for (size_t i = 0; i < res->n_errors; i++) {
        Docmint__ErrorRecord *e = res->errors[i];
        if (!e)
            continue;
        stage_free_str(e->item);
        stage_free_str(e->stage);
        stage_free_str(e->reason);
        stage_free_str(e->document);
        free(e);
    }
    free(res->errors);
    res->errors = NULL;
    res->n_errors = 0;
}
