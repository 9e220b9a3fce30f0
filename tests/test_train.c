/* test_train.c - the decoder's training math against what PyTorch autograd
 * computed for the tiny reference model (tests/data/tiny-a/train.*):
 * losses, every parameter gradient and the encoder-output gradient of the
 * full model and of two physically cut students, one AdamW step; and,
 * where no golden exists (a top-k teacher), finite differences and the
 * loss formula of kd_loss.c. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/decoder.h"
#include "worker/train/kd_loss.h"
#include "worker/train/train.h"
#include "tutil.h"

static TensorFile *s_gold, *s_train;
static LossCfg s_cfg;
static json_t *s_json;

static int s_setup(void)
{
    DmErr err = {{0}};
    json_error_t je;
    s_json = json_load_file(TU_TINY "/train.json", 0, &je);
    if (!s_json || tensorfile_open(TU_TINY "/expected.safetensors", &s_gold, &err) ||
        tensorfile_open(TU_TINY "/train.safetensors", &s_train, &err)) {
        fprintf(stderr, "train tests: %s %s\n", err.msg, s_json ? "" : je.text);
        return 1;
    }
    json_t *st = json_object_get(s_json, "settings");
    s_cfg.tau = json_number_value(json_object_get(st, "temperature"));
    s_cfg.alpha = json_number_value(json_object_get(st, "alpha"));
    return s_cfg.tau > 0 && s_cfg.alpha > 0 ? 0 : 1;
}

static int s_teardown(void)
{
    tensorfile_close(&s_gold);
    tensorfile_close(&s_train);
    json_decref(s_json);
    return 0;
}

static const DmTensor *s_need(const TensorFile *tf, const char *name)
{
    const DmTensor *t = tensorfile_find(tf, name);
    if (!t)
        printf("\n  missing golden tensor %s", name);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    return t;
}

static double s_scalar(const TensorFile *tf, const char *name)
{
    return ((const float *)s_need(tf, name)->data)[0];
}

/* Case k of the reference: ids, encoder output and the full teacher (every
 * logit known) at the loss positions a = T // 2 .. T-2. */
typedef struct Case {
    int32_t ids[128];
    int T, a;
    const float *enc;
    int n_enc;
    KdTarget teacher[128];
    TrainItem item;
} Case;

static void s_case(int k, Case *c, int V)
{
    char name[96];
    int64_t tmp[128];
    DmErr err;
    snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
    const DmTensor *ti = s_need(s_gold, name);
    c->T = (int)ti->shape[1];
    CU_ASSERT_FATAL(c->T <= 128);
    CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(ti, tmp, &err), 0);
    for (int i = 0; i < c->T; i++)
        c->ids[i] = (int32_t)tmp[i];
    c->a = c->T / 2;
    snprintf(name, sizeof name, "case%d.encoder.last_hidden_state", k);
    const DmTensor *enc = s_need(s_gold, name);
    c->enc = enc->data;
    c->n_enc = (int)enc->shape[1];
    /* the labels of the reference are the next ids at the loss positions */
    snprintf(name, sizeof name, "case%d.labels", k);
    CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(s_need(s_train, name), tmp, &err), 0);
    for (int t = 0; t < c->T; t++)
        CU_ASSERT_EQUAL(tmp[t], t >= c->a && t <= c->T - 2 ? c->ids[t + 1] : -100);
    snprintf(name, sizeof name, "case%d.teacher_logits", k);
    const float *tl = s_need(s_train, name)->data;
    for (int t = c->a; t <= c->T - 2; t++) {
        KdTarget *kt = &c->teacher[t - c->a];
        kt->k = V;
        kt->ids = NULL;
        kt->logits = tl + (size_t)t * V;
        kt->lse = kd_lse(kt->logits, V, s_cfg.tau);
        kt->lse_rest = NAN;
    }
    c->item = (TrainItem){c->enc, c->n_enc, c->ids, c->T, c->a, c->teacher};
}

/* A (possibly cut) model set up for training. */
typedef struct Trainee {
    DonutModel *m;
    TrainParams tp;
} Trainee;

static void s_trainee(const char *dir, Trainee *t)
{
    DmErr err = {{0}};
    int rc = donut_load(dir, &t->m, &err);
    if (rc == 0)
        rc = train_params_init(t->m, &t->tp, &err);
    if (rc)
        printf("\n  %s: %s", dir, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static void s_trainee_free(Trainee *t)
{
    train_params_free(&t->tp);
    donut_free(&t->m);
}

/* Worst max-abs-diff / absmax over the tensors compared so far whose
 * absmax is not a rounding residue. */
static double s_rel_worst;

/* max |a - b| over the tensor, against a tolerance scaled by the golden
 * tensor's absmax (with a floor for gradients that are zero in exact
 * arithmetic, e.g. of the key biases).  Returns the ratio diff / tol. */
static double s_cmp(const char *what, const float *got, const float *want, size_t n, double rel)
{
    double amax = 0.0;
    for (size_t i = 0; i < n; i++)
        amax = fmax(amax, fabs(want[i]));
    double d = tu_maxdiff(got, want, n), tol = rel * amax + 1e-6;
    if (amax > 1e-3)
        s_rel_worst = fmax(s_rel_worst, d / amax);
    if (!(d <= tol))
        printf("\n  %s: max abs diff %.3g, tolerance %.3g (absmax %.3g)", what, d, tol, amax);
    CU_ASSERT(d <= tol);
    return d / tol;
}

static void s_check_loss(const char *prefix, const LossParts *lp, double *worst)
{
    static const char *part[3] = {"ce", "kd", "total"};
    double got[3] = {lp->ce, lp->kd, lp->total};
    for (int i = 0; i < 3; i++) {
        char name[96];
        snprintf(name, sizeof name, "%sloss.%s", prefix, part[i]);
        double want = s_scalar(s_train, name), rel = fabs(got[i] - want) / fabs(want);
        if (!(rel <= 1e-4))
            printf("\n  %s: %.9g, reference %.9g", name, got[i], want);
        CU_ASSERT(rel <= 1e-4);
        *worst = fmax(*worst, rel);
    }
}

/* Every golden gradient `prefix`grad.<name> (but the frozen token
 * embeddings) is a parameter of the same shape and vice versa, and the
 * values agree.  Returns the worst diff / tolerance. */
static double s_check_grads(const Trainee *t, const char *prefix, const float *enc_grad,
                            char *worst_name)
{
    char pre[96];
    snprintf(pre, sizeof pre, "%sgrad.", prefix);
    size_t np = strlen(pre);
    int matched = 0;
    double worst = 0.0;
    for (int i = 0; i < s_train->n; i++) {
        const DmTensor *g = &s_train->t[i];
        if (strncmp(g->name, pre, np) || strstr(g->name, "embed_tokens"))
            continue;
        const char *pname = g->name + np;
        double r;
        if (!strcmp(pname, "encoder_hidden_states")) {
            r = s_cmp(g->name, enc_grad, g->data, (size_t)dm_tensor_numel(g), 1e-4);
        } else {
            const TrainParam *p = train_param_find(&t->tp, pname);
            int same = p && p->ndim == g->ndim && p->shape[0] == g->shape[0] &&
                       (p->ndim == 1 || p->shape[1] == g->shape[1]);
            if (!same)
                printf("\n  %s: %s", g->name, p ? "shape differs" : "no such parameter");
            CU_ASSERT_FATAL(same);
            matched++;
            r = s_cmp(g->name, t->tp.grad + p->offset, g->data, p->count, 1e-4);
        }
        if (r > worst) {
            worst = r;
            snprintf(worst_name, 128, "%s", pname);
        }
    }
    if (matched != t->tp.n)
        printf("\n  %s: %d parameters, %d golden gradients", prefix, t->tp.n, matched);
    CU_ASSERT_EQUAL(matched, t->tp.n);
    return worst;
}

/* One case through train_item_grad, accumulated as two half-scale calls
 * (the gradient of a batch is a sum of scaled items). */
static void s_grad_case(Trainee *t, int k, LossParts *lp, float *enc_grad)
{
    Case c;
    s_case(k, &c, t->m->cfg.dec.vocab);
    DmErr err = {{0}};
    memset(t->tp.grad, 0, t->tp.total * sizeof(float));
    memset(enc_grad, 0, (size_t)c.n_enc * t->m->cfg.dec.d_model * sizeof(float));
    for (int rep = 0; rep < 2; rep++) {
        int rc = train_item_grad(t->m, &t->tp, &c.item, &s_cfg, 0.5, lp, enc_grad, &err);
        if (rc)
            printf("\n  case%d: %s", k, err.msg);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
    }
    CU_ASSERT_EQUAL(lp->positions, c.T - 1 - c.a);
}

/* Both ways of computing cross-attention (TrainCross) against the
 * reference. */
static const TrainCross s_paths[2] = {TRAIN_CROSS_KV, TRAIN_CROSS_FACTORED};
static const char *s_path_name[2] = {"keys/values", "factored"};

static void test_golden_full(void)
{
    Trainee t;
    s_trainee(TU_TINY, &t);
    float *enc_grad = malloc(4096 * 128 * sizeof(float));
    double wl = 0.0;
    for (int k = 0; k < 6; k++) {
        t.tp.cross = s_paths[k / 3];
        if (k % 3 == 0)
            printf("\n    cross-attention by %s:", s_path_name[k / 3]);
        LossParts lp;
        s_grad_case(&t, k % 3, &lp, enc_grad);
        char prefix[32], worst[128] = "";
        snprintf(prefix, sizeof prefix, "case%d.", k % 3);
        s_check_loss(prefix, &lp, &wl);
        s_rel_worst = 0.0;
        double wg = s_check_grads(&t, prefix, enc_grad, worst);
        printf(" [case%d: grads worst %.2f of tolerance (%s), worst diff/absmax %.2g]", k % 3,
               wg, worst, s_rel_worst);
    }
    printf(" [losses: worst relative %.2g]", wl);
    free(enc_grad);
    s_trainee_free(&t);
}

/* ------------------------------------------------------- pruned students */

/* A student folder as docmint stores one: the plan as pruning.json and
 * tiny-a's weights without the removed sub-layers and cut to the kept
 * heads (q/k/v rows, out_proj columns). */
static void s_student(int pl, char *dir, size_t dn)
{
    char path[512];
    snprintf(dir, dn, "/tmp/docmint-train-XXXXXX");
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    json_error_t je;
    snprintf(path, sizeof path, TU_TINY "/plan%d.json", pl);
    json_t *plan = json_load_file(path, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(plan);
    snprintf(path, sizeof path, "%s/pruning.json", dir);
    CU_ASSERT_EQUAL_FATAL(json_dump_file(plan, path, 0), 0);
    size_t n;
    unsigned char *cfg = tu_slurp(TU_TINY "/config.json", &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    tu_write(path, cfg, n);
    free(cfg);
    DonutModel *full;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(donut_load(TU_TINY, &full, &err), 0);
    int hd = full->dec.head_dim;
    StWriter *w = st_writer_new();
    const TensorFile *tf = full->weights;
    for (int i = 0; i < tf->n; i++) {
        const DmTensor *t = &tf->t[i];
        int l, off = 0;
        char key[8];
        if (sscanf(t->name, "decoder.model.decoder.layers.%d.%n", &l, &off) != 1 || !off) {
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
            continue;
        }
        const char *rest = t->name + off;
        char kind = !strncmp(rest, "self_attn", 9) ? 'S' : !strncmp(rest, "encoder_attn", 12) ? 'C' : 'M';
        snprintf(key, sizeof key, "%c%d", kind, l);
        json_t *keep = json_object_get(json_object_get(plan, "keep"), key);
        if (keep && !json_is_true(keep))
            continue;
        json_t *heads = json_object_get(json_object_get(plan, "heads"), key);
        int is_proj = strstr(rest, "_proj.") != NULL, is_out = strstr(rest, "out_proj.") != NULL;
        if (!heads || !is_proj || (is_out && t->ndim == 1)) {
            st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
            continue;
        }
        int nk = (int)json_array_size(heads);
        const float *src = t->data;
        int64_t rows = t->shape[0], cols = t->ndim == 2 ? t->shape[1] : 1;
        int64_t shape[2] = {is_out ? rows : nk * hd, is_out ? nk * hd : cols};
        float *dst = malloc((size_t)shape[0] * shape[1] * sizeof(float));
        for (int64_t r = 0; r < shape[0]; r++)
            for (int64_t c = 0; c < shape[1]; c++) {
                int64_t kept = is_out ? c : r, h = json_integer_value(json_array_get(heads, (size_t)(kept / hd)));
                int64_t sr = is_out ? r : h * hd + r % hd, sc = is_out ? h * hd + c % hd : c;
                dst[r * shape[1] + c] = src[sr * cols + sc];
            }
        st_writer_add_f32(w, t->name, t->ndim, shape, dst);
        free(dst);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CU_ASSERT_EQUAL_FATAL(st_writer_save(w, path, &err), 0);
    st_writer_free(&w);
    donut_free(&full);
    json_decref(plan);
}

static void s_rm_student(const char *dir)
{
    char path[512];
    static const char *files[2] = {"pruning.json", "config.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        CU_ASSERT_EQUAL(unlink(path), 0);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CU_ASSERT_EQUAL(unlink(path), 0);
    CU_ASSERT_EQUAL(rmdir(dir), 0);
}

static void test_golden_students(void)
{
    for (int run = 0; run < 4; run++) {
        int pl = 1 + run / 2;
        char dir[64];
        s_student(pl, dir, sizeof dir);
        Trainee t;
        s_trainee(dir, &t);
        t.tp.cross = s_paths[run % 2];
        printf("\n    cross-attention by %s:", s_path_name[run % 2]);
        float *enc_grad = malloc(4096 * 128 * sizeof(float));
        double wl = 0.0, wg = 0.0;
        char worst[128] = "";
        s_rel_worst = 0.0;
        for (int k = 0; k < 3; k++) {
            LossParts lp;
            s_grad_case(&t, k, &lp, enc_grad);
            char prefix[32];
            snprintf(prefix, sizeof prefix, "plan%d.case%d.", pl, k);
            s_check_loss(prefix, &lp, &wl);
            if (k == 0)
                wg = s_check_grads(&t, prefix, enc_grad, worst);
        }
        printf(" [plan%d: %d tensors, loss worst relative %.2g, case0 grads worst %.2f of "
               "tolerance (%s), worst diff/absmax %.2g]",
               pl, t.tp.n, wl, wg, worst, s_rel_worst);
        free(enc_grad);
        s_trainee_free(&t);
        s_rm_student(dir);
    }
}

/* ------------------------------------------------------------------ AdamW */

static void test_adamw(void)
{
    Trainee t;
    s_trainee(TU_TINY, &t);
    json_t *aj = json_object_get(s_json, "adamw");
    json_t *betas = json_object_get(aj, "betas");
    double lr = json_number_value(json_object_get(aj, "lr"));
    CU_ASSERT_EQUAL_FATAL((int)json_integer_value(json_object_get(aj, "n_params")), t.tp.n);
    for (int i = 0; i < t.tp.n; i++) {
        char name[192];
        snprintf(name, sizeof name, "case0.grad.%s", t.tp.p[i].name);
        memcpy(t.tp.grad + t.tp.p[i].offset, s_need(s_train, name)->data,
               t.tp.p[i].count * sizeof(float));
    }
    AdamW o;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(adamw_init(&o, t.tp.total, json_number_value(json_array_get(betas, 0)),
                                     json_number_value(json_array_get(betas, 1)),
                                     json_number_value(json_object_get(aj, "eps")),
                                     json_number_value(json_object_get(aj, "weight_decay")), &err),
                          0);
    adamw_step(&o, t.tp.data, t.tp.grad, lr);
    CU_ASSERT_EQUAL(o.step, 1);
    json_t *saved = json_object_get(aj, "saved");
    double worst = 0.0;
    for (size_t i = 0; i < json_array_size(saved); i++) {
        const char *pname = json_string_value(json_array_get(saved, i));
        char name[192];
        snprintf(name, sizeof name, "adamw.after.%s", pname);
        const TrainParam *p = train_param_find(&t.tp, pname);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p);
        const float *want = s_need(s_train, name)->data;
        /* within a float32 unit in the last place of the weights (~1e-7;
         * leaving out the weight decay would be off by lr * wd * w ~ 1e-5) */
        double d = tu_maxdiff(t.tp.data + p->offset, want, p->count);
        CU_ASSERT(d <= 2.5e-7);
        worst = fmax(worst, d);
    }
    printf(" [%zu tensors, max abs diff %.2g]", json_array_size(saved), worst);
    adamw_free(&o);
    s_trainee_free(&t);
}

/* ------------------------------------------- top-k teacher: no golden */

/* A top-k teacher from case logits: the k largest, the log-sum-exp over all
 * and over the rest. */
typedef struct TopK {
    uint32_t ids[128][300];
    float vals[128][300];
    KdTarget t[128];
} TopK;

static void s_topk(const Case *c, int V, int k, int with_rest, TopK *tk)
{
    for (int j = 0; j < c->T - 1 - c->a; j++) {
        const float *z = c->teacher[j].logits;
        kd_topk(z, V, k, tk->ids[j]);
        char kept[300] = {0};
        for (int i = 0; i < k; i++) {
            tk->vals[j][i] = z[tk->ids[j][i]];
            kept[tk->ids[j][i]] = 1;
        }
        double m = -INFINITY, s = 0.0;
        for (int v = 0; v < V; v++)
            if (!kept[v])
                m = fmax(m, z[v] / s_cfg.tau);
        for (int v = 0; v < V; v++)
            if (!kept[v])
                s += exp(z[v] / s_cfg.tau - m);
        tk->t[j] = (KdTarget){k, tk->ids[j], tk->vals[j], kd_lse(z, V, s_cfg.tau),
                              with_rest ? m + log(s) : NAN};
    }
}

/* The loss of train_item_grad equals, from the ordinary forward's logits,
 * the cross-entropy and tau^2 * mean kd_kl_topk of kd_loss.c. */
static void test_topk_loss_matches_kd_loss(void)
{
    Trainee t;
    s_trainee(TU_TINY, &t);
    int V = t.m->cfg.dec.vocab;
    TopK *tk = malloc(sizeof *tk);
    double worst = 0.0;
    for (int k = 0; k < 3; k++) {
        Case c;
        s_case(k, &c, V);
        int kk[3] = {V, 150, 20};
        double kd_full = 0.0;
        for (int variant = 0; variant < 3; variant++) {
            s_topk(&c, V, kk[variant], variant == 2, tk);
            c.item.teacher = tk->t;
            LossParts lp;
            DmErr err;
            CU_ASSERT_EQUAL_FATAL(train_item_grad(t.m, &t.tp, &c.item, &s_cfg, 0.0, &lp, NULL, &err), 0);
            DecPage page;
            DecSeq seq, *sp = &seq;
            float *lg = malloc((size_t)c.T * V * sizeof(float));
            const int32_t *idp = c.ids;
            CU_ASSERT_EQUAL_FATAL(dec_page_init(&page, t.m, c.enc, c.n_enc, &err), 0);
            CU_ASSERT_EQUAL_FATAL(dec_seq_init(&seq, t.m, c.T, &err), 0);
            CU_ASSERT_EQUAL_FATAL(dec_forward(&page, &sp, &idp, &c.T, 1, lg, 1, NULL, NULL, &err), 0);
            double ce = 0.0, kd = 0.0;
            int n = c.T - 1 - c.a;
            for (int j = 0; j < n; j++) {
                const float *s = lg + (size_t)(c.a + j) * V;
                double vals[300];
                for (int i = 0; i < tk->t[j].k; i++)
                    vals[i] = tk->vals[j][i];
                kd += kd_kl_topk(vals, tk->ids[j], tk->t[j].k, tk->t[j].lse, tk->t[j].lse_rest, s,
                                 V, s_cfg.tau);
                ce += kd_lse(s, V, 1.0) - s[c.ids[c.a + j + 1]];
            }
            ce /= n;
            kd *= s_cfg.tau * s_cfg.tau / n;
            double want[3] = {ce, kd, ce + s_cfg.alpha * kd}, got[3] = {lp.ce, lp.kd, lp.total};
            for (int i = 0; i < 3; i++) {
                double rel = fabs(got[i] - want[i]) / fabs(want[i]);
                CU_ASSERT(rel <= 1e-5);
                worst = fmax(worst, rel);
            }
            /* fewer kept tokens: a lower bound of the full KL */
            if (variant == 0)
                kd_full = lp.kd;
            CU_ASSERT(lp.kd <= kd_full * (1 + 1e-12));
            free(lg);
            dec_seq_free(&seq);
            dec_page_free(&page);
        }
    }
    printf(" [worst relative %.2g]", worst);
    free(tk);
    s_trainee_free(&t);
}

/* d loss / d logits of one position against central differences (the
 * loss is evaluated in double from float logits, so the step taken is the
 * exact difference of the two float inputs). */
static void test_loss_row_fd(void)
{
    int V = 300;
    Case c;
    s_case(1, &c, V);
    TopK *tk = malloc(sizeof *tk);
    float s[300];
    double g[300], scratch[300], worst = 0.0;
    uint64_t r = 7;
    for (int v = 0; v < V; v++) { /* student logits spread like the model's */
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        s[v] = 0.8f * c.teacher[0].logits[v] + (float)((double)(r >> 11) / 9007199254740992.0 - 0.5);
    }
    for (int variant = 0; variant < 4; variant++) {
        const KdTarget *t = NULL;
        if (variant < 3) {
            s_topk(&c, V, variant == 2 ? V : 12, variant == 0, tk);
            t = &tk->t[0];
        }
        DmErr err;
        double ce, kl;
        CU_ASSERT_EQUAL_FATAL(train_loss_row(s, V, 17, t, &s_cfg, &ce, &kl, g, &err), 0);
        double gmax = 0.0, dmax = 0.0;
        for (int v = 0; v < V; v++) {
            float keep = s[v], hi = keep + 1e-3f, lo = keep - 1e-3f;
            double lh, ll, cl, kh, kl2;
            s[v] = hi;
            train_loss_row(s, V, 17, t, &s_cfg, &cl, &kh, scratch, &err);
            lh = cl + s_cfg.alpha * s_cfg.tau * s_cfg.tau * kh;
            s[v] = lo;
            train_loss_row(s, V, 17, t, &s_cfg, &cl, &kl2, scratch, &err);
            ll = cl + s_cfg.alpha * s_cfg.tau * s_cfg.tau * kl2;
            s[v] = keep;
            double fd = (lh - ll) / ((double)hi - (double)lo);
            dmax = fmax(dmax, fabs(fd - g[v]));
            gmax = fmax(gmax, fabs(g[v]));
        }
        CU_ASSERT(dmax <= 1e-6 * gmax + 1e-9);
        worst = fmax(worst, dmax / gmax);
        /* the KL at one position is kd_kl_topk's */
        if (t) {
            double vals[300];
            for (int i = 0; i < t->k; i++)
                vals[i] = t->logits[i];
            CU_ASSERT_DOUBLE_EQUAL(kl, kd_kl_topk(vals, t->ids, t->k, t->lse, t->lse_rest, s, V,
                                                  s_cfg.tau), 1e-12);
        }
    }
    printf(" [worst |fd - grad| / max|grad| %.2g]", worst);
    free(tk);
}

/* Whole-model central differences with a top-k teacher (k = 20, stored
 * rest mass) on sampled coordinates of several tensors and of the encoder
 * output.  Float32 forward: a step of 1e-2 keeps the rounding of the loss
 * small against the difference. */
static double s_total(Trainee *t, const TrainItem *it)
{
    LossParts lp;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(train_item_grad(t->m, &t->tp, it, &s_cfg, 0.0, &lp, NULL, &err), 0);
    return lp.total;
}

static void test_model_fd_topk(void)
{
    Trainee t;
    s_trainee(TU_TINY, &t);
    int V = t.m->cfg.dec.vocab, D = t.m->cfg.dec.d_model;
    Case c;
    s_case(2, &c, V);
    TopK *tk = malloc(sizeof *tk);
    s_topk(&c, V, 20, 1, tk);
    c.item.teacher = tk->t;
    float *enc = malloc((size_t)c.n_enc * D * sizeof(float));
    float *enc_grad = calloc((size_t)c.n_enc * D, sizeof(float));
    memcpy(enc, c.enc, (size_t)c.n_enc * D * sizeof(float));
    c.item.enc = enc;
    memset(t.tp.grad, 0, t.tp.total * sizeof(float));
    LossParts lp;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(train_item_grad(t.m, &t.tp, &c.item, &s_cfg, 1.0, &lp, enc_grad, &err), 0);
    static const char *names[] = {
        "decoder.model.decoder.embed_positions.weight",
        "decoder.model.decoder.layernorm_embedding.weight",
        "decoder.model.decoder.layers.0.self_attn.q_proj.weight",
        "decoder.model.decoder.layers.0.self_attn.v_proj.bias",
        "decoder.model.decoder.layers.0.encoder_attn.k_proj.weight",
        "decoder.model.decoder.layers.1.encoder_attn.out_proj.weight",
        "decoder.model.decoder.layers.1.fc1.weight",
        "decoder.model.decoder.layers.1.final_layer_norm.bias",
        "decoder.model.decoder.layer_norm.weight",
        NULL /* the encoder output */
    };
    double worst = 0.0;
    for (int ni = 0; ni < (int)(sizeof names / sizeof *names); ni++) {
        float *x, *g;
        size_t count;
        if (names[ni]) {
            const TrainParam *p = train_param_find(&t.tp, names[ni]);
            CU_ASSERT_PTR_NOT_NULL_FATAL(p);
            x = t.tp.data + p->offset;
            g = t.tp.grad + p->offset;
            count = p->count;
        } else {
            x = enc;
            g = enc_grad;
            count = (size_t)c.n_enc * D;
        }
        /* the largest gradient entry and a few others */
        size_t pick[6] = {0};
        for (size_t i = 0; i < count; i++)
            if (fabsf(g[i]) > fabsf(g[pick[0]]))
                pick[0] = i;
        for (int j = 1; j < 6; j++)
            pick[j] = (pick[0] + 7919u * j * j) % count;
        double gmax = fabs(g[pick[0]]);
        for (int j = 0; j < 6; j++) {
            float keep = x[pick[j]], hi = keep + 1e-2f, lo = keep - 1e-2f;
            x[pick[j]] = hi;
            double lh = s_total(&t, &c.item);
            x[pick[j]] = lo;
            double ll = s_total(&t, &c.item);
            x[pick[j]] = keep;
            double fd = (lh - ll) / ((double)hi - (double)lo);
            /* the rounding of a float32 loss of ~20 over a step of 2e-2
             * leaves ~1e-4 of noise */
            double d = fabs(fd - g[pick[j]]) / (5e-3 * gmax + 2e-4);
            if (!(d <= 1))
                printf("\n  %s[%zu]: fd %.6g, backward %.6g", names[ni] ? names[ni] : "enc",
                       pick[j], fd, g[pick[j]]);
            CU_ASSERT(d <= 1);
            worst = fmax(worst, d);
        }
    }
    printf(" [worst %.2f of tolerance]", worst);
    free(enc);
    free(enc_grad);
    free(tk);
    s_trainee_free(&t);
}

/* ------------------------------------------------- wiring and bad input */

/* The ordinary forward runs on the trained buffer: zeroing the final
 * LayerNorm there makes every logit zero. */
static void test_forward_uses_buffer(void)
{
    Trainee t;
    s_trainee(TU_TINY, &t);
    const TrainParam *g = train_param_find(&t.tp, "decoder.model.decoder.layer_norm.weight");
    const TrainParam *b = train_param_find(&t.tp, "decoder.model.decoder.layer_norm.bias");
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_PTR_NULL(train_param_find(&t.tp, "decoder.model.decoder.embed_tokens.weight"));
    memset(t.tp.data + g->offset, 0, g->count * sizeof(float));
    memset(t.tp.data + b->offset, 0, b->count * sizeof(float));
    Case c;
    int V = t.m->cfg.dec.vocab;
    s_case(0, &c, V);
    DecPage page;
    DecSeq seq, *sp = &seq;
    DmErr err;
    float *lg = malloc((size_t)c.T * V * sizeof(float));
    const int32_t *idp = c.ids;
    CU_ASSERT_EQUAL_FATAL(dec_page_init(&page, t.m, c.enc, c.n_enc, &err), 0);
    CU_ASSERT_EQUAL_FATAL(dec_seq_init(&seq, t.m, c.T, &err), 0);
    CU_ASSERT_EQUAL_FATAL(dec_forward(&page, &sp, &idp, &c.T, 1, lg, 1, NULL, NULL, &err), 0);
    float zero[300] = {0};
    CU_ASSERT_EQUAL(tu_maxdiff(lg, zero, (size_t)V), 0.0);
    free(lg);
    dec_seq_free(&seq);
    dec_page_free(&page);
    s_trainee_free(&t);
}

static void test_bad_input(void)
{
    Trainee t;
    s_trainee(TU_TINY, &t);
    int V = t.m->cfg.dec.vocab;
    Case c;
    s_case(0, &c, V);
    LossParts lp;
    DmErr err = {{0}};
    TrainItem it = c.item;
    it.answer_start = c.T - 1;
    CU_ASSERT_EQUAL(train_item_grad(t.m, &t.tp, &it, &s_cfg, 1.0, &lp, NULL, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "answer start"));
    it = c.item;
    c.ids[1] = V;
    CU_ASSERT_EQUAL(train_item_grad(t.m, &t.tp, &it, &s_cfg, 1.0, &lp, NULL, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "outside the vocabulary"));
    c.ids[1] = 0;
    KdTarget bad = c.teacher[0];
    bad.k = 5; /* fewer than the vocabulary and no ids */
    it.teacher = &bad;
    CU_ASSERT_EQUAL(train_item_grad(t.m, &t.tp, &it, &s_cfg, 1.0, &lp, NULL, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "without their ids"));
    CU_ASSERT_PTR_NULL(strchr(err.msg, '\n'));
    s_trainee_free(&t);
}

void tests_train(void)
{
    CU_pSuite s = CU_add_suite("train (tiny-a autograd reference)", s_setup, s_teardown);
    CU_add_test(s, "losses and gradients of the full model", test_golden_full);
    CU_add_test(s, "losses and gradients of cut students", test_golden_students);
    CU_add_test(s, "one AdamW step", test_adamw);
    CU_add_test(s, "top-k loss equals kd_kl_topk", test_topk_loss_matches_kd_loss);
    CU_add_test(s, "loss gradient on the logits by central differences", test_loss_row_fd);
    CU_add_test(s, "model gradient with a top-k teacher by central differences",
                test_model_fd_topk);
    CU_add_test(s, "ordinary forward uses the trained buffer", test_forward_uses_buffer);
    CU_add_test(s, "bad input", test_bad_input);
}
