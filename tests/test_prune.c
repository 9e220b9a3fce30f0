/* test_prune.c - pruning plans, pruned checkpoints and parameter counts.
 *
 * References: the pruned students Hugging Face computed for tiny-a
 * (train.safetensors: plan<N>.case<K>.decoder.logits and .generate.ids,
 * and the gradient tensors of each student, whose shapes are the shapes of
 * its cut weights), the teacher's weights cut here by index arithmetic
 * written in the test, the safetensors headers of the written files, and
 * the parameter formula of an mBART decoder layer. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "worker/model/decoder.h"
#include "worker/model/generate.h"
#include "worker/model/plan.h"
#include "tutil.h"

static TuTmp s_tmp = {"/tmp/dm_prune_XXXXXX"};

static void s_cleanup(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_tmp.dir);
    if (s_tmp.dir[0] && system(cmd) != 0)
        fprintf(stderr, "test_prune: could not remove %s\n", s_tmp.dir);
    s_tmp.dir[0] = 0;
}

/* A file in the scratch folder, as a string the caller keeps. */
static char *s_path(const char *name)
{
    return strdup(tu_tmp(&s_tmp, name, s_cleanup));
}

static char *s_write_plan(const char *name, const char *json)
{
    char *p = s_path(name);
    tu_write(p, json, strlen(json));
    return p;
}

/* The same two plans as the reference files, in the list spelling. */
static const char *s_list_plan[3] = {
    NULL,
    "{\"keep\": [\"C0\", \"M0\", \"S1\", \"C1\"], \"heads\": [\"S1.H2\", \"S1.H1\", \"C1.H0\", "
    "\"C1.H2\", \"C1.H3\"]}",
    "{\"keep\": [\"M0\", \"S1\", \"C1\"], \"heads\": [\"C1.H1\", \"C1.H3\"]}",
};

/* The reference tensor named by fmt (with %d = k, or no %d); it must exist. */
static const DmTensor *s_find(const TensorFile *tf, const char *fmt, int k)
{
    char name[128];
    snprintf(name, sizeof name, fmt, k);
    const DmTensor *t = tensorfile_find(tf, name);
    if (!t)
        printf("\n  %s: not in %s", name, tf->path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    return t;
}

/* Student pl's decoder logits and greedy ids on the three reference cases
 * against Hugging Face's pruned student. */
static void s_check_outputs(const char *dir, int pl)
{
    DonutModel *m;
    TensorFile *gold, *train;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(donut_load(dir, &m, &err), 0);
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/expected.safetensors", &gold, &err), 0);
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/train.safetensors", &train, &err), 0);
    int V = m->cfg.dec.vocab;
    for (int k = 0; k < 3; k++) {
        const DmTensor *enc = s_find(gold, "case%d.encoder.last_hidden_state", k);
        const DmTensor *ti = s_find(gold, "case%d.decoder_input_ids", k);
        int T = (int)ti->shape[1];
        int64_t i64[128];
        int32_t prompt[128];
        CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(ti, i64, &err), 0);
        for (int i = 0; i < T; i++)
            prompt[i] = (int32_t)i64[i];
        DecPage page;
        CU_ASSERT_EQUAL_FATAL(dec_page_init(&page, m, enc->data, (int)enc->shape[1], &err), 0);
        /* teacher forcing, keeping the logits the probe emits */
        DecSeq seq, *sp = &seq;
        CU_ASSERT_EQUAL_FATAL(dec_seq_init(&seq, m, T, &err), 0);
        float *logits = malloc((size_t)T * V * sizeof(float));
        TuCollect col = {0};
        DmProbe probe = {tu_collect_emit, &col};
        const int32_t *pp = prompt;
        CU_ASSERT_EQUAL(dec_forward(&page, &sp, &pp, &T, 1, logits, 1, NULL, &probe, &err), 0);
        char prefix[32];
        snprintf(prefix, sizeof prefix, "plan%d.case%d.", pl, k);
        double d = tu_check_tensor(&col, train, prefix, "decoder.logits", 5e-4);
        /* greedy generation */
        const DmTensor *gi = s_find(train, strcat(prefix, "generate.ids"), 0);
        CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(gi, i64, &err), 0);
        GenConfig g;
        gen_config_default(m, &g);
        GenResult r;
        CU_ASSERT_EQUAL_FATAL(gen_greedy(&page, &pp, &T, 1, &g, &r, NULL, NULL, &err), 0);
        int same = r.len == gi->shape[1];
        for (int i = 0; same && i < r.len; i++)
            same = r.ids[i] == i64[i];
        CU_ASSERT(same);
        printf(" [plan%d case%d %.2g, %d ids %s]", pl, k, d, r.len, same ? "equal" : "DIFFER");
        gen_result_free(&r);
        tu_collect_free(&col);
        free(logits);
        dec_seq_free(&seq);
        dec_page_free(&page);
    }
    tensorfile_close(&gold);
    tensorfile_close(&train);
    donut_free(&m);
}

/* Kept head ids of sub-layer part ("self_attn"/"encoder_attn") of layer l
 * in reference plan pl (read from train.json's description would be the
 * same; written out here from the plan files). */
static int s_ref_heads(int pl, int l, const char *part, int *ids)
{
    static const int p1s1[] = {1, 2}, p1c1[] = {0, 2, 3}, p2c1[] = {1, 3};
    const int *src = NULL;
    int n = 4;
    if (l == 1 && pl == 1 && !strcmp(part, "self_attn"))
        src = p1s1, n = 2;
    else if (l == 1 && pl == 1 && !strcmp(part, "encoder_attn"))
        src = p1c1, n = 3;
    else if (l == 1 && pl == 2 && !strcmp(part, "encoder_attn"))
        src = p2c1, n = 2;
    for (int i = 0; i < n; i++)
        ids[i] = src ? src[i] : i;
    return n;
}

/* Every tensor of the student: the decoder layers' names and shapes are
 * those of HF's student (its gradients in train.safetensors), their values
 * the teacher's rows or columns of the kept heads; every other tensor is
 * the teacher's, byte for byte. */
static void s_check_tensors(const char *dir, int pl)
{
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    TensorFile *st, *teacher, *train;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(path, &st, &err), 0);
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/model.safetensors", &teacher, &err), 0);
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/train.safetensors", &train, &err), 0);
    char gprefix[64];
    snprintf(gprefix, sizeof gprefix, "plan%d.case0.grad.", pl);
    size_t glen = strlen(gprefix);
    int layer_tensors = 0, hf_layer_tensors = 0, bad = 0;
    for (int i = 0; i < train->n; i++)
        hf_layer_tensors += !strncmp(train->t[i].name, gprefix, glen) &&
                            strstr(train->t[i].name, ".layers.") != NULL;
    for (int i = 0; i < st->n; i++) {
        const DmTensor *t = &st->t[i];
        const DmTensor *src = tensorfile_find(teacher, t->name);
        CU_ASSERT_PTR_NOT_NULL_FATAL(src);
        int l;
        char part[64], rest[64];
        if (sscanf(t->name, "decoder.model.decoder.layers.%d.%63[^.].%63s", &l, part, rest) != 3) {
            int same = t->nbytes == src->nbytes && !memcmp(t->data, src->data, t->nbytes);
            bad += !same;
            continue;
        }
        layer_tensors++;
        snprintf(path, sizeof path, "%s%s", gprefix, t->name);
        const DmTensor *hf = tensorfile_find(train, path);
        int shape_ok = hf && hf->ndim == t->ndim;
        for (int d = 0; shape_ok && d < t->ndim; d++)
            shape_ok = hf->shape[d] == t->shape[d];
        if (!shape_ok)
            printf("\n  %s: shape differs from HF's student", t->name);
        bad += !shape_ok;
        /* values: q/k/v rows of kept head h are the teacher's rows h*hd..;
         * out_proj.weight columns likewise; everything else whole */
        int ids[16], nk = 4, hd = 32, D = 128;
        if (!strcmp(part, "self_attn") || !strcmp(part, "encoder_attn"))
            nk = s_ref_heads(pl, l, part, ids);
        const float *a = t->data, *b = src->data;
        int same = 1;
        if (nk == 4 || !strcmp(rest, "out_proj.bias")) {
            same = t->nbytes == src->nbytes && !memcmp(a, b, t->nbytes);
        } else if (!strcmp(rest, "out_proj.weight")) {
            for (int r = 0; r < D; r++)
                for (int k = 0; k < nk; k++)
                    same &= !memcmp(a + (size_t)r * nk * hd + k * hd, b + (size_t)r * 4 * hd + ids[k] * hd,
                                    hd * sizeof(float));
        } else {
            int cols = t->ndim == 2 ? D : 1;
            for (int k = 0; k < nk; k++)
                same &= !memcmp(a + (size_t)k * hd * cols, b + (size_t)ids[k] * hd * cols,
                                (size_t)hd * cols * sizeof(float));
        }
        if (!same)
            printf("\n  %s: values are not the teacher's kept heads", t->name);
        bad += !same;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(layer_tensors, hf_layer_tensors);
    printf(" [plan%d: %d layer tensors, HF %d]", pl, layer_tensors, hf_layer_tensors);
    tensorfile_close(&st);
    tensorfile_close(&teacher);
    tensorfile_close(&train);
}

static int s_same_file(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    unsigned char *pa = tu_slurp(a, &na), *pb = tu_slurp(b, &nb);
    int same = pa && pb && na == nb && !memcmp(pa, pb, na);
    free(pa);
    free(pb);
    return same;
}

static void test_students(void)
{
    for (int pl = 1; pl <= 2; pl++) {
        char name[64], ref_plan[64];
        snprintf(ref_plan, sizeof ref_plan, TU_TINY "/plan%d.json", pl);
        snprintf(name, sizeof name, "obj%d", pl);
        char *obj = s_path(name);
        snprintf(name, sizeof name, "list%d", pl);
        char *list = s_path(name);
        snprintf(name, sizeof name, "plan%d_list.json", pl);
        char *list_plan = s_write_plan(name, s_list_plan[pl]);
        DmErr err = {{0}};
        DmPlan p;
        int rc = prune_checkpoint(TU_TINY, ref_plan, obj, &p, &err);
        if (rc)
            printf("\n  %s", err.msg);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
        CU_ASSERT_EQUAL_FATAL(prune_checkpoint(TU_TINY, list_plan, list, NULL, &err), 0);
        s_check_outputs(obj, pl);
        s_check_tensors(obj, pl);
        /* both spellings make the same student */
        char a[512], b[512];
        snprintf(a, sizeof a, "%s/model.safetensors", obj);
        snprintf(b, sizeof b, "%s/model.safetensors", list);
        CU_ASSERT(s_same_file(a, b));
        snprintf(a, sizeof a, "%s/config.json", obj);
        CU_ASSERT(s_same_file(a, TU_TINY "/config.json"));
        snprintf(a, sizeof a, "%s/preprocessor_config.json", obj);
        CU_ASSERT(s_same_file(a, TU_TINY "/preprocessor_config.json"));
        /* pruning.json reads back as the same structure */
        DmPlan full, back;
        plan_full(&(MBartConfig){.layers = 2, .heads = 4}, &full);
        snprintf(a, sizeof a, "%s/pruning.json", list);
        CU_ASSERT_EQUAL(plan_load(a, &full, &back, &err), 0);
        CU_ASSERT(!memcmp(back.keep, p.keep, sizeof p.keep) &&
                  !memcmp(back.nheads, p.nheads, sizeof p.nheads) &&
                  !memcmp(back.head_ids, p.head_ids, sizeof p.head_ids));
        CU_ASSERT_EQUAL(strlen(back.teacher_fingerprint), 16);
        free(obj);
        free(list);
        free(list_plan);
    }
}

/* Pruning a student again removes more, and names heads by their teacher
 * index: plan1 then "C1 keeps H0 and H3, M0 goes" is the teacher pruned
 * once by the combined plan. */
static void test_compose(void)
{
    char *s1 = s_path("c_s1"), *twice = s_path("c_twice"), *once = s_path("c_once");
    char *more = s_write_plan("c_more.json", "{\"keep\": {\"M0\": false}, \"heads\": {\"C1\": [3, 0]}}");
    char *both = s_write_plan("c_both.json",
                              "{\"keep\": [\"C0\", \"S1\", \"C1\"], \"heads\": [\"S1.H1\", "
                              "\"S1.H2\", \"C1.H0\", \"C1.H3\"]}");
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(prune_checkpoint(TU_TINY, TU_TINY "/plan1.json", s1, NULL, &err), 0);
    int rc = prune_checkpoint(s1, more, twice, NULL, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL_FATAL(prune_checkpoint(TU_TINY, both, once, NULL, &err), 0);
    char a[512], b[512];
    snprintf(a, sizeof a, "%s/model.safetensors", twice);
    snprintf(b, sizeof b, "%s/model.safetensors", once);
    CU_ASSERT(s_same_file(a, b));
    /* the teacher's fingerprint travels with the student */
    DmPlan full, p1, p2;
    plan_full(&(MBartConfig){.layers = 2, .heads = 4}, &full);
    snprintf(a, sizeof a, "%s/pruning.json", twice);
    snprintf(b, sizeof b, "%s/pruning.json", once);
    CU_ASSERT_EQUAL(plan_load(a, &full, &p1, &err), 0);
    CU_ASSERT_EQUAL(plan_load(b, &full, &p2, &err), 0);
    CU_ASSERT_STRING_EQUAL(p1.teacher_fingerprint, p2.teacher_fingerprint);
    free(s1);
    free(twice);
    free(once);
    free(more);
    free(both);
}

/* prune must fail with one line holding every needle (and the plan's path
 * when names_plan), and leave neither
 * the student nor a temporary folder behind. */
static void s_expect_prune_error(const char *model, const char *plan_json, const char *out_name,
                                 int names_plan, const char *n1, const char *n2)
{
    char *plan = plan_json ? s_write_plan("bad.json", plan_json) : strdup("/nonexistent/plan.json");
    char *out = s_path(out_name);
    struct stat st;
    int existed = stat(out, &st) == 0;
    DmErr err = {{0}};
    int rc = prune_checkpoint(model, plan, out, NULL, &err);
    const char *file = names_plan ? plan : NULL;
    int ok = rc == -1 && !strchr(err.msg, '\n') && (!n1 || strstr(err.msg, n1)) &&
             (!n2 || strstr(err.msg, n2)) && (!file || strstr(err.msg, file));
    if (!ok)
        printf("\n  rc %d, message \"%s\" (wanted \"%s\", \"%s\")", rc, err.msg, n1 ? n1 : "",
               n2 ? n2 : "");
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(stat(out, &st) == 0, existed);
    DIR *d = opendir(s_tmp.dir);
    struct dirent *e;
    int leftovers = 0;
    while (d && (e = readdir(d)))
        leftovers += strstr(e->d_name, ".tmp-") != NULL;
    if (d)
        closedir(d);
    CU_ASSERT_EQUAL(leftovers, 0);
    free(plan);
    free(out);
}

static void test_bad_input(void)
{
    const char *T = TU_TINY;
    /* the schema */
    s_expect_prune_error(T, "{\"kep\": [\"S0\"]}", "e1", 1, "kep", "did you mean \"keep\"");
    s_expect_prune_error(T, "{\"keep\": [\"S0\", 3]}", "e1", 1, "keep[1]", "expected string");
    s_expect_prune_error(T, "{\"keep\": {\"S0\": \"no\"}}", "e1", 1, "keep.S0", "boolean");
    s_expect_prune_error(T, "{\"keep\": {}, \"heads\": {\"C1\": []}}", "e1", 1, "heads.C1",
                         "no heads; remove the sub-layer");
    s_expect_prune_error(T, "{\"keep\": [\"S0\"", "e1", 1, "not valid JSON", NULL);
    /* names and indices against the model */
    s_expect_prune_error(T, "{\"keep\": [\"S0\", \"X1\"]}", "e1", 1, "keep[1]", "\"X1\"");
    s_expect_prune_error(T, "{\"keep\": {\"M2\": false}}", "e1", 1, "keep.M2", "0..1");
    s_expect_prune_error(T, "{\"keep\": [\"S0\", \"S0\"]}", "e1", 1, "keep[1]", "twice");
    s_expect_prune_error(T, "{\"keep\": [\"C1\"], \"heads\": [\"C1.H4\"]}", "e1", 1, "heads[0]",
                         "head 4 of C1 is out of range");
    s_expect_prune_error(T, "{\"keep\": {}, \"heads\": {\"C1\": [0, 9]}}", "e1", 1, "heads.C1[1]",
                         "4 heads");
    s_expect_prune_error(T, "{\"keep\": [\"C0\"], \"heads\": [\"C1.H0\"]}", "e1", 1, "heads[0]",
                         "C1, which the plan removes");
    s_expect_prune_error(T, "{\"keep\": {\"M1\": false}, \"heads\": {\"M1\": [0]}}", "e1", 1, "heads.M1",
                         "not an attention sub-layer");
    s_expect_prune_error(T, "{\"keep\": [\"C1\"], \"heads\": [\"C1H0\"]}", "e1", 1, "heads[0]",
                         "not a head name");
    s_expect_prune_error(T, "{\"keep\": []}", "e1", 1, "removes every decoder sub-layer", NULL);
    /* a plan that brings back what an earlier pruning removed */
    char *s1 = s_path("b_s1");
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(prune_checkpoint(T, TU_TINY "/plan1.json", s1, NULL, &err), 0);
    s_expect_prune_error(s1, "{\"keep\": {}, \"heads\": {\"C1\": [1, 3]}}", "e1", 1, "heads.C1[0]",
                         "C1.H1 was removed by an earlier pruning");
    s_expect_prune_error(s1, "{\"keep\": [\"S0\", \"C0\"]}", "e1", 1, "keep[0]",
                         "S0 was removed by an earlier pruning");
    /* the folders */
    s_expect_prune_error("/nonexistent/model", "{\"keep\": {}}", "e1", 0, "/nonexistent/model", NULL);
    s_expect_prune_error(T, NULL, "e1", 0, "/nonexistent/plan.json", NULL);
    char *full = s_path("b_full");
    mkdir(full, 0700);
    char *inside = s_path("b_full/x");
    tu_write(inside, "x", 1);
    s_expect_prune_error(T, "{\"keep\": {}}", "b_full", 0, "not empty", NULL);
    unlink(inside);
    /* an empty folder is taken */
    CU_ASSERT_EQUAL(prune_checkpoint(T, TU_TINY "/plan2.json", full, NULL, &err), 0);
    free(full);
    free(inside);
    free(s1);
}

/* Parameters per module, counted here from the safetensors header of the
 * written student (float tensors only; a tied LM head counts once). */
static void s_header_counts(const char *dir, long long *by_row, int nrows, long long *encoder)
{
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    TensorFile *tf;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(path, &tf, &err), 0);
    memset(by_row, 0, (size_t)nrows * sizeof *by_row);
    *encoder = 0;
    for (int i = 0; i < tf->n; i++) {
        const DmTensor *t = &tf->t[i];
        if (t->dtype != DM_F32)
            continue; /* relative_position_index: a buffer, not a parameter */
        long long n = dm_tensor_numel(t);
        int l;
        char part[64];
        if (!strncmp(t->name, "encoder.", 8))
            *encoder += n;
        else if (strstr(t->name, "embed_tokens"))
            by_row[1] += n;
        else if (strstr(t->name, "embed_positions"))
            by_row[2] += n;
        else if (strstr(t->name, "lm_head"))
            ; /* tiny-a ties it: the same values as embed_tokens */
        else if (sscanf(t->name, "decoder.model.decoder.layers.%d.%63[^.]", &l, part) == 2)
            by_row[5 + 3 * l + (strstr(part, "self_attn") ? 0 : strstr(part, "encoder_attn") ? 1 : 2)] += n;
        else
            by_row[4] += n; /* layernorm_embedding, layer_norm */
    }
    tensorfile_close(&tf);
}

/* A student whose first cross-attention keeps fewer heads than its second
 * (the page's per-layer buffers must fit the widest layer): teacher
 * forcing through the watched (GEMM) and unwatched (head kernel) paths
 * agree, in fp32 and in bf16 (keys and values widened per layer). */
static void test_uneven_cross(void)
{
    char *plan = s_write_plan("uneven.json", "{\"keep\": {}, \"heads\": {\"C0\": [2]}}");
    char *dir = s_path("uneven");
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(prune_checkpoint(TU_TINY, plan, dir, NULL, &err), 0);
    TensorFile *gold;
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/expected.safetensors", &gold, &err), 0);
    const DmTensor *enc = s_find(gold, "case%d.encoder.last_hidden_state", 1);
    const DmTensor *ti = s_find(gold, "case%d.decoder_input_ids", 1);
    int T = (int)ti->shape[1];
    int64_t i64[128];
    int32_t ids[128];
    CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(ti, i64, &err), 0);
    for (int i = 0; i < T; i++)
        ids[i] = (int32_t)i64[i];
    for (int bf = 0; bf < 2; bf++) {
        DonutModel *m;
        CU_ASSERT_EQUAL_FATAL(donut_load_as(dir, bf ? DM_PREC_BF16 : DM_PREC_F32, &m, &err), 0);
        CU_ASSERT(m->dec.layers[0].cross.nheads == 1 &&
                  m->dec.layers[1].cross.nheads == m->cfg.dec.heads);
        int V = m->cfg.dec.vocab;
        float *lg[2];
        for (int watched = 0; watched < 2; watched++) {
            DecPage page;
            DecSeq seq, *sp = &seq;
            CU_ASSERT_EQUAL_FATAL(dec_page_init(&page, m, enc->data, (int)enc->shape[1], &err), 0);
            CU_ASSERT_EQUAL_FATAL(dec_seq_init(&seq, m, T, &err), 0);
            lg[watched] = malloc((size_t)T * V * sizeof(float));
            TuCollect col = {0};
            DmProbe probe = {tu_collect_emit, &col};
            const int32_t *pp = ids;
            CU_ASSERT_EQUAL(dec_forward(&page, &sp, &pp, &T, 1, lg[watched], 1, NULL,
                                        watched ? &probe : NULL, &err), 0);
            tu_collect_free(&col);
            dec_seq_free(&seq);
            dec_page_free(&page);
        }
        double d = tu_maxdiff(lg[0], lg[1], (size_t)T * V);
        CU_ASSERT(d <= 1e-4);
        printf(" [%s: watched vs unwatched %.2g]", bf ? "bf16" : "fp32", d);
        free(lg[0]);
        free(lg[1]);
        donut_free(&m);
    }
    tensorfile_close(&gold);
    free(plan);
    free(dir);
}

static void test_params_tiny(void)
{
    const char *dirs[3] = {TU_TINY, NULL, NULL};
    char *s1 = s_path("p_s1"), *s2 = s_path("p_s2");
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(prune_checkpoint(TU_TINY, TU_TINY "/plan1.json", s1, NULL, &err), 0);
    CU_ASSERT_EQUAL_FATAL(prune_checkpoint(TU_TINY, TU_TINY "/plan2.json", s2, NULL, &err), 0);
    dirs[1] = s1;
    dirs[2] = s2;
    long long teacher_dec = 0;
    for (int i = 0; i < 3; i++) {
        DonutModel *m;
        CU_ASSERT_EQUAL_FATAL(donut_load(dirs[i], &m, &err), 0);
        DmPlan p;
        ParamTable t;
        plan_of_model(m, &p);
        params_count(&m->cfg, &p, &t);
        donut_free(&m);
        long long want[DM_PMOD_FIXED + 6], enc, dec = 0;
        s_header_counts(dirs[i], want, DM_PMOD_FIXED + 6, &enc);
        CU_ASSERT_EQUAL_FATAL(t.nrows, DM_PMOD_FIXED + 6);
        CU_ASSERT_EQUAL(t.encoder, enc);
        CU_ASSERT(t.tied);
        for (int r = 1; r < t.nrows; r++) {
            if (t.rows[r].count != want[r])
                printf("\n  %s %s: %lld, header %lld", dirs[i], t.rows[r].name, t.rows[r].count,
                       want[r]);
            CU_ASSERT_EQUAL(t.rows[r].count, want[r]);
            dec += want[r];
        }
        CU_ASSERT_EQUAL(t.decoder, dec);
        CU_ASSERT_EQUAL(t.total, enc + dec);
        if (i == 0)
            teacher_dec = dec;
        CU_ASSERT_EQUAL(t.teacher_decoder, teacher_dec); /* students know their teacher */
        printf(" [%s: decoder %lld of %lld]", i ? (i == 1 ? "plan1" : "plan2") : "teacher", dec,
               teacher_dec);
    }
    free(s1);
    free(s2);
}

/* The full-size config against the mBART layer formula: per layer, two
 * attention blocks of 4 d x d projections with biases and a LayerNorm, and
 * a feed-forward block d -> ffn -> d with biases and a LayerNorm. */
static void test_params_full_size(void)
{
    size_t n = 0;
    unsigned char *text = tu_slurp("../jobs/configs/donut-base.json", &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    char *z = malloc(n + 1);
    memcpy(z, text, n);
    z[n] = 0;
    DonutConfig c;
    DmErr err;
    CU_ASSERT_EQUAL_FATAL(donut_config_parse(z, "donut-base.json", &c, &err), 0);
    free(z);
    free(text);
    long long d = 1024, ffn = 4096, V = 57532, P = 128;
    CU_ASSERT_EQUAL_FATAL(c.dec.d_model, d);
    CU_ASSERT_EQUAL_FATAL(c.dec.vocab, V);
    long long attn = 4 * d * d + 4 * d + 2 * d;   /* 4,200,448 */
    long long mlp = 2 * d * ffn + ffn + d + 2 * d; /* 8,395,776 */
    long long dec = V * d + (P + 2) * d + 4 * d + 4 * (2 * attn + mlp);
    DmPlan p;
    ParamTable t;
    plan_full(&c.dec, &p);
    params_count(&c, &p, &t);
    CU_ASSERT_EQUAL(t.rows[DM_PMOD_FIXED + 0].count, 4200448);
    CU_ASSERT_EQUAL(t.rows[DM_PMOD_FIXED + 1].count, 4200448);
    CU_ASSERT_EQUAL(t.rows[DM_PMOD_FIXED + 2].count, 8395776);
    CU_ASSERT_EQUAL(t.decoder, dec);
    CU_ASSERT_EQUAL(t.teacher_decoder, dec);
    /* C3 keeping 4 of 16 heads: q/k/v lose 12*64 rows each, out_proj 12*64 columns */
    p.nheads[3][DM_SUB_C] = 4;
    p.keep[0][DM_SUB_M] = 0;
    params_count(&c, &p, &t);
    long long cut = 4 * 12 * 64 * d + 3 * 12 * 64;
    CU_ASSERT_EQUAL(t.rows[DM_PMOD_FIXED + 3 * 3 + 1].count, attn - cut);
    CU_ASSERT_EQUAL(t.decoder, dec - cut - mlp);
    CU_ASSERT_EQUAL(t.teacher_decoder, dec);
    printf(" [decoder %lld, encoder %lld]", dec, t.encoder);
}

void tests_prune(void)
{
    TU_SUITE("prune (tiny-a pruned students)", {"both plan spellings match HF's students", test_students},
             {"pruning a student composes", test_compose},
             {"bad plans and folders give one clear line", test_bad_input},
             {"uneven cross-attention heads: every path, fp32 and bf16", test_uneven_cross},
             {"params against the written headers", test_params_tiny},
             {"params of the full-size config against the mBART formula", test_params_full_size});
}
