/* test_checkpoint.c - the checkpoint folder: config validation, the three
 * tied-head layouts, half-precision weights, pruned students with
 * physically cut weights, and bad input. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/model/decoder.h"
#include "worker/model/generate.h"
#include "tutil.h"

/* Copy tiny-a's config and weights into a fresh temporary folder, passing
 * each tensor through `edit` (which may rename, drop, convert or cut). */
typedef int (*EditFn)(void *ctx, const DmTensor *t, StWriter *w);

static char *s_make_folder(EditFn edit, void *ctx)
{
    char tmpl[] = "/tmp/docmint-ckpt-XXXXXX";
    char *dir = mkdtemp(tmpl);
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    dir = strdup(dir);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cp " TU_TINY "/config.json %s/", dir);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    TensorFile *tf;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/model.safetensors", &tf, &err), 0);
    StWriter *w = st_writer_new();
    for (int i = 0; i < tf->n; i++)
        if (!edit || edit(ctx, &tf->t[i], w) == 0)
            st_writer_add(w, tf->t[i].name, tf->t[i].dtype, tf->t[i].ndim, tf->t[i].shape,
                          tf->t[i].data);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CU_ASSERT_EQUAL_FATAL(st_writer_save(w, path, &err), 0);
    st_writer_free(&w);
    tensorfile_close(&tf);
    return dir;
}

static void s_rm(char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CU_ASSERT_EQUAL(system(cmd), 0);
    free(dir);
}

/* Decoder logits of golden case k for a model, teacher forcing. */
static float *s_logits(const DonutModel *m, TensorFile *gold, int k, int *T)
{
    char name[96];
    snprintf(name, sizeof name, "case%d.encoder.last_hidden_state", k);
    const DmTensor *enc = tensorfile_find(gold, name);
    snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
    const DmTensor *ti = tensorfile_find(gold, name);
    CU_ASSERT_PTR_NOT_NULL_FATAL(enc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ti);
    *T = (int)ti->shape[1];
    int64_t ids64[128];
    int32_t ids[128];
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(ti, ids64, &err), 0);
    for (int i = 0; i < *T; i++)
        ids[i] = (int32_t)ids64[i];
    DecPage page;
    DecSeq seq, *sp = &seq;
    CU_ASSERT_EQUAL_FATAL(dec_page_init(&page, m, enc->data, (int)enc->shape[1], &err), 0);
    CU_ASSERT_EQUAL_FATAL(dec_seq_init(&seq, m, *T, &err), 0);
    float *logits = malloc((size_t)*T * m->cfg.dec.vocab * sizeof(float));
    const int32_t *idp = ids;
    CU_ASSERT_EQUAL(dec_forward(&page, &sp, &idp, T, 1, logits, 1, NULL, NULL, &err), 0);
    dec_seq_free(&seq);
    dec_page_free(&page);
    return logits;
}

static const char *EMB = "decoder.model.decoder.embed_tokens.weight";
static const char *HEAD = "decoder.lm_head.weight";

static int s_drop_named(void *ctx, const DmTensor *t, StWriter *w)
{
    return strcmp(t->name, ctx) == 0; /* 1 = drop */
}

static void s_check_layout(const char *drop)
{
    char *dir = s_make_folder(s_drop_named, (void *)drop);
    DonutModel *m;
    TensorFile *gold;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(donut_load(dir, &m, &err), 0);
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/expected.safetensors", &gold, &err), 0);
    int T;
    float *lg = s_logits(m, gold, 0, &T);
    const DmTensor *ref = tensorfile_find(gold, "case0.decoder.logits");
    CU_ASSERT(tu_maxdiff(lg, ref->data, (size_t)dm_tensor_numel(ref)) <= 5e-4);
    free(lg);
    tensorfile_close(&gold);
    donut_free(&m);
    s_rm(dir);
}

static void test_tied_layouts(void)
{
    s_check_layout("none");  /* both names stored */
    s_check_layout(HEAD);    /* only the embedding (HF save_pretrained) */
    s_check_layout(EMB);     /* only the LM head (converted files) */
}

/* Half-precision weights load and give the logits of the rounded weights:
 * compare with the float32 model within a tolerance that a float16
 * rounding of every weight allows, and check the loaded values exactly. */
static int s_to_half(void *ctx, const DmTensor *t, StWriter *w)
{
    if (t->dtype != DM_F32)
        return 0;
    int bf = *(int *)ctx;
    size_t n = (size_t)dm_tensor_numel(t);
    uint16_t *h = malloc(n * 2);
    const float *f = t->data;
    for (size_t i = 0; i < n; i++)
        h[i] = bf ? dm_f32_to_bf16(f[i]) : dm_f32_to_f16(f[i]);
    st_writer_add(w, t->name, bf ? DM_BF16 : DM_F16, t->ndim, t->shape, h);
    free(h);
    return 1;
}

static void test_half_weights(void)
{
    for (int bf = 0; bf <= 1; bf++) {
        char *dir = s_make_folder(s_to_half, &bf);
        DonutModel *m;
        DmErr err;
        CU_ASSERT_EQUAL_FATAL(donut_load(dir, &m, &err), 0);
        /* fc1 of layer 0: loaded value = rounded golden value, exactly */
        TensorFile *tf;
        CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/model.safetensors", &tf, &err), 0);
        const DmTensor *t = tensorfile_find(tf, "decoder.model.decoder.layers.0.fc1.weight");
        const float *f = t->data;
        int exact = 1;
        for (int64_t i = 0; i < dm_tensor_numel(t); i++) {
            float want = bf ? dm_bf16_to_f32(dm_f32_to_bf16(f[i])) : dm_f16_to_f32(dm_f32_to_f16(f[i]));
            exact &= m->dec.layers[0].ffn.fc1.w[i] == want;
        }
        CU_ASSERT(exact);
        tensorfile_close(&tf);
        donut_free(&m);
        s_rm(dir);
    }
}

/* A pruned student as docmint stores it: pruning.json plus weights cut to
 * the kept heads and without the removed sub-layers.  Reference: HF's
 * pruned-student logits and generations. */
typedef struct Cut {
    int keep[8][3];
    int heads[8][2][16]; /* kept head list, -1 terminated */
} Cut;

static int s_cut(void *ctx, const DmTensor *t, StWriter *w)
{
    Cut *c = ctx;
    int l;
    char part[64], rest[64];
    if (sscanf(t->name, "decoder.model.decoder.layers.%d.%63[^.].%63s", &l, part, rest) != 3)
        return 0;
    int kind = !strncmp(part, "self_attn", 9) ? 0 : !strncmp(part, "encoder_attn", 12) ? 1 : 2;
    if (!c->keep[l][kind])
        return 1; /* the whole sub-layer (and its LayerNorm) is gone */
    if (kind == 2 || strstr(part, "layer_norm"))
        return 0;
    const int *hs = c->heads[l][kind];
    if (hs[0] < 0)
        return 0;
    int hd = 32, d = 128, nk = 0;
    while (hs[nk] >= 0)
        nk++;
    const float *src = t->data;
    int is_out = strstr(rest, "out_proj") != NULL;
    if (strstr(t->name, "out_proj.bias"))
        return 0;
    float *dst;
    int64_t shape[2];
    if (is_out) { /* out_proj.weight [d, H*hd]: keep columns */
        dst = malloc((size_t)d * nk * hd * sizeof(float));
        for (int r = 0; r < d; r++)
            for (int k = 0; k < nk; k++)
                memcpy(dst + (size_t)r * nk * hd + k * hd, src + (size_t)r * 4 * hd + hs[k] * hd,
                       hd * sizeof(float));
        shape[0] = d;
        shape[1] = nk * hd;
    } else { /* q/k/v weight [H*hd, d] or bias [H*hd]: keep rows */
        int cols = t->ndim == 2 ? d : 1;
        dst = malloc((size_t)nk * hd * cols * sizeof(float));
        for (int k = 0; k < nk; k++)
            memcpy(dst + (size_t)k * hd * cols, src + (size_t)hs[k] * hd * cols,
                   (size_t)hd * cols * sizeof(float));
        shape[0] = nk * hd;
        shape[1] = d;
    }
    st_writer_add_f32(w, t->name, t->ndim, shape, dst);
    free(dst);
    return 1;
}

static void s_check_plan(int pl, Cut *cut, const char *plan_json)
{
    char *dir = s_make_folder(s_cut, cut);
    char path[512];
    snprintf(path, sizeof path, "%s/pruning.json", dir);
    FILE *f = fopen(path, "w");
    fputs(plan_json, f);
    fclose(f);
    DonutModel *m;
    TensorFile *gold, *train;
    DmErr err;
    int loaded = donut_load(dir, &m, &err);
    if (loaded)
        printf("\n  plan%d: %s", pl, err.msg);
    CU_ASSERT_EQUAL_FATAL(loaded, 0);
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/expected.safetensors", &gold, &err), 0);
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/train.safetensors", &train, &err), 0);
    for (int k = 0; k < 3; k++) {
        int T;
        float *lg = s_logits(m, gold, k, &T);
        char name[96];
        snprintf(name, sizeof name, "plan%d.case%d.decoder.logits", pl, k);
        const DmTensor *ref = tensorfile_find(train, name);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
        double d = tu_maxdiff(lg, ref->data, (size_t)dm_tensor_numel(ref));
        CU_ASSERT(d <= 5e-4);
        free(lg);
        /* generation of the student */
        snprintf(name, sizeof name, "case%d.encoder.last_hidden_state", k);
        const DmTensor *enc = tensorfile_find(gold, name);
        snprintf(name, sizeof name, "plan%d.case%d.generate.ids", pl, k);
        const DmTensor *gi = tensorfile_find(train, name);
        CU_ASSERT_PTR_NOT_NULL_FATAL(gi);
        int64_t want[128], p64[128];
        int32_t prompt[128];
        CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(gi, want, &err), 0);
        snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
        CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(tensorfile_find(gold, name), p64, &err), 0);
        for (int i = 0; i < T; i++)
            prompt[i] = (int32_t)p64[i];
        DecPage page;
        CU_ASSERT_EQUAL_FATAL(dec_page_init(&page, m, enc->data, (int)enc->shape[1], &err), 0);
        GenConfig g;
        gen_config_default(m, &g);
        GenResult r;
        const int32_t *pp = prompt;
        CU_ASSERT_EQUAL_FATAL(gen_greedy(&page, &pp, &T, 1, &g, &r, NULL, NULL, &err), 0);
        int same = r.len == gi->shape[1];
        for (int i = 0; same && i < r.len; i++)
            same = r.ids[i] == want[i];
        CU_ASSERT(same);
        printf(" [plan%d case%d logits %.2g, ids %s]", pl, k, d, same ? "equal" : "DIFFER");
        gen_result_free(&r);
        dec_page_free(&page);
    }
    tensorfile_close(&gold);
    tensorfile_close(&train);
    donut_free(&m);
    s_rm(dir);
}

static void test_pruned_students(void)
{
    Cut c1, c2;
    for (int l = 0; l < 8; l++)
        for (int k = 0; k < 3; k++) {
            c1.keep[l][k] = c2.keep[l][k] = 1;
            if (k < 2)
                c1.heads[l][k][0] = c2.heads[l][k][0] = -1;
        }
    /* plan1: S0 and M1 removed; S1 keeps heads 1,2; C1 keeps 0,2,3 */
    c1.keep[0][0] = 0;
    c1.keep[1][2] = 0;
    memcpy(c1.heads[1][0], (int[]){1, 2, -1}, 3 * sizeof(int));
    memcpy(c1.heads[1][1], (int[]){0, 2, 3, -1}, 4 * sizeof(int));
    s_check_plan(1, &c1,
                 "{\"keep\": {\"S0\": false, \"C0\": true, \"M0\": true, \"S1\": true, "
                 "\"C1\": true, \"M1\": false}, \"heads\": {\"S1\": [1, 2], \"C1\": [0, 2, 3]}}");
    /* plan2: S0, C0, M1 removed; C1 keeps heads 1,3 */
    c2.keep[0][0] = c2.keep[0][1] = 0;
    c2.keep[1][2] = 0;
    memcpy(c2.heads[1][1], (int[]){1, 3, -1}, 3 * sizeof(int));
    s_check_plan(2, &c2,
                 "{\"keep\": {\"S0\": false, \"C0\": false, \"M0\": true, \"S1\": true, "
                 "\"C1\": true, \"M1\": false}, \"heads\": {\"C1\": [1, 3]}}");
}

/* Bad input: each gives one line naming the file and the problem. */
static void s_expect_config_error(const char *json, const char *needle)
{
    DonutConfig c;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(donut_config_parse(json, "cfg.json", &c, &err), -1);
    int ok = strstr(err.msg, "cfg.json") && strstr(err.msg, needle);
    if (!ok)
        printf("\n  unexpected message: %s", err.msg);
    CU_ASSERT(ok);
}

static void test_config_errors(void)
{
    FILE *f = fopen(TU_TINY "/config.json", "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    static char text[16384];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    DonutConfig c;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(donut_config_parse(text, "cfg.json", &c, &err), 0);
    CU_ASSERT_EQUAL(c.enc.image_h, 232);
    CU_ASSERT_EQUAL(c.enc.image_w, 200);
    CU_ASSERT_EQUAL(c.dec.max_pos, 64);
    CU_ASSERT_EQUAL(c.dec.forced_eos_id, 2);
    s_expect_config_error("{", "not valid JSON");
    s_expect_config_error("{\"model_type\": \"bert\"}", "model_type");
    static char bad[16384];
    const struct { const char *from, *to, *needle; } subs[] = {
        {"\"model_type\": \"mbart\"", "\"model_type\": \"bart\"", "decoder.model_type"},
        {"\"model_type\": \"donut-swin\"", "\"model_type\": \"vit\"", "encoder.model_type"},
        {"\"activation_function\": \"gelu\"", "\"activation_function\": \"relu\"", "relu"},
        {"\"d_model\": 128", "\"d_model\": \"big\"", "decoder.d_model"},
        {"\"window_size\": 5", "\"window_size\": -5", "window_size"},
        {"\"use_absolute_embeddings\": false", "\"use_absolute_embeddings\": true",
         "use_absolute_embeddings"},
        {"\"vocab_size\": 300", "\"vocab_sizes\": 300", "decoder.vocab_size is missing"},
    };
    for (size_t i = 0; i < sizeof subs / sizeof *subs; i++) {
        char *at = strstr(text, subs[i].from);
        CU_ASSERT_PTR_NOT_NULL_FATAL(at);
        size_t pre = (size_t)(at - text);
        snprintf(bad, sizeof bad, "%.*s%s%s", (int)pre, text, subs[i].to,
                 at + strlen(subs[i].from));
        s_expect_config_error(bad, subs[i].needle);
    }
}

static int s_wrong_shape(void *ctx, const DmTensor *t, StWriter *w)
{
    if (strcmp(t->name, "decoder.model.decoder.layers.1.fc1.weight"))
        return 0;
    int64_t shape[2] = {t->shape[0] - 1, t->shape[1]};
    st_writer_add(w, t->name, t->dtype, 2, shape, t->data);
    return 1;
}

static int s_drop_fc2(void *ctx, const DmTensor *t, StWriter *w)
{
    return !strcmp(t->name, "decoder.model.decoder.layers.0.fc2.bias");
}

static void s_expect_load_error(const char *dir, const char *n1, const char *n2)
{
    DonutModel *m = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(donut_load(dir, &m, &err), -1);
    CU_ASSERT_PTR_NULL(m);
    int ok = strstr(err.msg, n1) && strstr(err.msg, n2);
    if (!ok)
        printf("\n  unexpected message: %s", err.msg);
    CU_ASSERT(ok);
}

static void test_weight_errors(void)
{
    char *dir = s_make_folder(s_wrong_shape, NULL);
    s_expect_load_error(dir, "layers.1.fc1.weight", "shape");
    s_rm(dir);
    dir = s_make_folder(s_drop_fc2, NULL);
    s_expect_load_error(dir, "layers.0.fc2.bias", "missing");
    s_rm(dir);
    /* a truncated weight file */
    dir = s_make_folder(NULL, NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CU_ASSERT_EQUAL(truncate(path, 1000000), 0);
    s_expect_load_error(dir, "model.safetensors", "truncated");
    CU_ASSERT_EQUAL(truncate(path, 4), 0);
    s_expect_load_error(dir, "model.safetensors", "truncated");
    unlink(path);
    s_expect_load_error(dir, dir, "no model.safetensors");
    s_rm(dir);
    s_expect_load_error("/nonexistent/model", "/nonexistent/model", "not found");
}

/* PyTorch's zip checkpoint and safetensors give identical outputs. */
static void test_torch_bin_same_outputs(void)
{
    char tmpl[] = "/tmp/docmint-bin-XXXXXX";
    char *dir = mkdtemp(tmpl);
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cp " TU_TINY "/config.json " TU_TINY "/pytorch_model.bin %s/", dir);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    DonutModel *a, *b;
    TensorFile *gold;
    DmErr err = {{0}};
    int rc = donut_load(dir, &b, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL_FATAL(donut_load(TU_TINY, &a, &err), 0);
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/expected.safetensors", &gold, &err), 0);
    for (int k = 0; k < 3; k++) {
        int T;
        float *la = s_logits(a, gold, k, &T), *lb = s_logits(b, gold, k, &T);
        CU_ASSERT(memcmp(la, lb, (size_t)T * a->cfg.dec.vocab * sizeof(float)) == 0);
        free(la);
        free(lb);
    }
    /* the encoder weights too, bit for bit, and the same fingerprint */
    CU_ASSERT_STRING_EQUAL(a->fingerprint, b->fingerprint);
    CU_ASSERT_EQUAL(strlen(a->fingerprint), 16);
    const SwinBlock *ba = &a->enc.stages[2].blocks[1], *bb = &b->enc.stages[2].blocks[1];
    CU_ASSERT(memcmp(ba->fc1.w, bb->fc1.w, (size_t)ba->fc1.out * ba->fc1.in * 4) == 0);
    CU_ASSERT(memcmp(ba->rel_bias, bb->rel_bias, 81 * 8 * 4) == 0);
    tensorfile_close(&gold);
    donut_free(&a);
    donut_free(&b);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CU_ASSERT_EQUAL(system(cmd), 0);
}

void tests_checkpoint(void)
{
    TU_SUITE("checkpoint", {"config keys and their errors", test_config_errors},
             {"tied LM head: three layouts", test_tied_layouts},
             {"F16 and BF16 weights", test_half_weights},
             {"pruned students with cut weights", test_pruned_students},
             {"weight file errors", test_weight_errors},
             {"pytorch_model.bin equals model.safetensors", test_torch_bin_same_outputs});
}
