/* test_decoder.c - the mBART decoder and greedy generation against the
 * tensors Hugging Face computed for the tiny reference model.  The decoder
 * is fed the reference encoder output, so these tests do not depend on the
 * encoder. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/decoder.h"
#include "worker/model/generate.h"
#include "tutil.h"

static DonutModel *s_model;
static TensorFile *s_gold;

static int s_setup(void)
{
    DmErr err = {{0}};
    if (donut_load(TU_TINY, &s_model, &err) || tensorfile_open(TU_TINY "/expected.safetensors",
                                                              &s_gold, &err)) {
        fprintf(stderr, "decoder tests: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static int s_teardown(void)
{
    donut_free(&s_model);
    tensorfile_close(&s_gold);
    return 0;
}

/* Reference ids of case k as int32. */
static int32_t *s_ids(const char *name, int *n)
{
    const DmTensor *t = tensorfile_find(s_gold, name);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    int64_t numel = dm_tensor_numel(t);
    int64_t *tmp = malloc((size_t)numel * sizeof *tmp);
    int32_t *ids = malloc((size_t)numel * sizeof *ids);
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(t, tmp, &err), 0);
    for (int64_t i = 0; i < numel; i++)
        ids[i] = (int32_t)tmp[i];
    free(tmp);
    *n = (int)numel;
    return ids;
}

/* The page of case k (its reference encoder output) for model m. */
static void s_page_for(const DonutModel *m, int k, DecPage *page)
{
    char name[128];
    snprintf(name, sizeof name, "case%d.encoder.last_hidden_state", k);
    const DmTensor *enc = tensorfile_find(s_gold, name);
    CU_ASSERT_PTR_NOT_NULL_FATAL(enc);
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(dec_page_init(page, m, enc->data, (int)enc->shape[1], &err), 0);
}

static void s_page(int k, DecPage *page) { s_page_for(s_model, k, page); }

static void s_teacher_forcing_case(int k)
{
    DecPage page;
    s_page(k, &page);
    char name[128], prefix[32];
    snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
    snprintf(prefix, sizeof prefix, "case%d.", k);
    int T;
    int32_t *ids = s_ids(name, &T);
    DecSeq seq, *sp = &seq;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(dec_seq_init(&seq, s_model, T, &err), 0);
    float *logits = malloc((size_t)T * s_model->cfg.dec.vocab * sizeof(float));
    TuCollect col = {0};
    DmProbe probe = {tu_collect_emit, &col};
    const int32_t *idp = ids;
    CU_ASSERT_EQUAL(dec_forward(&page, &sp, &idp, &T, 1, logits, 1, NULL, &probe, &err), 0);
    double worst = 0;
    worst = fmax(worst, tu_check_tensor(&col, s_gold, prefix, "decoder.logits", 5e-4));
    for (int l = 0; l <= s_model->cfg.dec.layers; l++) {
        snprintf(name, sizeof name, "decoder.hidden_states.%d", l);
        worst = fmax(worst, tu_check_tensor(&col, s_gold, prefix, name, 1e-4));
    }
    worst = fmax(worst, tu_check_tensor(&col, s_gold, prefix, "decoder.last_layer_output", 1e-4));
    for (int l = 0; l < s_model->cfg.dec.layers; l++) {
        snprintf(name, sizeof name, "decoder.self_attentions.%d", l);
        tu_check_tensor(&col, s_gold, prefix, name, 5e-5);
        snprintf(name, sizeof name, "decoder.cross_attentions.%d", l);
        tu_check_tensor(&col, s_gold, prefix, name, 5e-5);
    }
    printf(" [case%d worst %.2g]", k, worst);
    tu_collect_free(&col);
    free(logits);
    free(ids);
    dec_seq_free(&seq);
    dec_page_free(&page);
}

static void test_teacher_forcing(void)
{
    for (int k = 0; k < 3; k++)
        s_teacher_forcing_case(k);
}

typedef struct StepLog {
    int vocab, n;
    float *raw; /* [n, vocab] */
} StepLog;

static void s_on_step(void *ctx, int seq, int step, const float *raw, int vocab)
{
    StepLog *log = ctx;
    log->raw = realloc(log->raw, (size_t)(log->n + 1) * vocab * sizeof(float));
    memcpy(log->raw + (size_t)log->n * vocab, raw, (size_t)vocab * sizeof(float));
    log->n++;
}

static void s_generate_case(int k)
{
    DecPage page;
    s_page(k, &page);
    char name[128];
    snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
    int T, G;
    int32_t *prompt = s_ids(name, &T);
    snprintf(name, sizeof name, "case%d.generate.ids", k);
    int32_t *want = s_ids(name, &G);
    GenConfig g;
    gen_config_default(s_model, &g);
    GenResult r;
    StepLog log = {0};
    DmErr err;
    const int32_t *pp = prompt;
    CU_ASSERT_EQUAL_FATAL(gen_greedy(&page, &pp, &T, 1, &g, &r, s_on_step, &log, &err), 0);
    CU_ASSERT_EQUAL(r.len, G);
    int same = r.len == G && !memcmp(r.ids, want, (size_t)G * sizeof(int32_t));
    CU_ASSERT(same);
    /* Raw step logits and the processed scores. */
    int V = s_model->cfg.dec.vocab;
    snprintf(name, sizeof name, "case%d.generate.step_logits", k);
    const DmTensor *sl = tensorfile_find(s_gold, name);
    snprintf(name, sizeof name, "case%d.generate.scores", k);
    const DmTensor *sc = tensorfile_find(s_gold, name);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sl);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sc);
    CU_ASSERT_EQUAL_FATAL(sl->shape[0], log.n);
    double d = tu_maxdiff(log.raw, sl->data, (size_t)log.n * V);
    CU_ASSERT(d <= 5e-4);
    int inf_mismatch = 0;
    double dscore = 0;
    for (int s = 0; s < log.n; s++) {
        float *row = log.raw + (size_t)s * V;
        gen_process_scores(&g, T + s, row, V);
        const float *ref = (const float *)sc->data + (size_t)s * V;
        for (int v = 0; v < V; v++) {
            if (isinf(ref[v]) != isinf(row[v]))
                inf_mismatch++;
            else if (!isinf(ref[v]))
                dscore = fmax(dscore, fabs(ref[v] - row[v]));
        }
    }
    CU_ASSERT_EQUAL(inf_mismatch, 0);
    CU_ASSERT(dscore <= 5e-4);
    printf(" [case%d: %d new ids %s, step logits %.2g, scores %.2g]", k, r.len - T,
           same ? "equal" : "DIFFER", d, dscore);
    free(log.raw);
    gen_result_free(&r);
    free(prompt);
    free(want);
    dec_page_free(&page);
}

static void test_generate(void)
{
    for (int k = 0; k < 3; k++)
        s_generate_case(k);
}

/* Three questions on one page decoded together give the ids each gives
 * alone (the reference ids of case 0, asked with prompts of cases 0-2). */
static void test_generate_batch(void)
{
    DecPage page;
    s_page(0, &page);
    int32_t *prompts[3];
    int lens[3];
    GenResult solo[3], batch[3];
    GenConfig g;
    gen_config_default(s_model, &g);
    DmErr err;
    for (int k = 0; k < 3; k++) {
        char name[64];
        snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
        prompts[k] = s_ids(name, &lens[k]);
        const int32_t *pp = prompts[k];
        CU_ASSERT_EQUAL_FATAL(gen_greedy(&page, &pp, &lens[k], 1, &g, &solo[k], NULL, NULL, &err),
                              0);
    }
    CU_ASSERT_EQUAL_FATAL(gen_greedy(&page, (const int32_t *const *)prompts, lens, 3, &g, batch,
                                     NULL, NULL, &err),
                          0);
    for (int k = 0; k < 3; k++) {
        CU_ASSERT_EQUAL(solo[k].len, batch[k].len);
        CU_ASSERT(solo[k].len == batch[k].len &&
                  !memcmp(solo[k].ids, batch[k].ids, (size_t)solo[k].len * sizeof(int32_t)));
        gen_result_free(&solo[k]);
        gen_result_free(&batch[k]);
        free(prompts[k]);
    }
    /* case 0's prompt on case 0's page is the reference generation */
    dec_page_free(&page);
}


/* A pruning plan applied through the hooks, as the analyses will: removed
 * sub-layers have their output zeroed, removed heads their attention
 * probabilities.  Reference: HF logits of the pruned students. */
typedef struct PlanHook {
    int keep[DM_MAX_LAYERS][3];
    int head_keep[DM_MAX_LAYERS][2][DM_MAX_HEADS];
} PlanHook;

static int s_plan_hook(void *ctx, DecHookEvent *ev)
{
    PlanHook *p = ctx;
    size_t n = 1;
    for (int i = 0; i < ev->ndim; i++)
        n *= (size_t)ev->shape[i];
    if (ev->point == DEC_HOOK_OUTPUT && !p->keep[ev->layer][ev->kind])
        memset(ev->data, 0, n * sizeof(float));
    if (ev->point == DEC_HOOK_ATTN) {
        size_t per = n / (size_t)ev->shape[0];
        for (int h = 0; h < ev->shape[0]; h++)
            if (!p->head_keep[ev->layer][ev->kind][h])
                memset(ev->data + h * per, 0, per * sizeof(float));
    }
    return 0;
}

static void s_plan_load(const char *path, PlanHook *ph)
{
    FILE *f = fopen(path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    for (int l = 0; l < DM_MAX_LAYERS; l++)
        for (int k = 0; k < 3; k++) {
            ph->keep[l][k] = 1;
            for (int h = 0; h < DM_MAX_HEADS; h++)
                ph->head_keep[l][k < 2 ? k : 0][h] = 1;
        }
    /* The plan files are small and regular: "X<l>": false and "X<l>": [..]. */
    for (char *p = buf; (p = strchr(p, '"')); p++) {
        char kind;
        int l;
        if (sscanf(p, "\"%c%d\"", &kind, &l) != 2 || !strchr("SCM", kind))
            continue;
        int k = kind == 'S' ? 0 : kind == 'C' ? 1 : 2;
        char *v = strchr(p, ':') + 1;
        while (*v == ' ')
            v++;
        if (!strncmp(v, "false", 5))
            ph->keep[l][k] = 0;
        if (*v == '[') {
            for (int h = 0; h < DM_MAX_HEADS; h++)
                ph->head_keep[l][k][h] = 0;
            for (char *q = v + 1; *q && *q != ']'; q++)
                if (*q >= '0' && *q <= '9')
                    ph->head_keep[l][k][strtol(q, &q, 10)] = 1, q--;
        }
        p = v;
    }
}

static void test_plan_hooks(void)
{
    TensorFile *train;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/train.safetensors", &train, &err), 0);
    for (int pl = 1; pl <= 2; pl++) {
        PlanHook ph;
        char path[128];
        snprintf(path, sizeof path, TU_TINY "/plan%d.json", pl);
        s_plan_load(path, &ph);
        DecHooks hooks = {s_plan_hook, &ph};
        for (int k = 0; k < 3; k++) {
            DecPage page;
            s_page(k, &page);
            char name[128];
            snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
            int T;
            int32_t *ids = s_ids(name, &T);
            DecSeq seq, *sp = &seq;
            CU_ASSERT_EQUAL_FATAL(dec_seq_init(&seq, s_model, T, &err), 0);
            TuCollect col = {0};
            DmProbe probe = {tu_collect_emit, &col};
            float *logits = malloc((size_t)T * s_model->cfg.dec.vocab * sizeof(float));
            const int32_t *idp = ids;
            CU_ASSERT_EQUAL(dec_forward(&page, &sp, &idp, &T, 1, logits, 1, &hooks, &probe, &err),
                            0);
            char prefix[32];
            snprintf(prefix, sizeof prefix, "plan%d.case%d.", pl, k);
            double d = tu_check_tensor(&col, train, prefix, "decoder.logits", 5e-4);
            printf(" [plan%d case%d %.2g]", pl, k, d);
            tu_collect_free(&col);
            free(logits);
            free(ids);
            dec_seq_free(&seq);
            dec_page_free(&page);
        }
    }
    tensorfile_close(&train);
}

/* The decoding step (one parallel region for all sequences) against the
 * operation-per-call path, which a probe selects: three sequences of
 * different lengths on one page, 6 steps, fp32 and bf16; and the step on
 * the default team (heads split evenly: each thread projects its own) and
 * on 3 threads (shared out by rows), bit for bit. */
static void s_noop_emit(void *ctx, const char *name, int ndim, const int64_t *shape,
                        const float *data)
{
}

static void s_step_vs_general(const DonutModel *m)
{
    DecPage page;
    s_page_for(m, 1, &page);
    int V = m->cfg.dec.vocab, lens[3];
    int32_t *prompts[3];
    DecSeq fast[3], slow[3], odd[3];
    DmErr err;
    for (int k = 0; k < 3; k++) {
        char name[64];
        snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
        prompts[k] = s_ids(name, &lens[k]);
        CU_ASSERT_EQUAL_FATAL(dec_seq_init(&fast[k], m, 64, &err), 0);
        CU_ASSERT_EQUAL_FATAL(dec_seq_init(&slow[k], m, 64, &err), 0);
        CU_ASSERT_EQUAL_FATAL(dec_seq_init(&odd[k], m, 64, &err), 0);
        DecSeq *f = &fast[k], *sl = &slow[k], *o = &odd[k];
        const int32_t *pp = prompts[k];
        CU_ASSERT_EQUAL_FATAL(dec_forward(&page, &f, &pp, &lens[k], 1, NULL, 0, NULL, NULL, &err),
                              0);
        CU_ASSERT_EQUAL_FATAL(dec_forward(&page, &o, &pp, &lens[k], 1, NULL, 0, NULL, NULL, &err),
                              0);
        CU_ASSERT_EQUAL_FATAL(dec_forward(&page, &sl, &pp, &lens[k], 1, NULL, 0, NULL, NULL, &err),
                              0);
    }
    float *a = malloc((size_t)3 * V * sizeof *a), *b = malloc((size_t)V * sizeof *b);
    float *a3 = malloc((size_t)3 * V * sizeof *a3);
    int same = 1, nth = omp_get_max_threads();
    DmProbe probe = {s_noop_emit, NULL};
    double worst = 0, range = 0;
    for (int step = 0; step < 6; step++) {
        int32_t tok[3] = {5 + step, 17 + 3 * step, 40 + step};
        const int32_t *tp[3] = {&tok[0], &tok[1], &tok[2]};
        int one[3] = {1, 1, 1};
        DecSeq *fs[3] = {&fast[0], &fast[1], &fast[2]};
        CU_ASSERT_EQUAL_FATAL(dec_forward(&page, fs, tp, one, 3, a, 0, NULL, NULL, &err), 0);
        /* on 3 threads the tiny model's 4 heads do not split evenly: the
         * projections are shared out by rows, with the same arithmetic */
        DecSeq *os[3] = {&odd[0], &odd[1], &odd[2]};
        omp_set_num_threads(3);
        CU_ASSERT_EQUAL_FATAL(dec_forward(&page, os, tp, one, 3, a3, 0, NULL, NULL, &err), 0);
        omp_set_num_threads(nth);
        same &= memcmp(a, a3, (size_t)3 * V * sizeof *a) == 0;
        for (int k = 0; k < 3; k++) {
            DecSeq *sl = &slow[k];
            CU_ASSERT_EQUAL_FATAL(dec_forward(&page, &sl, &tp[k], one, 1, b, 0, NULL, &probe, &err),
                                  0);
            CU_ASSERT_EQUAL(fast[k].len, slow[k].len);
            worst = fmax(worst, tu_maxdiff(a + (size_t)k * V, b, (size_t)V));
            for (int v = 0; v < V; v++)
                range = fmax(range, fabs(b[v]));
        }
    }
    /* float32: the same operations up to the order of the attention sums.
     * bf16: a last-bit difference there can move an activation's bfloat16
     * rounding by one step, so the bound is bf16-sized (1% of the range). */
    double tol = m->precision == DM_PREC_BF16 ? 1e-2 * range : 1e-4;
    printf(" [%s: max diff %.2g of %.3g]", donut_precision_name(m->precision), worst, range);
    CU_ASSERT(worst <= tol);
    CU_ASSERT(same);
    for (int k = 0; k < 3; k++) {
        dec_seq_free(&fast[k]);
        dec_seq_free(&slow[k]);
        dec_seq_free(&odd[k]);
        free(prompts[k]);
    }
    free(a);
    free(a3);
    free(b);
    dec_page_free(&page);
}

static void test_step_vs_general(void)
{
    s_step_vs_general(s_model);
    DonutModel *mb = NULL;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(donut_load_as(TU_TINY, DM_PREC_BF16, &mb, &err), 0);
    s_step_vs_general(mb);
    donut_free(&mb);
}

/* ------------------------------------------------------------- bf16 */

static TuTmp s_tmp = {"/tmp/dm_dec_XXXXXX"};

static void s_tmp_clean(void)
{
    if (!s_tmp.dir[0])
        return;
    unlink(tu_tmp(&s_tmp, "model.safetensors", NULL));
    unlink(tu_tmp(&s_tmp, "config.json", NULL));
    tu_tmp_done(&s_tmp);
}

/* All teacher-forced logits of case k: [T, vocab] (malloc'ed). */
static float *s_forced_logits(const DonutModel *m, int k, int *T)
{
    DecPage page;
    s_page_for(m, k, &page);
    char name[64];
    snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
    int32_t *ids = s_ids(name, T);
    DecSeq seq, *sp = &seq;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(dec_seq_init(&seq, m, *T, &err), 0);
    float *logits = malloc((size_t)*T * m->cfg.dec.vocab * sizeof(float));
    const int32_t *idp = ids;
    CU_ASSERT_EQUAL(dec_forward(&page, &sp, &idp, T, 1, logits, 1, NULL, NULL, &err), 0);
    free(ids);
    dec_seq_free(&seq);
    dec_page_free(&page);
    return logits;
}

/* The model in bf16 against the float32 reference: every decoder matrix and
 * the tied LM head in bfloat16 with their float32 let go, the encoder kept
 * (it has no bf16 path yet), the same fingerprint; teacher-forced logits
 * within 2% of the largest reference logit (bfloat16 rounds weights and
 * activations to 2^-9 relative; through two layers and the LM head that
 * measures 0.6-1.1% here); greedy ids equal to the reference at every step
 * the reference decides: where its margin between the best two scores
 * exceeds twice that step's largest logit error (an undecided step may
 * flip, and a flip ends the comparison). */
static void test_bf16_golden(void)
{
    DonutModel *mb = NULL;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(donut_load_as(TU_TINY, DM_PREC_BF16, &mb, &err), 0);
    CU_ASSERT_EQUAL(mb->precision, DM_PREC_BF16);
    CU_ASSERT_STRING_EQUAL(mb->fingerprint, s_model->fingerprint);
    const DecLayer *L = &mb->dec.layers[0];
    CU_ASSERT(!L->self.q.w && L->self.q.wbf && !L->cross.o.w && L->cross.o.wbf && !L->ffn.fc2.w &&
              L->ffn.fc2.wbf && L->self.q.b && L->ffn.ln.g);
    CU_ASSERT(!mb->dec.embed_tokens && mb->dec.embed_tokens_bf16 &&
              mb->dec.lm_head_bf16 == mb->dec.embed_tokens_bf16 && mb->dec.embed_positions);
    const DmLinear *eq = &mb->enc.stages[0].blocks[0].q; /* the encoder follows DM_SWIN_BF16 */
    CU_ASSERT(DM_SWIN_BF16 ? !eq->w && eq->wbf : eq->w && !eq->wbf);
    CU_ASSERT_EQUAL(L->self.q.wbf[5], dm_f32_to_bf16(s_model->dec.layers[0].self.q.w[5]));
    int V = mb->cfg.dec.vocab;
    for (int k = 0; k < 3; k++) {
        char name[64];
        snprintf(name, sizeof name, "case%d.decoder.logits", k);
        const DmTensor *gl = tensorfile_find(s_gold, name);
        int T;
        float *lg = s_forced_logits(mb, k, &T);
        CU_ASSERT_FATAL(gl && dm_tensor_numel(gl) == (int64_t)T * V);
        double d = tu_maxdiff(lg, gl->data, (size_t)T * V), scale = 0;
        for (size_t i = 0; i < (size_t)T * V; i++)
            scale = fmax(scale, fabs(((const float *)gl->data)[i]));
        CU_ASSERT(d > 0 && d <= 2e-2 * scale);
        free(lg);
        /* generation */
        DecPage page;
        s_page_for(mb, k, &page);
        snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
        int32_t *prompt = s_ids(name, &T);
        snprintf(name, sizeof name, "case%d.generate.ids", k);
        int G;
        int32_t *want = s_ids(name, &G);
        snprintf(name, sizeof name, "case%d.generate.scores", k);
        const DmTensor *sc = tensorfile_find(s_gold, name);
        snprintf(name, sizeof name, "case%d.generate.step_logits", k);
        const DmTensor *sl = tensorfile_find(s_gold, name);
        CU_ASSERT_FATAL(sc && sl);
        GenConfig g;
        gen_config_default(mb, &g);
        GenResult r;
        StepLog log = {0};
        const int32_t *pp = prompt;
        CU_ASSERT_EQUAL_FATAL(gen_greedy(&page, &pp, &T, 1, &g, &r, s_on_step, &log, &err), 0);
        /* step s: the reference decides it when its margin exceeds twice
         * this step's largest logit error; the first undecided step whose
         * id differs ends the comparison (a legitimate flip) */
        int agree = 0, steps = (int)sc->shape[0], checked = 0;
        for (int s = 0; s < steps && s < log.n && T + s < r.len && T + s < G; s++) {
            const float *ref = (const float *)sc->data + (size_t)s * V;
            double eps = tu_maxdiff(log.raw + (size_t)s * V,
                                    (const float *)sl->data + (size_t)s * V, (size_t)V);
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int v = 0; v < V; v++)
                if (ref[v] > b1) {
                    b2 = b1;
                    b1 = ref[v];
                } else if (ref[v] > b2) {
                    b2 = ref[v];
                }
            int same = r.ids[T + s] == want[T + s];
            if (b1 - b2 <= 2 * eps) {
                if (!same)
                    break;
                continue;
            }
            checked++;
            agree += same;
        }
        CU_ASSERT(checked > 0);
        CU_ASSERT_EQUAL(agree, checked);
        int all = r.len == G && !memcmp(r.ids, want, (size_t)G * sizeof *want);
        printf(" [case%d: logits %.2g of %.3g, ids %d/%d decided steps equal, %s]", k, d, scale,
               agree, checked, all ? "all equal" : "an undecided step flipped");
        free(log.raw);
        gen_result_free(&r);
        free(prompt);
        free(want);
        dec_page_free(&page);
    }
    donut_free(&mb);
}

/* A checkpoint whose weight matrices are stored in BF16 runs in bf16
 * without a float32 copy: the decoder's bfloat16 pointers lie in the
 * mapped file, nothing is converted for them, the fingerprint is the one
 * its float32 load gives, and the logits are those of the float32 model
 * converted to bf16 (the same bfloat16 numbers). */
static void test_bf16_file(void)
{
    DmErr err;
    TensorFile *src;
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/model.safetensors", &src, &err), 0);
    StWriter *w = st_writer_new();
    for (int i = 0; i < src->n; i++) {
        const DmTensor *t = &src->t[i];
        size_t n = (size_t)dm_tensor_numel(t);
        int mat = t->ndim == 2 && strstr(t->name, ".weight") && !strstr(t->name, "position");
        if (!mat) {
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
            continue;
        }
        uint16_t *h = malloc(n * sizeof *h);
        for (size_t j = 0; j < n; j++)
            h[j] = dm_f32_to_bf16(((const float *)t->data)[j]);
        st_writer_add(w, t->name, DM_BF16, t->ndim, t->shape, h);
        free(h);
    }
    tensorfile_close(&src);
    CU_ASSERT_EQUAL_FATAL(st_writer_save(w, tu_tmp(&s_tmp, "model.safetensors", s_tmp_clean), &err),
                          0);
    st_writer_free(&w);
    size_t n;
    unsigned char *cfg = tu_slurp(TU_TINY "/config.json", &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    tu_write(tu_tmp(&s_tmp, "config.json", NULL), cfg, n);
    free(cfg);

    DonutModel *mb = NULL, *mf = NULL, *conv = NULL;
    CU_ASSERT_EQUAL_FATAL(donut_load_as(s_tmp.dir, DM_PREC_BF16, &mb, &err), 0);
    CU_ASSERT_EQUAL_FATAL(donut_load(s_tmp.dir, &mf, &err), 0);
    CU_ASSERT_STRING_EQUAL(mb->fingerprint, mf->fingerprint);
    const char *lo = mb->weights->map, *hi = lo + mb->weights->map_len;
    const DecLayer *L = &mb->dec.layers[1];
    const void *in_file[] = {L->self.q.wbf, L->cross.v.wbf, L->ffn.fc1.wbf,
                             mb->dec.embed_tokens_bf16};
    for (int i = 0; i < 4; i++)
        CU_ASSERT((const char *)in_file[i] >= lo && (const char *)in_file[i] < hi);
    CU_ASSERT_PTR_NULL(mb->bf16); /* nothing was converted */
    CU_ASSERT_PTR_NULL(L->self.q.w);

    CU_ASSERT_EQUAL_FATAL(donut_load_as(TU_TINY, DM_PREC_BF16, &conv, &err), 0);
    int T, T2;
    float *a = s_forced_logits(mb, 1, &T), *b = s_forced_logits(conv, 1, &T2);
    CU_ASSERT(T == T2 && !memcmp(a, b, (size_t)T * mb->cfg.dec.vocab * sizeof(float)));
    free(a);
    free(b);
    /* converting again is a no-op; going back is refused */
    CU_ASSERT_EQUAL(donut_set_precision(conv, DM_PREC_BF16, &err), 0);
    CU_ASSERT_EQUAL(donut_set_precision(conv, DM_PREC_F32, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "fp32"));
    donut_free(&mb);
    donut_free(&mf);
    donut_free(&conv);
    s_tmp_clean();
}

void tests_decoder(void)
{
    CU_pSuite s = CU_add_suite("decoder (tiny-a reference)", s_setup, s_teardown);
    CU_add_test(s, "teacher forcing: logits, hidden states, attentions", test_teacher_forcing);
    CU_add_test(s, "greedy generation: ids, step logits, scores", test_generate);
    CU_add_test(s, "batched questions equal single questions", test_generate_batch);
    CU_add_test(s, "pruning plans through hooks match pruned students", test_plan_hooks);
    CU_add_test(s, "decoding step in one parallel region vs the per-operation path",
                test_step_vs_general);
    CU_add_test(s, "bf16: logits and greedy ids against the reference", test_bf16_golden);
    CU_add_test(s, "bf16: a BF16 checkpoint runs in place, no float32 copy", test_bf16_file);
}
