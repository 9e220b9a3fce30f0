/* stage_analyze.c - the analyze stage on a shard (stage_analyze.h). */
#include "worker/analyze/stage_analyze.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/image/image.h"
#include "worker/image/preprocess.h"
#include "worker/model/page_encode.h"
#include "worker/stages/qa.h"
#include "worker/stages/stage_cache.h" /* cache_sequence */
#include "worker/stages/stage_result.h"
#include "worker/stages/worker_loop.h"
#include <jansson.h>

struct AnalyzeStage {
    QaModel qa;
    PreprocConfig pc;
    AnalyzeOpts o;
    AnCfg cfg;
    AnSkipSet skips[ANALYZE_MAX_NAMED];
    AnSite sites[ANALYZE_MAX_NAMED];
    AnReplace repls[ANALYZE_MAX_NAMED];
};

/* The parsed interventions of o into the arrays given (any may be NULL
 * when only checking). */
static int s_parse(const DonutModel *m, const AnalyzeOpts *o, AnSkipSet *skips, AnSite *sites,
                   AnReplace *repls, DmErr *err)
{
    AnSkipSet k;
    AnSite s;
    AnReplace r;
    for (int i = 0; i < o->nskip; i++)
        if (an_skip_set_parse(m, o->skip[i], skips ? &skips[i] : &k, err))
            return dm_err_prefix(err, "skip_sets");
    for (int i = 0; i < o->npatch; i++)
        if (an_site_parse(m, o->patch[i], sites ? &sites[i] : &s, err))
            return dm_err_prefix(err, "patch_sites");
    for (int i = 0; i < o->nreplace; i++)
        if (an_replace_parse(m, o->replace[i], repls ? &repls[i] : &r, err))
            return dm_err_prefix(err, "replacements");
    return 0;
}

int analyze_opts_check(const DonutModel *m, const AnalyzeOpts *o, DmErr *err)
{
    return s_parse(m, o, NULL, NULL, NULL, err);
}

int analyze_open(const char *model_dir, const AnalyzeOpts *o, AnalyzeStage **out, DmErr *err)
{
    *out = NULL;
    AnalyzeStage *st = calloc(1, sizeof *st);
    if (!st)
        return dm_err(err, "out of memory");
    st->o = *o;
    if (st->o.pdf_dpi <= 0)
        st->o.pdf_dpi = IMAGE_PDF_DPI_DEFAULT;
    char path[4200];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", model_dir);
    if (qa_open(model_dir, &st->qa, err)) {
        free(st);
        return -1;
    }
    /* Teacher forcing in blocks is the stage's work: the decoder's linears
     * and LM head run packed for the GEMM backend, as in the cache stage. */
    if (dec_pack(st->qa.model, err) || preproc_config_load(path, &st->pc, err) ||
        s_parse(st->qa.model, o, st->skips, st->sites, st->repls, err)) {
        qa_close(&st->qa);
        free(st);
        return -1;
    }
    st->cfg = (AnCfg){.analyses = o->analyses, .subset_layer = -1, .skip_sets = st->skips,
                      .nskip_sets = o->nskip, .patch_sites = st->sites, .npatch = o->npatch,
                      .patch_all_positions = o->patch_all_positions, .replaces = st->repls,
                      .nreplace = o->nreplace};
    *out = st;
    return 0;
}

void analyze_close(AnalyzeStage **pst)
{
    AnalyzeStage *st = *pst;
    if (!st)
        return;
    qa_close(&st->qa);
    free(st);
    *pst = NULL;
}

const char *analyze_fingerprint(const AnalyzeStage *st) { return st->qa.model->fingerprint; }

/* ------------------------------------------------------------ noise */

static uint64_t s_splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void analyze_add_noise(float *pixels, size_t n, double scale, uint64_t seed, const char *page_id)
{
    uint64_t s = seed ^ 0xcbf29ce484222325ull;
    for (const char *p = page_id ? page_id : ""; *p; p++)
        s = (s ^ (unsigned char)*p) * 0x100000001b3ull;
    for (size_t i = 0; i < n; i += 2) {
        /* Box-Muller: two normal draws from two uniform ones in (0, 1] */
        double u1 = ((s_splitmix(&s) >> 11) + 1.0) / 9007199254740992.0;
        double u2 = (s_splitmix(&s) >> 11) / 9007199254740992.0;
        double r = sqrt(-2.0 * log(u1)), t = 2.0 * M_PI * u2;
        pixels[i] += (float)(scale * r * cos(t));
        if (i + 1 < n)
            pixels[i + 1] += (float)(scale * r * sin(t));
    }
}

/* ------------------------------------------------------------ records */

static float *s_copy_f(const float *d, size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (p)
        memcpy(p, d, n * sizeof *p);
    return p;
}

static int32_t *s_copy_i(const int64_t *d, size_t n)
{
    int32_t *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; p && i < n; i++)
        p[i] = (int32_t)d[i];
    return p;
}

static size_t s_numel(int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return n;
}

static void s_rec_f32(void *ctx, const char *name, int ndim, const int64_t *shape, const float *d)
{
    Docmint__AnalysisRecord *r = ctx;
    size_t n = s_numel(ndim, shape);
    struct {
        const char *name;
        size_t *n;
        float **v;
        float *scalar;
    } map[] = {
        {"nll.clean", NULL, NULL, &r->nll_clean},
        {"nll.m_last_cancels_c_last", NULL, NULL, &r->nll_m_last_cancels_c_last},
        {"nll.corrupt", NULL, NULL, &r->nll_corrupt},
        {"nll.patch_query", NULL, NULL, &r->nll_patch_query},
        {"nll.skip", &r->n_nll_skip, &r->nll_skip, NULL},
        {"nll.reproject", &r->n_nll_reproject, &r->nll_reproject, NULL},
        {"lens.target_logprob", &r->n_lens_target_logprob, &r->lens_target_logprob, NULL},
        {"heads.sa_entropy", &r->n_sa_entropy, &r->sa_entropy, NULL},
        {"heads.ca_variance", &r->n_ca_variance, &r->ca_variance, NULL},
        {"nll.head_ablation", &r->n_nll_head_ablation, &r->nll_head_ablation, NULL},
        {"transcribe.all.entropy", &r->n_transcribe_entropy, &r->transcribe_entropy, NULL},
        {"nll.patch_head", &r->n_nll_patch_head, &r->nll_patch_head, NULL},
        {"atp.head", &r->n_atp_head, &r->atp_head, NULL},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++) {
        if (strcmp(name, map[i].name))
            continue;
        if (map[i].scalar) {
            *map[i].scalar = d[0];
        } else if (!*map[i].v && (*map[i].v = s_copy_f(d, n))) {
            *map[i].n = n;
        }
        return;
    }
    if (strncmp(name, "nll.skip_set.", 13) && strncmp(name, "nll.patch.", 10) &&
        strncmp(name, "nll.replace.", 12))
        return; /* not kept in the record (logits) */
    Docmint__NamedValue **v = realloc(r->named, (r->n_named + 1) * sizeof *v);
    if (!v)
        return;
    r->named = v;
    Docmint__NamedValue *nv = malloc(sizeof *nv);
    if (!nv)
        return;
    docmint__named_value__init(nv);
    if (!(nv->name = strdup(name + 4))) { /* without "nll." */
        free(nv);
        return;
    }
    nv->value = d[0];
    r->named[r->n_named++] = nv;
}

static void s_rec_i64(void *ctx, const char *name, int ndim, const int64_t *shape,
                      const int64_t *d)
{
    Docmint__AnalysisRecord *r = ctx;
    size_t n = s_numel(ndim, shape);
    size_t *np = NULL;
    int32_t **vp = NULL;
    if (!strcmp(name, "lens.top1")) {
        np = &r->n_lens_top1;
        vp = &r->lens_top1;
    } else if (!strcmp(name, "lens.target_rank")) {
        np = &r->n_lens_target_rank;
        vp = &r->lens_target_rank;
    } else if (!strcmp(name, "transcribe.all.top1")) {
        np = &r->n_transcribe_top1;
        vp = &r->transcribe_top1;
    }
    if (vp && !*vp && (*vp = s_copy_i(d, n)))
        *np = n;
}

void analyze_record_sink(Docmint__AnalysisRecord *r, AnSink *sink)
{
    r->nll_clean = r->nll_m_last_cancels_c_last = r->nll_corrupt = r->nll_patch_query = NAN;
    *sink = (AnSink){s_rec_f32, s_rec_i64, r};
}

void analyze_record_clear(Docmint__AnalysisRecord *r)
{
    stage_free_str(r->answer);
    stage_free_str(r->page_id);
    stage_free_str(r->question);
    free(r->token_ids);
    free(r->nll_skip);
    free(r->nll_reproject);
    free(r->lens_target_logprob);
    free(r->lens_top1);
    free(r->lens_target_rank);
    free(r->sa_entropy);
    free(r->ca_variance);
    free(r->nll_head_ablation);
    free(r->transcribe_top1);
    free(r->transcribe_entropy);
    free(r->nll_patch_head);
    free(r->atp_head);
    for (size_t i = 0; i < r->n_named; i++) {
        stage_free_str(r->named[i]->name);
        free(r->named[i]);
    }
    free(r->named);
    stage_free_str(r->kv_answer_clean);
    stage_free_str(r->kv_answer_patched);
    stage_free_str(r->kv_answer_control);
    stage_free_str(r->kv_set);
    stage_free_str(r->kv_v_clean);
    stage_free_str(r->kv_v_new);
    stage_free_str(r->kv_v_pos);
    docmint__analysis_record__init(r);
}

void analyze_result_clear(Docmint__Result *res)
{
    for (size_t i = 0; i < res->n_analyses; i++) {
        analyze_record_clear(res->analyses[i]);
        free(res->analyses[i]);
    }
    free(res->analyses);
    res->analyses = NULL;
    res->n_analyses = 0;
    stage_free_errors(res);
}

/* ------------------------------------------------------------ pages */

/* The page's pixels encoded, then the same pixels with noise (or the
 * page the shard names), when an analysis reads a corrupted run: both
 * DecPages (cpage left zeroed otherwise).  On failure err names the image. */
static int s_encode(AnalyzeStage *st, const Docmint__Page *pg, float **enc, float **cenc,
                    DecPage *page, DecPage *cpage, DmErr *err)
{
    const DonutModel *m = st->qa.model;
    DmImage img = {0};
    float *pix = NULL;
    int rc = -1;
    if (image_load_page(pg->image_path, pg->page_no, st->o.pdf_dpi, &img, err))
        goto done;
    PreprocGeometry geo;
    if (preproc_geometry(&st->pc, img.w, img.h, &geo, err))
        goto done;
    int oh, ow;
    swin_output_grid(&m->cfg.enc, geo.out_h, geo.out_w, &oh, &ow);
    size_t np = (size_t)3 * geo.out_h * geo.out_w, ne = (size_t)oh * ow * m->cfg.enc.hidden_size;
    pix = malloc(np * sizeof(float));
    *enc = malloc(ne * sizeof(float));
    *cenc = malloc(ne * sizeof(float));
    if (!pix || !*enc || !*cenc) {
        dm_err(err, "out of memory encoding %s", pg->image_path);
        goto done;
    }
    if (preproc_run(&st->pc, &img, pix, err) ||
        swin_encode(m, pix, geo.out_h, geo.out_w, *enc, NULL, err) ||
        dec_page_init(page, m, *enc, oh * ow, err))
        goto done;
    if (!(st->o.analyses & (AN_A_PATCHING | AN_A_ATTRIBUTION)) && !st->o.npatch) {
        /* no analysis reads a corrupted run (kv_retrieval has its own twin) */
        rc = 0;
        goto done;
    }
    if (st->o.corrupt_page) {
        /* another page of the corpus */
        int cn;
        if (!pg->corrupt_image_path || !pg->corrupt_image_path[0]) {
            dm_err(err, "page %s: the shard names no page to corrupt it with", pg->page_id);
            goto done;
        }
        free(*cenc);
        *cenc = NULL;
        if (page_encode(m, &st->pc, pg->corrupt_image_path, pg->corrupt_page_no, st->o.pdf_dpi,
                        cenc, &cn, err) ||
            dec_page_init(cpage, m, *cenc, cn, err))
            goto done;
        rc = 0;
        goto done;
    }
    analyze_add_noise(pix, np, st->o.noise_scale, st->o.seed, pg->page_id);
    if (swin_encode(m, pix, geo.out_h, geo.out_w, *cenc, NULL, err) ||
        dec_page_init(cpage, m, *cenc, oh * ow, err))
        goto done;
    rc = 0;
done:
    free(pix);
    image_free(&img);
    return rc;
}

/* The key-value retrieval answers of question q into r (an_kv): 0, -1
 * with err set (a message for the question's error record). */
static int s_kv(AnalyzeStage *st, const Docmint__Question *q, const DecPage *page,
                const DecPage *kpage, Docmint__AnalysisRecord *r, DmErr *err)
{
    const QaModel *qa = &st->qa;
    int32_t *prompt = NULL;
    int plen, rc = -1;
    AnKv kv = {0};
    AnGreedyCfg g = {st->o.kv_max_tokens > 0 ? st->o.kv_max_tokens : ANALYZE_KV_MAX_TOKENS,
                     qa->id_answer_close, qa->gen.eos_id, qa->gen.unk_id};
    if (qa_prompt(qa, q->text ? q->text : "", &prompt, &plen, err) ||
        an_kv(page, kpage, prompt, plen, &g, &kv, st->cfg.stats, err) ||
        qa_extract_answer(qa, kv.clean, kv.nclean, &r->kv_answer_clean, err) ||
        qa_extract_answer(qa, kv.patched, kv.npatched, &r->kv_answer_patched, err) ||
        qa_extract_answer(qa, kv.control, kv.ncontrol, &r->kv_answer_control, err)) {
        dm_err_prefix(err, "kv_retrieval");
        goto done;
    }
    rc = 0;
done:
    free(prompt);
    an_kv_free(&kv);
    return rc;
}

/* One record of (question q, answer a) on the encoded pages; kpage (may be
 * NULL) is the page's key-value twin, for the first answer of a question
 * the twin pairs. */
static int s_item(AnalyzeStage *st, const Docmint__Page *pg, const Docmint__Question *q,
                  size_t a, const int32_t *ids, int n, int a0, const DecPage *page,
                  const DecPage *cpage, const DecPage *kpage, AnMemo *memo, Docmint__Result *res,
                  DmErr *err)
{
    Docmint__AnalysisRecord **v = realloc(res->analyses, (res->n_analyses + 1) * sizeof *v);
    if (!v)
        return dm_err(err, "out of memory");
    res->analyses = v;
    Docmint__AnalysisRecord *r = malloc(sizeof *r);
    if (!r)
        return dm_err(err, "out of memory");
    docmint__analysis_record__init(r);
    AnSink sink;
    analyze_record_sink(r, &sink);
    r->question_id = q->question_id;
    r->answer_index = (uint32_t)a;
    r->answer = strdup(q->answers[a]);
    r->page_id = strdup(pg->page_id ? pg->page_id : "");
    r->question = strdup(q->text ? q->text : "");
    r->token_ids = malloc((size_t)n * sizeof *r->token_ids);
    r->answer_start = (uint32_t)a0;
    r->layers = (uint32_t)st->qa.model->cfg.dec.layers;
    r->heads = (uint32_t)st->qa.model->cfg.dec.heads;
    if (!r->answer || !r->page_id || !r->question || !r->token_ids) {
        analyze_record_clear(r);
        free(r);
        return dm_err(err, "out of memory");
    }
    memcpy(r->token_ids, ids, (size_t)n * sizeof *ids);
    r->n_token_ids = (size_t)n;
    AnItem it = {page, cpage->m ? cpage : NULL, ids, n, a0, memo};
    DmErr ie = {{0}};
    if (an_item(&it, &st->cfg, &sink, &ie) ||
        (kpage && a == 0 && q->kv && s_kv(st, q, page, kpage, r, &ie))) {
        analyze_record_clear(r);
        free(r);
        if (strstr(ie.msg, "out of memory"))
            return dm_err(err, "%s", ie.msg);
        return stage_add_error(res, "analyze", q->question_id, (int)a, ie.msg) ? -1 : 0;
    }
    res->analyses[res->n_analyses++] = r;
    return 0;
}

static int s_page(void *stage, const Docmint__Page *pg, Docmint__Result *res, DmErr *err)
{
    AnalyzeStage *st = stage;
    float *enc = NULL, *cenc = NULL, *kenc = NULL;
    DecPage page = {0}, cpage = {0}, kpage = {0};
    AnMemo memo = {0}; /* the page's transcription, for its every question */
    int rc = -1, encoded = 0, kencoded = 0;
    DmErr pe = {{0}}, ke = {{0}};
    for (size_t i = 0; i < pg->n_questions; i++) {
        const Docmint__Question *q = pg->questions[i];
        if (q->n_answers == 0) {
            if (stage_add_error(res, "analyze", q->question_id, -1, "no gold answer to analyse"))
                goto oom;
            continue;
        }
        if (!encoded) {
            if (s_encode(st, pg, &enc, &cenc, &page, &cpage, &pe)) {
                if (strstr(pe.msg, "out of memory")) {
                    dm_err(err, "%s", pe.msg);
                    goto done;
                }
                encoded = -1;
            } else {
                encoded = 1;
            }
        }
        if (encoded < 0) {
            if (stage_add_error(res, "analyze", q->question_id, -1, pe.msg))
                goto oom;
            continue;
        }
        int kv = q->kv && (st->o.analyses & AN_A_KV) && pg->kv_image_path && pg->kv_image_path[0];
        if (kv && !kencoded) {
            /* the key-value twin, once for the page */
            int kn;
            kencoded = 1;
            if (page_encode(st->qa.model, &st->pc, pg->kv_image_path, pg->kv_page_no,
                            st->o.pdf_dpi, &kenc, &kn, &ke) ||
                dec_page_init(&kpage, st->qa.model, kenc, kn, &ke)) {
                if (strstr(ke.msg, "out of memory")) {
                    dm_err(err, "%s", ke.msg);
                    goto done;
                }
                dm_err_prefix(&ke, "kv_retrieval: the twin of page %s", pg->page_id);
                kencoded = -1;
            }
        }
        if (kv && kencoded < 0) {
            if (stage_add_error(res, "analyze", q->question_id, -1, ke.msg))
                goto oom;
            continue;
        }
        size_t na = st->o.first_answer_only ? 1 : q->n_answers;
        for (size_t a = 0; a < na; a++) {
            int32_t *ids = NULL;
            int n, a0;
            DmErr se = {{0}};
            if (cache_sequence(&st->qa, q->text ? q->text : "", q->answers[a], &ids, &n, &a0,
                               &se)) {
                char reason[1400];
                snprintf(reason, sizeof reason, "question %" PRId64 " answer %zu: %s",
                         q->question_id, a, se.msg);
                if (stage_add_error(res, "analyze", q->question_id, (int)a, reason))
                    goto oom;
                continue;
            }
            int r = s_item(st, pg, q, a, ids, n, a0, &page, &cpage, kv ? &kpage : NULL, &memo,
                           res, err);
            free(ids);
            if (r)
                goto done;
        }
    }
    rc = 0;
    goto done;
oom:
    dm_err(err, "out of memory building the result of page %s", pg->page_id);
done:
    an_memo_free(&memo);
    dec_page_free(&page);
    dec_page_free(&cpage);
    dec_page_free(&kpage);
    free(enc);
    free(cenc);
    free(kenc);
    return rc;
}

int analyze_shard(AnalyzeStage *st, const Docmint__Shard *shard, Docmint__Result *res,
                  const atomic_int *cancel, DmErr *err)
{
    return stage_shard(st, s_page, shard, res, cancel, err);
}

/* ------------------------------------------------------------ job keys */

int analyze_opts_parse(const char *json, const char *what, AnalyzeOpts *o, DmErr *err)
{
    memset(o, 0, sizeof *o);
    o->analyses = AN_A_ALL;
    o->noise_scale = 0.5;
    o->kv_max_tokens = ANALYZE_KV_MAX_TOKENS;
    if (!json || !json[0])
        return 0;
    json_error_t je;
    json_t *root = json_loads(json, 0, &je), *v;
    int rc = -1;
    if (!json_is_object(root)) {
        dm_err(err, "%s: the analyze settings are not a JSON object", what);
        goto done;
    }
    if ((v = json_object_get(root, "analyses"))) {
        size_t i;
        json_t *e;
        if (!json_is_array(v) || !json_array_size(v)) {
            dm_err(err, "%s: \"analyses\" is not a non-empty array of names", what);
            goto done;
        }
        o->analyses = 0;
        json_array_foreach(v, i, e) {
            unsigned bit = json_is_string(e) ? an_analysis_bit(json_string_value(e)) : 0;
            if (!bit) {
                dm_err(err, "%s: \"analyses\"[%zu]: unknown analysis (one of skip, reproject, lens, "
                            "heads, ablation, patching, attribution, transcribe, kv_retrieval)",
                       what, i);
                goto done;
            }
            o->analyses |= bit;
        }
    }
    if ((v = json_object_get(root, "skip_sets"))) {
        const char *name;
        json_t *subs;
        if (!json_is_object(v) || json_object_size(v) > ANALYZE_MAX_NAMED) {
            dm_err(err, "%s: \"skip_sets\" is not an object of at most %d named lists", what,
                   ANALYZE_MAX_NAMED);
            goto done;
        }
        json_object_foreach(v, name, subs) {
            char *d = o->skip[o->nskip];
            size_t n = (size_t)snprintf(d, sizeof o->skip[0], "%s=", name), i;
            json_t *e;
            if (!json_is_array(subs) || !json_array_size(subs)) {
                dm_err(err, "%s: \"skip_sets\".%s is not a non-empty array of sub-layer names",
                       what, name);
                goto done;
            }
            json_array_foreach(subs, i, e) {
                if (!json_is_string(e) || n >= sizeof o->skip[0]) {
                    dm_err(err, "%s: \"skip_sets\".%s[%zu] is not a sub-layer name", what, name, i);
                    goto done;
                }
                n += (size_t)snprintf(d + n, sizeof o->skip[0] - n, "%s%s", i ? "," : "",
                                      json_string_value(e));
            }
            if (n >= sizeof o->skip[0]) {
                dm_err(err, "%s: \"skip_sets\".%s is too long", what, name);
                goto done;
            }
            o->nskip++;
        }
    }
    const char *lists[2] = {"patch_sites", "replacements"};
    for (int k = 0; k < 2; k++) {
        if (!(v = json_object_get(root, lists[k])))
            continue;
        size_t i;
        json_t *e;
        if (!json_is_array(v) || json_array_size(v) > ANALYZE_MAX_NAMED) {
            dm_err(err, "%s: \"%s\" is not an array of at most %d strings", what, lists[k],
                   ANALYZE_MAX_NAMED);
            goto done;
        }
        json_array_foreach(v, i, e) {
            char *d = k ? o->replace[i] : o->patch[i];
            size_t cap = k ? sizeof o->replace[0] : sizeof o->patch[0];
            if (!json_is_string(e) || strlen(json_string_value(e)) >= cap) {
                dm_err(err, "%s: \"%s\"[%zu] is not a string of at most %zu bytes", what,
                       lists[k], i, cap - 1);
                goto done;
            }
            strcpy(d, json_string_value(e));
        }
        *(k ? &o->nreplace : &o->npatch) = (int)json_array_size(v);
    }
    if ((v = json_object_get(root, "patch_scope"))) {
        const char *sc = json_is_string(v) ? json_string_value(v) : "";
        if (strcmp(sc, "scored") && strcmp(sc, "all")) {
            dm_err(err, "%s: \"patch_scope\" must be \"scored\" or \"all\"", what);
            goto done;
        }
        o->patch_all_positions = !strcmp(sc, "all");
    }
    if ((v = json_object_get(root, "corruption"))) {
        const char *k = json_is_string(v) ? json_string_value(v) : "";
        if (strcmp(k, "noise") && strcmp(k, "page")) {
            dm_err(err, "%s: \"corruption\" must be \"noise\" or \"page\"", what);
            goto done;
        }
        o->corrupt_page = !strcmp(k, "page");
    }
    if ((v = json_object_get(root, "noise_scale"))) {
        if (!json_is_number(v) || json_number_value(v) < 0) {
            dm_err(err, "%s: \"noise_scale\" is not a non-negative number", what);
            goto done;
        }
        o->noise_scale = json_number_value(v);
    }
    if ((v = json_object_get(root, "kv_max_tokens"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1024) {
            dm_err(err, "%s: \"kv_max_tokens\" is not an integer from 1 to 1024", what);
            goto done;
        }
        o->kv_max_tokens = (int)json_integer_value(v);
    }
    if ((v = json_object_get(root, "seed"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            dm_err(err, "%s: \"seed\" is not a non-negative integer", what);
            goto done;
        }
        o->seed = (uint64_t)json_integer_value(v);
    }
    rc = 0;
done:
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------ worker */

static int s_ops_open(const WireJoin *j, void **st, DmErr *err)
{
    AnalyzeOpts o;
    if (analyze_opts_parse(j->analyze, j->job, &o, err))
        return -1;
    o.first_answer_only = j->first_answer_only;
    o.pdf_dpi = j->pdf_dpi;
    return analyze_open(j->model, &o, (AnalyzeStage **)st, err);
}

static int s_ops_shard(void *st, const Docmint__Shard *sh, Docmint__Result *res,
                       const atomic_int *cancel, DmErr *err)
{
    return analyze_shard(st, sh, res, cancel, err);
}

static void s_ops_close(void **st) { analyze_close((AnalyzeStage **)st); }

static const char *s_ops_fingerprint(const void *st) { return analyze_fingerprint(st); }

const WorkerStageOps analyze_stage_ops = {"analyze", s_ops_open, s_ops_shard,
                                          analyze_result_clear, s_ops_close, s_ops_fingerprint};
