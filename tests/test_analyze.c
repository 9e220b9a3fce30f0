/* test_analyze.c - the analyses of worker/analyze through the stage's
 * record (analyze_record_sink) against the interpretability reference
 * (data/tiny-a/mi.safetensors, made with the Hugging Face modules) for its
 * three cases; site names and their errors; the corrupting noise. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dm_fs.h"
#include "tutil.h"
#include "worker/analyze/stage_analyze.h"
#include "worker/model/plan.h"

#define MI TU_TINY "/mi.safetensors"
#define EXPECTED TU_TINY "/expected.safetensors"

/* Max |got - ref| over n values (NaN on either side alone counts as
 * infinite), ref read from the reference file. */
static double s_diff_f(const TensorFile *tf, const char *name, const float *got, size_t n)
{
    const DmTensor *t = tensorfile_find(tf, name);
    if (!t || (size_t)dm_tensor_numel(t) != n)
        return INFINITY;
    float *ref = malloc(n * sizeof *ref);
    DmErr err = {{0}};
    double d = ref && !dm_tensor_to_f32(t, ref, &err) ? tu_maxdiff(got, ref, n) : INFINITY;
    free(ref);
    return d;
}

/* 1 when the int64 reference equals got exactly. */
static int s_same_i(const TensorFile *tf, const char *name, const int32_t *got, size_t n)
{
    const DmTensor *t = tensorfile_find(tf, name);
    if (!t || (size_t)dm_tensor_numel(t) != n)
        return 0;
    int64_t *ref = malloc(n * sizeof *ref);
    DmErr err = {{0}};
    int same = ref && !dm_tensor_to_i64(t, ref, &err);
    for (size_t i = 0; same && i < n; i++)
        same = ref[i] == got[i];
    free(ref);
    return same;
}

/* The largest |value| of a reference tensor. */
static double s_absmax(const TensorFile *tf, const char *name)
{
    const DmTensor *t = tensorfile_find(tf, name);
    size_t n = t ? (size_t)dm_tensor_numel(t) : 0;
    float *v = malloc((n ? n : 1) * sizeof *v);
    DmErr err = {{0}};
    double m = 0;
    if (v && t && !dm_tensor_to_f32(t, v, &err))
        for (size_t i = 0; i < n; i++)
            m = fabs(v[i]) > m ? fabs(v[i]) : m;
    free(v);
    return m;
}

static void test_golden_records(void)
{
    DonutModel *m = NULL;
    TensorFile *mi = NULL, *ex = NULL;
    DmErr err = {{0}};
    CU_ASSERT_FATAL(donut_load(TU_TINY, &m, &err) == 0);
    CU_ASSERT_FATAL(dec_pack(m, &err) == 0); /* as the stage runs it */
    CU_ASSERT_FATAL(tensorfile_open(MI, &mi, &err) == 0);
    CU_ASSERT_FATAL(tensorfile_open(EXPECTED, &ex, &err) == 0);
    float *enc[3];
    int n_enc[3];
    DecPage page[3];
    for (int k = 0; k < 3; k++) {
        enc[k] = tu_encode_case(m, ex, k, &n_enc[k]);
        CU_ASSERT_FATAL(enc[k] != NULL);
        CU_ASSERT_FATAL(dec_page_init(&page[k], m, enc[k], n_enc[k], &err) == 0);
    }
    double worst = 0;
    AnMemo memo = {0};
    for (int k = 0; k < 3; k++) {
        char name[96];
        int32_t ids[64];
        int T = tu_case_ids(ex, k, ids, 64);
        CU_ASSERT_FATAL(T > 0);
        /* the reference's answer start, T // 2, and its corrupting page;
         * a first item on the page fills the memo, so the checked one
         * takes its transcription from there, as a page's later questions
         * do in the stage */
        AnItem it = {&page[k], &page[(k + 1) % 3], ids, T, T / 2, &memo};
        AnCfg cfg = {.analyses = AN_A_ALL, .subset_layer = -1};
        Docmint__AnalysisRecord r;
        AnSink sink;
        docmint__analysis_record__init(&r);
        analyze_record_sink(&r, &sink);
        CU_ASSERT_FATAL(an_item(&it, &cfg, &sink, &err) == 0);
        analyze_record_clear(&r);
        CU_ASSERT(memo.page == &page[k] && memo.top1[0] && !memo.top1[1]);
        docmint__analysis_record__init(&r);
        analyze_record_sink(&r, &sink);
        CU_ASSERT_FATAL(an_item(&it, &cfg, &sink, &err) == 0);
        struct {
            const char *ref;
            const float *got;
            size_t n;
        } f[] = {
            {"nll.clean", &r.nll_clean, 1},
            {"nll.skip", r.nll_skip, r.n_nll_skip},
            {"nll.reproject", r.nll_reproject, r.n_nll_reproject},
            {"lens.target_logprob", r.lens_target_logprob, r.n_lens_target_logprob},
            {"heads.sa_entropy", r.sa_entropy, r.n_sa_entropy},
            {"nll.head_ablation", r.nll_head_ablation, r.n_nll_head_ablation},
            {"nll.m_last_cancels_c_last", &r.nll_m_last_cancels_c_last, 1},
            {"transcribe.all.entropy", r.transcribe_entropy, r.n_transcribe_entropy},
            {"nll.corrupt", &r.nll_corrupt, 1},
            {"nll.patch_query", &r.nll_patch_query, 1},
            {"nll.patch_head", r.nll_patch_head, r.n_nll_patch_head},
            {"atp.head", r.atp_head, r.n_atp_head},
        };
        for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
            snprintf(name, sizeof name, "case%d.%s", k, f[i].ref);
            double d = s_diff_f(mi, name, f[i].got, f[i].n);
            if (d > 1e-4)
                fprintf(stderr, "\n  %s: %g\n", name, d);
            CU_ASSERT(d <= 1e-4);
            worst = d > worst ? d : worst;
        }
        /* variances: relative to their size */
        snprintf(name, sizeof name, "case%d.heads.ca_variance", k);
        CU_ASSERT(s_diff_f(mi, name, r.ca_variance, r.n_ca_variance) <= 1e-4 * s_absmax(mi, name));
        snprintf(name, sizeof name, "case%d.lens.top1", k);
        CU_ASSERT(s_same_i(mi, name, r.lens_top1, r.n_lens_top1));
        snprintf(name, sizeof name, "case%d.lens.target_rank", k);
        CU_ASSERT(s_same_i(mi, name, r.lens_target_rank, r.n_lens_target_rank));
        snprintf(name, sizeof name, "case%d.transcribe.all.top1", k);
        CU_ASSERT(s_same_i(mi, name, r.transcribe_top1, r.n_transcribe_top1));
        analyze_record_clear(&r);
    }
    an_memo_free(&memo);
    CU_ASSERT(worst > 0); /* computed, not copied */
    for (int k = 0; k < 3; k++) {
        dec_page_free(&page[k]);
        free(enc[k]);
    }
    tensorfile_close(&mi);
    tensorfile_close(&ex);
    donut_free(&m);
}

static void test_sites(void)
{
    DonutModel *m = NULL;
    DmErr err = {{0}};
    AnSite s;
    CU_ASSERT_FATAL(donut_load(TU_TINY, &m, &err) == 0);
    CU_ASSERT(an_site_parse(m, "C1.H3", &s, &err) == 0 && s.sub == 4 && s.point == AN_HEAD &&
              s.head == 3);
    CU_ASSERT(an_site_parse(m, "M0.out", &s, &err) == 0 && s.sub == 2 && s.point == AN_OUT);
    CU_ASSERT(an_site_parse(m, "S1.query", &s, &err) == 0 && s.sub == 3 && s.point == AN_QUERY);
    const char *bad[][2] = {{"C7.H3", "layer 7"}, {"S0.H4", "no head 4"}, {"M1.query", "M1"},
                            {"X0.in", "expected"}, {"C0", "expected"}, {"C0.H", "expected"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dm_err_clear(&err);
        CU_ASSERT(an_site_parse(m, bad[i][0], &s, &err) != 0 && strstr(err.msg, bad[i][1]));
    }
    AnReplace r;
    CU_ASSERT(an_replace_parse(m, "M1.out:=-C1.out", &r, &err) == 0 && r.coef == -1.0f &&
              r.dst.sub == 5 && r.src.sub == 4);
    CU_ASSERT(an_replace_parse(m, "M1.out:=0.25*S0.in", &r, &err) == 0 && r.coef == 0.25f);
    CU_ASSERT(an_replace_parse(m, "C1.out:=-M1.out", &r, &err) != 0 && strstr(err.msg, "earlier"));
    AnSkipSet k;
    CU_ASSERT(an_skip_set_parse(m, "late=S1,M1", &k, &err) == 0 && k.n == 2 && k.subs[0] == 3 &&
              k.subs[1] == 5 && !strcmp(k.name, "late"));
    CU_ASSERT(an_skip_set_parse(m, "x=S2", &k, &err) != 0 && strstr(err.msg, "layer 2"));
    donut_free(&m);
}

static void test_noise(void)
{
    enum { N = 200000 };
    float *a = calloc(N, sizeof *a), *b = calloc(N, sizeof *b), *c = calloc(N, sizeof *c);
    CU_ASSERT_FATAL(a && b && c);
    analyze_add_noise(a, N, 0.5, 7, "page-1");
    analyze_add_noise(b, N, 0.5, 7, "page-1");
    analyze_add_noise(c, N, 0.5, 7, "page-2");
    CU_ASSERT(memcmp(a, b, N * sizeof *a) == 0);
    CU_ASSERT(memcmp(a, c, N * sizeof *a) != 0);
    double s = 0, s2 = 0;
    for (int i = 0; i < N; i++) {
        s += a[i];
        s2 += (double)a[i] * a[i];
    }
    double mean = s / N, sd = sqrt(s2 / N - mean * mean);
    /* N(0, 0.25): the sample mean within 5 standard errors, the sample
     * standard deviation within 1% */
    CU_ASSERT(fabs(mean) < 5 * 0.5 / sqrt(N));
    CU_ASSERT(fabs(sd - 0.5) < 0.005);
    free(a);
    free(b);
    free(c);
}

/* Block forwards against single passes: runs of the three cases (three
 * pages, three lengths) mixed in one an_runs call, each with its own
 * interventions, give the NLL and logits of an_run with the same
 * interventions, one pass each; and so do the same runs started late,
 * from the clean run's stream. */
static void test_blocks(void)
{
    DonutModel *m = NULL;
    TensorFile *ex = NULL;
    DmErr err = {{0}};
    CU_ASSERT_FATAL(donut_load(TU_TINY, &m, &err) == 0);
    CU_ASSERT_FATAL(tensorfile_open(EXPECTED, &ex, &err) == 0);
    float *enc[3];
    int n_enc[3], T[3];
    int32_t ids[3][64];
    DecPage page[3];
    for (int k = 0; k < 3; k++) {
        enc[k] = tu_encode_case(m, ex, k, &n_enc[k]);
        CU_ASSERT_FATAL(enc[k] && dec_page_init(&page[k], m, enc[k], n_enc[k], &err) == 0);
        T[k] = tu_case_ids(ex, k, ids[k], 64);
        CU_ASSERT_FATAL(T[k] > 0);
    }
    CU_ASSERT_FATAL(T[0] != T[1] || T[1] != T[2]);
    /* per case: nothing, C1 skipped, S0's input reprojected, M1.out :=
     * -C1.out, head 2 of C0 zeroed at the scored rows and S1 skipped */
    AnOp ops[5][2] = {
        {{.coef = 0.0f}},
        {{.site = {4, AN_OUT, 0}, .op = AN_ZERO, .row0 = 0, .row1 = 64}},
        {{.site = {0, AN_IN, 0}, .op = AN_REPROJECT, .row0 = 0, .row1 = 64}},
        {{.site = {5, AN_OUT, 0}, .op = AN_SCALE_SITE, .from = {4, AN_OUT, 0}, .coef = -1.0f,
          .row0 = 0, .row1 = 64}},
        {{.site = {1, AN_HEAD, 2}, .op = AN_ZERO, .row0 = 5, .row1 = 64},
         {.site = {3, AN_OUT, 0}, .op = AN_ZERO, .row0 = 0, .row1 = 64}},
    };
    int nops[5] = {0, 1, 1, 1, 2};
    enum { NJ = 15 };
    AnJob jobs[NJ];
    float *lg[NJ];
    int V = m->cfg.dec.vocab;
    for (int j = 0; j < NJ; j++) {
        int k = j % 3, a = T[k] / 2;
        lg[j] = malloc((size_t)T[k] * V * sizeof(float));
        jobs[j] = (AnJob){.page = &page[k], .ids = ids[k], .T = T[k], .answer_start = a,
                          .ops = ops[j / 3], .nops = nops[j / 3], .logits = lg[j]};
    }
    AnStats st = {0};
    CU_ASSERT_FATAL(an_runs(jobs, NJ, &st, &err) == 0);
    CU_ASSERT(st.passes == NJ && st.blocks == 3);
    /* the same runs again, each starting from its clean run's stream at
     * its first intervention (the clean ones: the head alone) */
    AnTrace base[3];
    AnJob late[NJ];
    float *lg2[NJ];
    for (int k = 0; k < 3; k++)
        CU_ASSERT_FATAL(an_run(&page[k], ids[k], T[k], T[k] / 2, NULL, 0, 0, &base[k], &err) == 0);
    for (int j = 0; j < NJ; j++) {
        late[j] = jobs[j];
        late[j].base = &base[j % 3];
        late[j].logits = lg2[j] = malloc((size_t)T[j % 3] * V * sizeof(float));
    }
    CU_ASSERT_FATAL(an_runs(late, NJ, &st, &err) == 0);
    double worst = 0;
    for (int j = 0; j < NJ; j++) {
        int k = j % 3, a = T[k] / 2, P = T[k] - 1 - a;
        AnTrace tr;
        CU_ASSERT_FATAL(an_run(&page[k], ids[k], T[k], a, ops[j / 3], nops[j / 3], 0, &tr, &err) ==
                        0);
        double d = fmax(fabs(tr.nll - jobs[j].nll), fabs(tr.nll - late[j].nll));
        for (size_t i = 0; i < (size_t)P * V; i++)
            d = fmax(d, fmax(fabs(tr.logits[i] - lg[j][i]), fabs(tr.logits[i] - lg2[j][i])));
        worst = fmax(worst, d);
        /* an intervention changes the run (the first job of a case is clean) */
        if (j >= 3)
            CU_ASSERT(fabs(jobs[j].nll - jobs[k].nll) > 1e-4);
        an_trace_free(&tr);
        free(lg[j]);
        free(lg2[j]);
    }
    for (int k = 0; k < 3; k++)
        an_trace_free(&base[k]);
    fprintf(stderr, " [worst %.2g]", worst);
    CU_ASSERT(worst < 1e-4);
    for (int k = 0; k < 3; k++) {
        dec_page_free(&page[k]);
        free(enc[k]);
    }
    tensorfile_close(&ex);
    donut_free(&m);
}

/* A pruned student through the blocks: tiny-a cut by plan1.json (S0 and
 * M1 removed, S1 keeps heads 1 and 2, C1 heads 0, 2 and 3).  Its clean,
 * skip and head-ablation NLLs are the teacher's single traced runs with
 * the same parts zeroed (a removed sub-layer adds nothing, a dropped head's
 * output is zero before out_proj), and what it lacks is NaN. */
static void test_pruned_student(void)
{
    DonutModel *m = NULL, *s = NULL;
    TensorFile *ex = NULL;
    DmErr err = {{0}};
    char dir[] = "/tmp/dm_an_student_XXXXXX", out[64];
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    snprintf(out, sizeof out, "%s/student", dir);
    CU_ASSERT_FATAL(prune_checkpoint(TU_TINY, TU_TINY "/plan1.json", out, NULL, &err) == 0);
    CU_ASSERT_FATAL(donut_load(TU_TINY, &m, &err) == 0 && donut_load(out, &s, &err) == 0);
    CU_ASSERT_FATAL(dec_pack(s, &err) == 0);
    CU_ASSERT_FATAL(tensorfile_open(EXPECTED, &ex, &err) == 0);
    int n_enc, H = m->cfg.dec.heads, nsub = 3 * m->cfg.dec.layers;
    float *enc = tu_encode_case(m, ex, 1, &n_enc);
    DecPage tp, sp;
    CU_ASSERT_FATAL(enc && dec_page_init(&tp, m, enc, n_enc, &err) == 0 &&
                    dec_page_init(&sp, s, enc, n_enc, &err) == 0);
    int32_t ids[64];
    int T = tu_case_ids(ex, 1, ids, 64), a = T / 2;
    CU_ASSERT_FATAL(T > 0);
    AnItem it = {&sp, NULL, ids, T, a, NULL};
    AnCfg cfg = {.analyses = AN_A_SKIP | AN_A_ABLATION, .subset_layer = -1};
    Docmint__AnalysisRecord r;
    AnSink sink;
    docmint__analysis_record__init(&r);
    analyze_record_sink(&r, &sink);
    CU_ASSERT_FATAL(an_item(&it, &cfg, &sink, &err) == 0);
    CU_ASSERT_FATAL(r.n_nll_skip == (size_t)nsub && r.n_nll_head_ablation == (size_t)nsub / 3 * 2 * H);
    /* the plan as zeroed sites of the teacher: S0 (0), M1 (5); S1 (3)
     * heads 0 and 3, C1 (4) head 1 */
    AnOp base[8];
    int nb = 0;
    const int gone_sub[] = {0, 5}, gone_head[][2] = {{3, 0}, {3, 3}, {4, 1}};
    for (int i = 0; i < 2; i++)
        base[nb++] = (AnOp){.site = {gone_sub[i], AN_OUT, 0}, .op = AN_ZERO, .row1 = T};
    for (int i = 0; i < 3; i++)
        base[nb++] = (AnOp){.site = {gone_head[i][0], AN_HEAD, gone_head[i][1]}, .op = AN_ZERO,
                            .row1 = T};
    double worst = 0;
    AnTrace tr;
    CU_ASSERT_FATAL(an_run(&tp, ids, T, a, base, nb, 0, &tr, &err) == 0);
    worst = fabs(tr.nll - r.nll_clean);
    an_trace_free(&tr);
    int nan_ok = 1, checked = 0;
    for (int i = 0; i < nsub; i++) {
        int gone = i == 0 || i == 5;
        if (gone) {
            nan_ok &= isnan(r.nll_skip[i]);
            continue;
        }
        base[nb] = (AnOp){.site = {i, AN_OUT, 0}, .op = AN_ZERO, .row1 = T};
        CU_ASSERT_FATAL(an_run(&tp, ids, T, a, base, nb + 1, 0, &tr, &err) == 0);
        worst = fmax(worst, fabs(tr.nll - r.nll_skip[i]));
        an_trace_free(&tr);
        checked++;
    }
    for (int l = 0; l < nsub / 3; l++)
        for (int kind = 0; kind < 2; kind++)
            for (int h = 0; h < H; h++) {
                int sub = 3 * l + kind, gone = sub == 0;
                for (int i = 0; i < 3; i++)
                    gone |= gone_head[i][0] == sub && gone_head[i][1] == h;
                float got = r.nll_head_ablation[(l * 2 + kind) * H + h];
                if (gone) {
                    nan_ok &= isnan(got);
                    continue;
                }
                base[nb] = (AnOp){.site = {sub, AN_HEAD, h}, .op = AN_ZERO, .row1 = T};
                CU_ASSERT_FATAL(an_run(&tp, ids, T, a, base, nb + 1, 0, &tr, &err) == 0);
                worst = fmax(worst, fabs(tr.nll - got));
                an_trace_free(&tr);
                checked++;
            }
    fprintf(stderr, " [%d runs, worst %.2g]", checked, worst);
    CU_ASSERT(nan_ok);
    CU_ASSERT(checked == 4 + 9 && worst < 1e-4);
    analyze_record_clear(&r);
    dec_page_free(&tp);
    dec_page_free(&sp);
    free(enc);
    tensorfile_close(&ex);
    donut_free(&m);
    donut_free(&s);
    CU_ASSERT(dm_rm_tree(dir) == 0);
}

void tests_analyze(void)
{
    TU_SUITE("analyze", {"the reference's three cases through the stage's record",
                         test_golden_records},
             {"block forwards against single passes", test_blocks},
             {"a pruned student through the blocks against the teacher", test_pruned_student},
             {"site names and their errors", test_sites},
             {"corrupting noise: seeded by page, normal", test_noise});
}
