/* distill.c - the distill stage's training loop on every rank
 * (distill.h).  Checkpoint folders: distill_ckpt.c; items and page
 * features: worker/train/distill_data.c; the loss plot: distill_plot.c. */
#include "coordinator/distill.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coordinator/distill_ckpt.h"
#include "worker/train/distill_data.h"
#include "coordinator/distill_eval.h"
#include "coordinator/distill_plot.h"
#include "common/dm_fs.h"
#include "kernels/cpu/kern.h"
#include "coordinator/progress.h"
#include "worker/stages/stage_cache.h"
#include "worker/text/tokenizer.h"
#include "worker/image/image.h"
#include "worker/train/swin_grad.h"

#define PREFIX "docmint run"

/* Keys of the distill block that do not change the trajectory: a rerun
 * may change them and still resume. */
static const char *s_operational[] = {"checkpoint_every", "keep_checkpoints", "hash_check_every",
                                      "feature_cache_mb", "plot", "eval"};

typedef struct Run {
    const Job *job;
    const DistillSpec *d;
    Coll *coll;
    int rank, size, quiet, tty;
    DonutModel *m;
    Tokenizer *tok;
    PreprocConfig pc;
    Store *store;
    Corpus *corpus;
    DistillData *data;
    TrainParams tp;
    AdamW opt;
    int have_tp, have_opt;
    char teacher_fp[80], tok_fp[80], student_fp[32];
    int n_items, share_max, passes;
    long spe, total, step, perm_epoch;
    int *perm;
    int *page_of, npages, *group_work; /* "order": "pages" */
    double alpha;
    json_t *trajectory;
    FILE *log;              /* rank 0: OUTPUT/train.jsonl */
    DistillCurve curve;     /* rank 0: the losses so far, for the plot */
    double t_start, last_line;
    double tokens_done;
    QaModel qa;             /* no teacher: the sequences of the gold answers */
    DistillEval *eval;      /* "eval": answers scored during training */
    QaModel eval_qa;
    float *enc, *denc;      /* whole model: one page's encoder output and its gradient */
    size_t enc_n;
} Run;

/* ------------------------------------------------------------ schedule */

double distill_lr(const DistillSpec *d, long s, long total)
{
    if (s < d->warmup_steps)
        return d->lr * (double)s / (double)(d->warmup_steps > 1 ? d->warmup_steps : 1);
    if (d->decay == DISTILL_DECAY_CONSTANT)
        return d->lr;
    long span = total - d->warmup_steps;
    double progress = (double)(s - d->warmup_steps) / (double)(span > 1 ? span : 1);
    if (d->decay == DISTILL_DECAY_LINEAR)
        return d->lr * fmax(0.0, (double)(total - s) / (double)(span > 1 ? span : 1));
    return d->lr * fmax(0.0, 0.5 * (1.0 + cos(M_PI * progress)));
}

static uint64_t s_splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void distill_permutation(uint64_t seed, long epoch, int n, int *perm)
{
    uint64_t x = seed * 0xd1b54a32d192ed03ull ^ ((uint64_t)epoch + 1) * 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < n; i++)
        perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(((unsigned __int128)s_splitmix(&x) * (unsigned)(i + 1)) >> 64);
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

void distill_group_pages(int n, int *perm, const int *page_of, int npages, int *work)
{
    /* Counting sort by the rank of each page's first appearance: stable,
     * so a page's items keep their order. */
    int *out = work, *rank = work + n, *start = work + n + npages;
    for (int p = 0; p < npages; p++)
        rank[p] = -1;
    memset(start, 0, ((size_t)npages + 1) * sizeof *start);
    int nr = 0;
    for (int i = 0; i < n; i++) {
        int p = page_of[perm[i]];
        if (rank[p] < 0)
            rank[p] = nr++;
        start[rank[p] + 1]++;
    }
    for (int k = 0; k < nr; k++)
        start[k + 1] += start[k];
    for (int i = 0; i < n; i++)
        out[start[rank[page_of[perm[i]]]]++] = perm[i];
    memcpy(perm, out, (size_t)n * sizeof *perm);
}

/* 64-bit hash of the trainable weights' bits (the same multiply-xor fold
 * as the model fingerprint). */
static uint64_t s_hash_params(const TrainParams *tp)
{
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *q = (const unsigned char *)tp->data;
    size_t bytes = tp->total * sizeof(float);
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        uint64_t w;
        memcpy(&w, q + i, 8);
        h = (h ^ w) * 0x9e3779b97f4a7c15ull;
        h ^= h >> 29;
    }
    if (bytes % 8) {
        uint32_t w;
        memcpy(&w, q + bytes - 4, 4);
        h = (h ^ w) * 0x9e3779b97f4a7c15ull;
    }
    return h;
}

/* ------------------------------------------------------- rank agreement */

/* Every rank says whether it is fine; 0 when all are.  A rank that failed
 * prints its own message (rank 0 plainly, others with their rank, unless
 * rank 0 failed too and already said it). */
static int s_agree(Run *r, int failed, const DmErr *err)
{
    double v[2] = {failed ? 1.0 : 0.0, r->rank == 0 && failed ? 1.0 : 0.0};
    DmErr e2;
    if (coll_allreduce_sum_f64(r->coll, v, 2, &e2)) {
        fprintf(stderr, "%s: rank %d: %s\n", PREFIX, r->rank, e2.msg);
        return 1;
    }
    if (failed) {
        if (r->rank == 0)
            fprintf(stderr, "%s: %s\n", PREFIX, err->msg);
        else if (v[1] == 0)
            fprintf(stderr, "%s: rank %d: %s\n", PREFIX, r->rank, err->msg);
    }
    return v[0] > 0;
}

/* A failure inside the training loop, where the other ranks may be
 * waiting in a collective: say it and end the job (a rerun resumes from
 * the newest checkpoint). */
static void s_abort(Run *r, const DmErr *err)
{
    fprintf(stderr, "%s: rank %d: %s; rerun to resume from the newest checkpoint\n", PREFIX,
            r->rank, err->msg);
    if (r->size > 1)
        MPI_Abort(MPI_COMM_WORLD, 1);
}

/* --------------------------------------------------------------- set-up */

/* The teacher fingerprint a student folder records: pruning.json's (the
 * unpruned model `docmint prune` cut it from), else distill.json's (the
 * teacher of the store an earlier distill learnt from); "" when none. */
static int s_teacher_record(const char *dir, char *fp, size_t n, DmErr *err)
{
    static const char *files[] = {"pruning.json", "distill.json"};
    fp[0] = '\0';
    for (int i = 0; i < 2; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (access(path, F_OK) != 0)
            continue;
        json_error_t je;
        json_t *doc = json_load_file(path, 0, &je);
        if (!doc)
            return dm_err(err, "%s: line %d: %s", path, je.line, je.text);
        const char *v = json_string_value(json_object_get(doc, "teacher_fingerprint"));
        if (v)
            snprintf(fp, n, "%s", v);
        json_decref(doc);
        if (fp[0])
            return 0;
    }
    return 0;
}

/* The distill block without the operational keys, with the student. */
static json_t *s_trajectory(const Run *r)
{
    json_t *t = json_deep_copy(json_object_get(r->job->doc, "distill"));
    if (!t)
        return NULL;
    for (size_t i = 0; i < sizeof s_operational / sizeof *s_operational; i++)
        json_object_del(t, s_operational[i]);
    json_object_set_new(t, "student", json_string(r->job->model));
    json_object_set_new(t, "student_fingerprint", json_string(r->student_fp));
    json_object_set_new(t, "items", json_integer(r->n_items));
    return t;
}

static int s_setup_gold(Run *r, DmErr *err);
static int s_student_prompt(void *ctx, const char *question, int32_t **ids, int *n, DmErr *err);
static int s_setup_training(Run *r, DmErr *err);

static int s_setup(Run *r, DmErr *err)
{
    const Job *j = r->job;
    const DistillSpec *d = r->d;
    char path[4200];
    if (donut_load(j->model, &r->m, err) || tokenizer_load(j->model, &r->tok, err))
        return -1;
    snprintf(r->student_fp, sizeof r->student_fp, "%s", r->m->fingerprint);
    snprintf(r->tok_fp, sizeof r->tok_fp, "%s", tokenizer_fingerprint(r->tok));
    snprintf(path, sizeof path, "%s/preprocessor_config.json", j->model);
    if (preproc_config_load(path, &r->pc, err))
        return -1;
    if (!d->logits) /* no teacher: cross-entropy on the corpus's gold answers */
        return s_setup_gold(r, err);
    if (s_teacher_record(j->model, r->teacher_fp, sizeof r->teacher_fp, err))
        return -1;
    /* The tokenizer always (token ids mean nothing across tokenizers); the
     * teacher when the student's folder says which one it came from. */
    if (store_open(d->logits, STORE_READ, &r->store, err) ||
        logit_store_check(r->store, r->teacher_fp, r->tok_fp, err))
        return -1;
    if (!r->teacher_fp[0]) {
        char *fp = NULL;
        if (store_meta_read(r->store, "teacher_fingerprint", &fp, err) < 0)
            return -1;
        snprintf(r->teacher_fp, sizeof r->teacher_fp, "%s", fp ? fp : "");
        free(fp);
        if (r->rank == 0 && !r->quiet)
            fprintf(stderr, "%s: %s records no teacher (pruning.json or distill.json "
                            "\"teacher_fingerprint\"): the store's teacher %s is taken on trust, "
                            "the tokenizer matches\n",
                    PREFIX, j->model, r->teacher_fp);
    }
    char *temps = NULL;
    if (store_meta_read(r->store, "temperatures", &temps, err) < 0)
        return -1;
    json_t *ta = temps ? json_loads(temps, 0, NULL) : NULL;
    int found = 0;
    size_t i;
    json_t *v;
    json_array_foreach(ta, i, v) found |= (float)json_number_value(v) == (float)d->temperature;
    json_decref(ta);
    if (!found) {
        dm_err(err, "distill.temperature: %g is not among the temperatures %s of %s", d->temperature,
               temps ? temps : "(none)", d->logits);
        free(temps);
        return -1;
    }
    free(temps);
    image_set_max_pixels(j->corpus.max_page_pixels);
    if (corpus_load(&j->corpus, &r->corpus, err) ||
        distill_data_open(r->store, r->corpus, r->m, &r->pc, j->corpus.pdf_dpi, d->temperature,
                          (size_t)d->feature_cache_mb << 20, d->skip_damaged, &r->data, err))
        return -1;
    /* a student that lowercases its questions reads the teacher's answers
     * after its own prompt */
    int lowercase = 0;
    if (qa_prompt_config(j->model, &lowercase, err))
        return -1;
    if (lowercase) {
        if (qa_from(r->m, r->tok, j->model, &r->qa, err))
            return -1;
        distill_data_set_prompt(r->data, s_student_prompt, &r->qa);
        if (r->rank == 0 && !r->quiet)
            fprintf(stderr, "%s: %s lowercases its questions (%s): each item's prompt is made "
                            "again from the corpus's question\n",
                    PREFIX, j->model, QA_PROMPT_FILE);
    }
    return s_setup_training(r, err);
}

static int s_student_prompt(void *ctx, const char *question, int32_t **ids, int *n, DmErr *err)
{
    return qa_prompt(ctx, question, ids, n, err);
}

static int s_gold_seq(void *ctx, const char *question, const char *answer, int32_t **ids, int *n,
                      int *answer_start, DmErr *err)
{
    return cache_sequence(ctx, question, answer, ids, n, answer_start, err);
}

/* No logit store: the items are the corpus's gold answers, tokenized as
 * cache-logits would, and the loss is their cross-entropy. */
static int s_setup_gold(Run *r, DmErr *err)
{
    const Job *j = r->job;
    if (qa_from(r->m, r->tok, j->model, &r->qa, err) || corpus_load(&j->corpus, &r->corpus, err) ||
        distill_data_open_gold(r->corpus, r->m, &r->pc, j->corpus.pdf_dpi,
                               (size_t)r->d->feature_cache_mb << 20, s_gold_seq, &r->qa, &r->data,
                               err))
        return -1;
    return s_setup_training(r, err);
}

/* What follows the items: the schedule, the parameters, AdamW. */
static int s_setup_training(Run *r, DmErr *err)
{
    const Job *j = r->job;
    const DistillSpec *d = r->d;
    char path[4200];
    const char *items_from = d->logits ? d->logits : j->corpus.path;
    if (d->eval_corpus && (distill_eval_open(d->eval_corpus, d->eval_questions,
                                             j->corpus.pdf_dpi, &r->eval, err) ||
                           qa_from(r->m, r->tok, j->model, &r->eval_qa, err)))
        return -1;
    r->n_items = distill_data_count(r->data);
    if (distill_data_skipped(r->data) && r->rank == 0)
        fprintf(stderr, "%s: %s: skipped %ld damaged records (distill.skip_damaged); training on %d\n",
                PREFIX, d->logits, distill_data_skipped(r->data), r->n_items);
    if (d->batch_size > r->n_items)
        return dm_err(err, "distill.batch_size: %d is more than the %d items of %s", d->batch_size,
                      r->n_items, items_from);
    if (d->batch_size < r->size)
        return dm_err(err, "distill.batch_size: %d is less than the %d ranks (each rank needs an "
                           "item per step)", d->batch_size, r->size);
    r->spe = r->n_items / d->batch_size;
    r->total = d->steps > 0 ? d->steps : (long)d->epochs * r->spe;
    if (d->warmup_steps > r->total)
        return dm_err(err, "distill.warmup_steps: %ld is more than the %ld steps", d->warmup_steps,
                      r->total);
    r->share_max = (d->batch_size + r->size - 1) / r->size;
    int micro = d->micro_batch > 0 && d->micro_batch < r->share_max ? d->micro_batch : r->share_max;
    r->passes = (r->share_max + micro - 1) / micro;
    r->perm = malloc((size_t)r->n_items * sizeof *r->perm);
    r->perm_epoch = -1;
    if (!r->perm)
        return dm_err(err, "out of memory");
    if (d->order_pages) {
        r->page_of = malloc((size_t)r->n_items * sizeof *r->page_of);
        if (!r->page_of)
            return dm_err(err, "out of memory");
        for (int i = 0; i < r->n_items; i++) {
            r->page_of[i] = distill_data_item(r->data, i)->page;
            if (r->page_of[i] + 1 > r->npages)
                r->npages = r->page_of[i] + 1;
        }
        r->group_work = malloc(((size_t)r->n_items + 2 * (size_t)r->npages + 1) *
                               sizeof *r->group_work);
        if (!r->group_work)
            return dm_err(err, "out of memory");
    }
    if ((d->train_all ? train_params_init_all(r->m, &r->tp, err)
                      : train_params_init(r->m, &r->tp, err)))
        return -1;
    r->have_tp = 1;
    if (d->train_all) {
        distill_data_set_whole(r->data);
        const SwinConfig *ec = &r->m->cfg.enc;
        int oh, ow;
        swin_output_grid(ec, r->pc.height, r->pc.width, &oh, &ow);
        r->enc_n = (size_t)oh * ow * ec->hidden_size;
        r->enc = malloc(r->enc_n * sizeof *r->enc);
        r->denc = malloc(r->enc_n * sizeof *r->denc);
        if (!r->enc || !r->denc)
            return dm_err(err, "out of memory");
    }
    /* a masked student: its pruned weights stay zero through training */
    DmMask *mask = NULL;
    if (mask_load(r->m, j->model, &mask, err))
        return -1;
    train_params_set_mask(&r->tp, mask);
    mask_free(&mask);
    if (adamw_init(&r->opt, r->tp.total, d->beta1, d->beta2, d->eps, d->weight_decay, err))
        return -1;
    r->have_opt = 1;
    r->alpha = d->logits ? d->alpha : 0.0;
    r->trajectory = s_trajectory(r);
    if (!r->trajectory)
        return dm_err(err, "out of memory");
    if (r->rank == 0) {
        snprintf(path, sizeof path, "%s/checkpoints", j->output);
        if (dm_mkdirs(path, err))
            return -1;
    }
    return 0;
}

static void s_teardown(Run *r)
{
    if (r->log)
        fclose(r->log);
    distill_curve_free(&r->curve);
    distill_eval_free(&r->eval);
    json_decref(r->trajectory);
    free(r->perm);
    free(r->page_of);
    free(r->group_work);
    free(r->enc);
    free(r->denc);
    if (r->have_opt)
        adamw_free(&r->opt);
    if (r->have_tp)
        train_params_free(&r->tp);
    distill_data_close(&r->data);
    corpus_free(&r->corpus);
    store_close(&r->store);
    tokenizer_free(&r->tok);
    donut_free(&r->m);
}

/* -------------------------------------------------------------- resume */

/* Rank 0: the newest checkpoint into tp/opt, checked against this job. */
static int s_resume_read(Run *r, const char *dir, long step, DmErr *err)
{
    json_t *state = NULL;
    if (distill_ckpt_read(dir, &r->tp, &r->opt, &state, err))
        return -1;
    int rc = 0;
    json_t *t = json_object_get(state, "trajectory");
    if (!json_equal(t, r->trajectory)) {
        const char *key = "?";
        json_t *v;
        json_object_foreach(r->trajectory, key, v) if (!json_equal(v, json_object_get(t, key))) break;
        rc = dm_err(err, "%s: the checkpoints in %s are of another training (%s differs); use "
                         "another output folder or delete it",
                    dir, r->job->output, key ? key : "a key");
    } else if ((long)json_integer_value(json_object_get(state, "step")) != step) {
        rc = dm_err(err, "%s/state.json: step %lld, the folder says %ld", dir,
                    (long long)json_integer_value(json_object_get(state, "step")), step);
    } else {
        r->alpha = json_real_value(json_object_get(state, "alpha"));
    }
    json_decref(state);
    return rc;
}

static int s_log_line(void *ctx, long s, json_t *o)
{
    Run *r = ctx;
    if (s < 1)
        return 1; /* not a step's line */
    distill_curve_add(&r->curve, s, json_number_value(json_object_get(o, "loss")),
                      json_number_value(json_object_get(o, "ce")),
                      json_number_value(json_object_get(o, "kd")));
    return 0;
}

/* Rank 0: keep the log lines of the steps up to `step` (a killed run may
 * have logged steps after its last checkpoint) and load them for the plot. */
static int s_log_open(Run *r, long step, DmErr *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/train.jsonl", r->job->output);
    return distill_jsonl_keep(path, step, s_log_line, r, &r->log, err);
}

/* Newest checkpoint on rank 0, shared with every rank. */
static int s_resume(Run *r)
{
    DmErr err = {{0}};
    char dir[4200];
    long step = 0;
    int found = 0, rc = 0;
    if (r->rank == 0) {
        found = distill_ckpt_clean(r->job->output, &err) ? -1
                : distill_ckpt_newest(r->job->output, dir, sizeof dir, &step, &err);
        rc = found < 0;
        if (!rc && found)
            rc = s_resume_read(r, dir, step, &err);
        if (!rc)
            rc = s_log_open(r, found ? step : 0, &err);
        if (!rc && r->eval)
            rc = distill_eval_log_open(r->eval, r->job->output, found ? step : 0, &err);
    }
    if (s_agree(r, rc, &err))
        return -1;
    double hdr[2] = {(double)(found > 0), (double)step};
    if (coll_bcast(r->coll, hdr, sizeof hdr, &err))
        goto fail;
    if (hdr[0] == 0) {
        r->step = 0;
        return 0;
    }
    r->step = (long)hdr[1];
    r->opt.step = r->step;
    if (coll_bcast(r->coll, r->tp.data, r->tp.total * sizeof(float), &err) ||
        coll_bcast(r->coll, r->opt.m, r->tp.total * sizeof(float), &err) ||
        coll_bcast(r->coll, r->opt.v, r->tp.total * sizeof(float), &err) ||
        coll_bcast(r->coll, &r->alpha, sizeof r->alpha, &err))
        goto fail;
    if (r->rank == 0 && !r->quiet)
        fprintf(stderr, "%s: resuming from %s (step %ld of %ld, alpha %.6g)\n", PREFIX, dir,
                r->step, r->total, r->alpha);
    return 0;
fail:
    s_abort(r, &err);
    return -1;
}

/* ------------------------------------------------------------ training */

typedef struct BatchSums {
    double v[4]; /* ce * positions, kd * positions, positions, tokens (this rank) */
} BatchSums;

static void s_batch_bounds(Run *r, long step, int *base, int *lo, int *hi)
{
    long epoch = step / r->spe;
    if (epoch != r->perm_epoch) {
        distill_permutation(r->d->seed, epoch, r->n_items, r->perm);
        if (r->page_of)
            distill_group_pages(r->n_items, r->perm, r->page_of, r->npages, r->group_work);
        r->perm_epoch = epoch;
    }
    int B = r->d->batch_size;
    *base = (int)(step % r->spe) * B;
    *lo = (int)((long)r->rank * B / r->size);
    *hi = (int)((long)(r->rank + 1) * B / r->size);
}

/* Whole-model training: the largest encoder tape kept whole; past it
 * each block's activations are recomputed in the backward (swin_grad.h). */
#define WHOLE_KEEP_ALL_BYTES ((size_t)2 << 30)

/* Whole-model training: the encoder forward with a tape on the page of
 * loaded item l, into r->enc (grown as needed), r->denc zeroed. */
static int s_whole_forward(Run *r, const DistillLoaded *l, SwinTape **tape, int *n_enc,
                           DmErr *err)
{
    const SwinConfig *ec = &r->m->cfg.enc;
    int oh, ow;
    swin_output_grid(ec, l->H, l->W, &oh, &ow);
    size_t n = (size_t)oh * ow * ec->hidden_size;
    if (n > r->enc_n) {
        float *a = realloc(r->enc, n * sizeof *a), *b = a ? realloc(r->denc, n * sizeof *b) : NULL;
        if (a)
            r->enc = a;
        if (b)
            r->denc = b;
        if (!a || !b)
            return dm_err(err, "out of memory for an encoder output of %d rows", oh * ow);
        r->enc_n = n;
    }
    SwinKeep keep = swin_tape_bytes(ec, l->H, l->W, SWIN_KEEP_ALL) <= WHOLE_KEEP_ALL_BYTES
                        ? SWIN_KEEP_ALL
                        : SWIN_KEEP_INPUTS;
    memset(r->denc, 0, n * sizeof *r->denc);
    *n_enc = oh * ow;
    return swin_tape_forward(r->m, l->pix, l->H, l->W, keep, r->enc, tape, err);
}

/* This rank's items [lo, hi) of the batch at base, whole model: the
 * items of one page share one encoder forward and backward (the
 * gradients of the page's encoder output are summed first), pages in the
 * order of their first item. */
static int s_whole_batch(Run *r, int base, int lo, int hi, const LossCfg *cfg, double npos,
                         BatchSums *bs, DmErr *err)
{
    unsigned char *done = calloc((size_t)(hi - lo) + 1, 1);
    if (!done)
        return dm_err(err, "out of memory");
    int rc = 0;
    for (int i = lo; i < hi && !rc; i++) {
        if (done[i - lo])
            continue;
        int page = distill_data_item(r->data, r->perm[base + i])->page, n_enc = 0;
        SwinTape *tape = NULL;
        for (int j = i; j < hi && !rc; j++) {
            int idx = r->perm[base + j];
            const DistillItem *it = distill_data_item(r->data, idx);
            if (done[j - lo] || it->page != page)
                continue;
            done[j - lo] = 1;
            DistillLoaded l;
            LossParts lp;
            if (distill_item_load(r->data, idx, &l, err)) {
                rc = -1;
                break;
            }
            if (j == i)
                rc = s_whole_forward(r, &l, &tape, &n_enc, err);
            l.it.enc = r->enc;
            l.it.n_enc = n_enc;
            if (!rc)
                rc = train_item_grad(r->m, &r->tp, &l.it, cfg, it->positions / npos, &lp, r->denc,
                                     err);
            distill_item_clear(&l);
            if (rc)
                break;
            bs->v[0] += lp.ce * it->positions;
            bs->v[1] += lp.kd * it->positions;
            bs->v[2] += it->positions;
            bs->v[3] += it->tokens;
        }
        if (!rc)
            rc = swin_tape_backward(r->m, tape, r->denc, &r->tp, NULL, err);
        swin_tape_free(&tape);
    }
    free(done);
    return rc;
}

/* This rank's share of the global batch of `step`: gradients (scaled by
 * positions over the global batch's positions) added into tp.grad. */
static int s_batch_grad(Run *r, long step, double alpha, BatchSums *bs, DmErr *err)
{
    int base, lo, hi;
    s_batch_bounds(r, step, &base, &lo, &hi);
    double npos = 0;
    for (int i = 0; i < r->d->batch_size; i++)
        npos += distill_data_item(r->data, r->perm[base + i])->positions;
    LossCfg cfg = {alpha, r->d->temperature};
    memset(bs, 0, sizeof *bs);
    if (r->d->train_all)
        return s_whole_batch(r, base, lo, hi, &cfg, npos, bs, err);
    for (int i = lo; i < hi; i++) {
        int idx = r->perm[base + i];
        const DistillItem *it = distill_data_item(r->data, idx);
        DistillLoaded l;
        LossParts lp;
        if (distill_item_load(r->data, idx, &l, err))
            return -1;
        int rc = train_item_grad(r->m, &r->tp, &l.it, &cfg, it->positions / npos, &lp, NULL, err);
        distill_item_clear(&l);
        if (rc)
            return -1;
        bs->v[0] += lp.ce * it->positions;
        bs->v[1] += lp.kd * it->positions;
        bs->v[2] += it->positions;
        bs->v[3] += it->tokens;
    }
    return 0;
}

/* alpha "auto": ce / kd over the first alpha_batches batches with the
 * initial weights (Donut-MINT's rule of terms of similar magnitude). */
static int s_auto_alpha(Run *r, DmErr *err)
{
    long nb = r->d->alpha_batches < r->spe ? r->d->alpha_batches : r->spe;
    double tot[4] = {0};
    for (long b = 0; b < nb; b++) {
        BatchSums bs;
        if (s_batch_grad(r, b, 0.0, &bs, err))
            return -1;
        for (int k = 0; k < 4; k++)
            tot[k] += bs.v[k];
    }
    memset(r->tp.grad, 0, r->tp.total * sizeof(float));
    if (coll_allreduce_sum_f64(r->coll, tot, 4, err))
        return -1;
    r->alpha = tot[1] > 0 ? tot[0] / tot[1] : 1.0;
    if (r->rank == 0 && !r->quiet) {
        fprintf(stderr, "%s: alpha auto: ce %.5g, kd %.5g over %ld batch%s: alpha = %.6g\n",
                PREFIX, tot[0] / tot[2], tot[1] / tot[2], nb, nb == 1 ? "" : "es", r->alpha);
        if (r->alpha > 1e4)
            fprintf(stderr, "%s: alpha auto: the student already matches the teacher almost "
                            "exactly (a random-weight teacher?); the huge alpha magnifies a "
                            "tiny term: consider a fixed distill.alpha\n",
                    PREFIX);
    }
    return 0;
}

static json_t *s_state(const Run *r, double lr)
{
    char hash[20];
    snprintf(hash, sizeof hash, "%016" PRIx64, s_hash_params(&r->tp));
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:{s:I, s:I}, s:f, s:f, s:i, s:s, s:O}",
                     "step", (json_int_t)r->step, "epoch", (json_int_t)(r->step / r->spe),
                     "position", (json_int_t)(r->step % r->spe * r->d->batch_size),
                     "steps_per_epoch", (json_int_t)r->spe, "total_steps", (json_int_t)r->total,
                     "rng", "seed", (json_int_t)r->d->seed, "epoch",
                     (json_int_t)(r->step / r->spe), "alpha", r->alpha, "lr", lr, "ranks",
                     r->size, "param_hash", hash, "trajectory", r->trajectory);
}

static json_t *s_record(const Run *r)
{
    return json_pack("{s:s, s:s, s:s?, s:f, s:f, s:I}", "teacher_fingerprint", r->teacher_fp,
                     "tokenizer_fingerprint", r->tok_fp, "logits", r->d->logits, "temperature",
                     r->d->temperature, "alpha", r->alpha, "step", (json_int_t)r->step);
}

/* Rank 0: a checkpoint folder (and the plot). */
static int s_save(Run *r, const char *dir, double lr, DmErr *err)
{
    json_t *state = s_state(r, lr), *rec = s_record(r);
    int rc = state && rec ? distill_ckpt_write(dir, r->m, &r->tp, &r->opt, state, rec, err)
                          : dm_err(err, "out of memory");
    json_decref(state);
    json_decref(rec);
    if (!rc && r->d->plot) {
        char png[4200];
        snprintf(png, sizeof png, "%s/losses.png", r->job->output);
        rc = distill_plot(&r->curve, r->alpha, png, err);
    }
    return rc;
}

static int s_hash_check(Run *r, DmErr *err)
{
    uint64_t *all = malloc((size_t)r->size * sizeof *all), mine = s_hash_params(&r->tp);
    if (!all)
        return dm_err(err, "out of memory");
    int rc = coll_allgather_u64(r->coll, mine, all, err);
    for (int i = 1; !rc && i < r->size; i++)
        if (all[i] != all[0])
            rc = dm_err(err, "after step %ld the parameters differ across ranks: rank 0 hash "
                             "%016" PRIx64 ", rank %d hash %016" PRIx64 "; stopping",
                        r->step, all[0], i, all[i]);
    free(all);
    return rc;
}

static void s_progress(Run *r, double loss, double ce, double kd, double now, int last)
{
    if (r->rank != 0 || r->quiet)
        return;
    if (!last && now - r->last_line < (r->tty ? 1.0 : 10.0))
        return;
    r->last_line = now;
    double el = now - r->t_start, rate = r->tokens_done / (el > 0 ? el : 1);
    char eta[32];
    progress_duration(eta, sizeof eta, r->step > 0 ? el / r->step * (r->total - r->step) : 0);
    fprintf(stderr, "%s%s: step %ld/%ld (%.1f%%), loss %.4f (ce %.4f, kd %.4f), %.0f tok/s, ETA %s%s",
            r->tty ? "\r" : "", PREFIX, r->step, r->total,
            100.0 * (double)r->step / (double)(r->total > 0 ? r->total : 1), loss, ce, kd, rate,
            eta, r->tty ? "\033[K" : "\n");
    fflush(stderr);
}

/* Fault-injection hooks for tests (as the workers'):
 * DOCMINT_TEST_STALL_SECONDS=X makes rank 0 sleep X seconds after each
 * step, so a test can kill the job between two checkpoints;
 * DOCMINT_TEST_DESYNC_RANK=R makes rank R change one weight by one ulp
 * after the first step, which the hash check must catch. */
static double s_test_env(const char *name, double none)
{
    const char *v = getenv(name);
    return v && *v ? atof(v) : none;
}

/* distill.eval: the model as it is now answers the chosen questions;
 * collective.  A failure to score stops the run as any other does. */
static int s_eval(Run *r)
{
    if (!r->eval)
        return 0;
    DmErr err = {{0}};
    double t0 = dm_now(), anls = 0;
    int rc = distill_eval_score(r->eval, &r->eval_qa, &r->pc, r->coll, r->rank, r->size, r->step,
                                &anls, &err);
    if (s_agree(r, rc, &err))
        return -1;
    if (r->rank == 0 && !r->quiet)
        fprintf(stderr, "%s: step %ld: %s (%.1f s)\n", PREFIX, r->step,
                distill_eval_summary(r->eval), dm_now() - t0);
    return 0;
}

static int s_train(Run *r)
{
    DmErr err = {{0}};
    const DistillSpec *d = r->d;
    double stall = r->rank == 0 ? s_test_env("DOCMINT_TEST_STALL_SECONDS", 0) : 0;
    int desync = (int)s_test_env("DOCMINT_TEST_DESYNC_RANK", -1) == r->rank;
    double lr = distill_lr(d, r->step, r->total);
    if (r->step == 0 && r->step < r->total && s_eval(r))
        return -1;
    r->t_start = r->last_line = dm_now();
    while (r->step < r->total) {
        double t0 = dm_now();
        BatchSums bs;
        memset(r->tp.grad, 0, r->tp.total * sizeof(float));
        if (s_batch_grad(r, r->step, r->alpha, &bs, &err))
            goto fail;
        double t1 = dm_now();
        /* The barrier splits the wait for the slowest rank (sync_wait_s)
         * from the all-reduce's own time. */
        if (coll_barrier(r->coll, &err))
            goto fail;
        double t1b = dm_now();
        if (coll_allreduce_sum(r->coll, r->tp.grad, r->tp.total, &err))
            goto fail;
        train_params_hold_mask(&r->tp, 1);
        double t2 = dm_now();
        if (coll_allreduce_sum_f64(r->coll, bs.v, 4, &err))
            goto fail;
        double sq = 0;
        for (size_t i = 0; i < r->tp.total; i++)
            sq += (double)r->tp.grad[i] * r->tp.grad[i];
        double norm = sqrt(sq);
        if (d->clip_norm > 0 && norm > d->clip_norm) {
            float c = (float)(d->clip_norm / (norm + 1e-6));
            for (size_t i = 0; i < r->tp.total; i++)
                r->tp.grad[i] *= c;
        }
        lr = distill_lr(d, r->step, r->total);
        adamw_step(&r->opt, r->tp.data, r->tp.grad, lr);
        train_params_hold_mask(&r->tp, 0);
        r->step++;
        if (desync && r->step == 1)
            r->tp.data[0] = nextafterf(r->tp.data[0], INFINITY);
        double t3 = dm_now();
        double ce = bs.v[0] / bs.v[2], kd = bs.v[1] / bs.v[2], loss = ce + r->alpha * kd;
        r->tokens_done += bs.v[3];
        if (r->rank == 0) {
            fprintf(r->log,
                    "{\"step\": %ld, \"loss\": %.9g, \"ce\": %.9g, \"kd\": %.9g, \"lr\": %.9g, "
                    "\"alpha\": %.9g, \"grad_norm\": %.9g, \"tokens_per_s\": %.6g, "
                    "\"allreduce_s\": %.6g, \"sync_wait_s\": %.6g, \"step_s\": %.6g, "
                    "\"epoch\": %ld}\n",
                    r->step, loss, ce, kd, lr, r->alpha, norm, bs.v[3] / (t3 - t0), t2 - t1b,
                    t1b - t1, t3 - t0, (r->step - 1) / r->spe);
            fflush(r->log);
            distill_curve_add(&r->curve, r->step, loss, ce, kd);
        }
        int last = r->step == r->total;
        if ((d->hash_check_every > 0 && r->step % d->hash_check_every == 0) || last) {
            if (s_hash_check(r, &err)) {
                if (r->rank == 0)
                    fprintf(stderr, "%s: %s\n", PREFIX, err.msg);
                return -1;
            }
        }
        if ((d->checkpoint_every > 0 && r->step % d->checkpoint_every == 0) || last) {
            char dir[4200];
            snprintf(dir, sizeof dir, "%s/checkpoints/step-%ld", r->job->output, r->step);
            int rc = r->rank == 0 && (s_save(r, dir, lr, &err) ||
                                      distill_ckpt_prune(r->job->output, d->keep_checkpoints, &err));
            if (s_agree(r, rc, &err))
                return -1;
        }
        long every = d->eval_every > 0 ? d->eval_every : d->checkpoint_every;
        if (r->eval && ((every > 0 && r->step % every == 0) || last) && s_eval(r))
            return -1;
        s_progress(r, loss, ce, kd, dm_now(), last);
        if (stall > 0)
            usleep((useconds_t)(stall * 1e6));
    }
    return 0;
fail:
    s_abort(r, &err);
    return -1;
}

int distill_run(const Job *job, Coll *coll, int threads, int quiet)
{
    Run run;
    memset(&run, 0, sizeof run);
    Run *r = &run;
    r->job = job;
    r->d = &job->distill;
    r->coll = coll;
    r->rank = coll_rank(coll);
    r->size = coll_size(coll);
    r->quiet = quiet || job->quiet;
    r->tty = isatty(2);
    kern_set_threads(threads);
    DmErr err = {{0}};
    int rc = 1;
    if (s_agree(r, s_setup(r, &err) != 0, &err))
        goto done;
    if (r->rank == 0 && !r->quiet) {
        const char *note = coll_note(coll);
        if (note[0])
            fprintf(stderr, "%s: %s\n", PREFIX, note);
        fprintf(stderr,
                "%s: distill %s: %d items, batch %d (%d per rank on %d rank%s, %d pass%s), %ld "
                "steps/epoch, %ld steps, %zu trainable weights, all-reduce over %s, %d thread%s "
                "per rank\n",
                PREFIX, job->model, r->n_items, r->d->batch_size, r->share_max, r->size,
                r->size == 1 ? "" : "s", r->passes, r->passes == 1 ? "" : "es", r->spe, r->total,
                r->tp.total, coll_backend(coll), threads, threads == 1 ? "" : "s");
        if (r->tp.keep)
            fprintf(stderr, "%s: masked student: %lld of its weights held at zero\n", PREFIX,
                    r->tp.held);
    }
    if (s_resume(r))
        goto done;
    if (r->step == 0 && r->d->alpha_auto && r->d->logits && s_auto_alpha(r, &err)) {
        s_abort(r, &err);
        goto done;
    }
    if (s_train(r))
        goto done;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/student", job->output);
    int bad = r->rank == 0 && s_save(r, dir, distill_lr(r->d, r->total - 1, r->total), &err);
    if (s_agree(r, bad, &err))
        goto done;
    if (r->rank == 0 && !r->quiet && r->d->train_all) {
        fprintf(stderr, "%s: done: %ld steps (whole model), student in %s\n", PREFIX, r->total,
                dir);
    } else if (r->rank == 0 && !r->quiet) {
        long enc, stored, hits;
        distill_data_cache_stats(r->data, &enc, &stored, &hits);
        fprintf(stderr, "%s: done: %ld steps, alpha %.6g, student in %s (rank 0: %ld pages "
                        "encoded, %ld from the feature store, %ld cache hits; %ld damaged records "
                        "skipped)\n",
                PREFIX, r->total, r->alpha, dir, enc, stored, hits, distill_data_skipped(r->data));
    }
    rc = 0;
done:
    s_teardown(r);
    return rc;
}
