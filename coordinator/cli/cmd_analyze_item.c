/* cmd_analyze_item.c - `docmint analyze-item`: every analysis of one
 * teacher-forced item (worker/analyze), written under the names of the
 * interpretability reference file, so any model can be checked against
 * any reference. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/analyze_plot.h"
#include "coordinator/cli/commands.h"
#include "common/dm_fs.h"
#include "worker/analyze/analyze.h"
#include "worker/text/tokenizer.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint analyze-item MODEL_DIR --in CLEAN.safetensors --answer-start A\n"
            "                            [--corrupt CORRUPT.safetensors] [--subset C<l>:h,h,...]\n"
            "                            [--transcribe-logits] --out OUT.safetensors\n"
            "  --in FILE            pixel_values (f32 [1,3,H,W]) and decoder_input_ids (int64/int32 [1,T])\n"
            "  --answer-start A     first scored position: positions A .. T-2 are scored (target ids[t+1])\n"
            "  --corrupt FILE       pixel_values of the corrupted page (same ids): adds nll.corrupt,\n"
            "                       the patching and attribution results; default: none\n"
            "  --subset C<l>:h,...  heads of cross-attention l for transcribe.subset.*; default: none\n"
            "  --transcribe-logits  also write transcribe.*.logits [encoder tokens, vocab]; default: off\n"
            "  --skip-set NAME=S0,C1,...   sub-layers skipped together: nll.skip_set.NAME (repeatable)\n"
            "  --patch SITE         S<l>.in/.out, C<l>.H<h>, C<l>.query, ...: nll.patch.SITE.clean_into_corrupt\n"
            "                       and .corrupt_into_clean (repeatable; needs --corrupt)\n"
            "  --patch-scope S      scored (default: the scored positions) or all (every position)\n"
            "  --replace DST:=SRC   e.g. M1.out:=-C1.out or S1.out:=0.5*C0.out: nll.replace.SPEC (repeatable)\n"
            "  --analyses A,B,...   only these (skip, reproject, lens, heads, ablation, patching,\n"
            "                       attribution, transcribe); default: all\n"
            "  --stats              print what the item cost as one JSON line: teacher-forced passes,\n"
            "                       the block forwards that carried them, backward passes, seconds,\n"
            "                       and the cost in clean passes\n"
            "  --png DIR            also draw the figures (heat maps, logit-lens grid) into DIR; default: none\n"
            "  --out FILE           every result, named as in the reference (docs/analyze.md)\n");
}

/* Results go to the output file, and are kept for the figures. */
typedef struct Out {
    StWriter *w;
    AnTensors kept;
    int oom;
} Out;

static void s_f32(void *ctx, const char *name, int ndim, const int64_t *shape, const float *d)
{
    Out *o = ctx;
    st_writer_add_f32(o->w, name, ndim, shape, d);
    if (!strstr(name, ".logits"))
        o->oom |= an_tensors_add(&o->kept, name, ndim, shape, d, NULL);
}

static void s_i64(void *ctx, const char *name, int ndim, const int64_t *shape, const int64_t *d)
{
    Out *o = ctx;
    st_writer_add(o->w, name, DM_I64, ndim, shape, d);
    o->oom |= an_tensors_add(&o->kept, name, ndim, shape, NULL, d);
}

/* The figures into dir, with the model folder's tokenizer when it has one. */
static int s_figures(const char *model_dir, const AnTensors *kept, const int32_t *ids, int T,
                     int a, const float *pix, int H, int W, int gh, int gw, const char *dir,
                     DmErr *err)
{
    Tokenizer *tok = NULL;
    DmErr terr = {{0}};
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        if (tokenizer_load(model_dir, &tok, &terr))
            tok = NULL; /* the figures then name tokens by id */
    }
    int rc = dm_mkdirs(dir, err) ? -1 : analyze_figures(kept, ids, T, a, tok, dir, err);
    /* the transcription map over the page */
    const AnTensor *top = an_tensors_find(kept, "transcribe.all.top1");
    const AnTensor *ent = an_tensors_find(kept, "transcribe.all.entropy");
    if (!rc && top && ent && top->shape[0] == (int64_t)gh * gw) {
        int64_t *ids1 = malloc((size_t)top->shape[0] * sizeof *ids1);
        if (!ids1)
            rc = dm_err(err, "out of memory");
        for (int64_t j = 0; ids1 && j < top->shape[0]; j++)
            ids1[j] = (int64_t)top->v[j];
        snprintf(path, sizeof path, "%s/transcribe.png", dir);
        if (ids1)
            rc = analyze_transcribe_overlay(pix, H, W, gh, gw, ids1, ent->v, tok, path, err);
        free(ids1);
    }
    tokenizer_free(&tok);
    return rc;
}

/* pixel_values of a file as float32 [C, H, W]. */
static int s_pixels(const DonutModel *m, const TensorFile *tf, const char *path, float **pix,
                    int *H, int *W, DmErr *err)
{
    const DmTensor *tp = tensorfile_find(tf, "pixel_values");
    if (!tp || tp->ndim != 4 || tp->shape[0] != 1 || tp->shape[1] != m->cfg.enc.channels)
        return dm_err(err, "%s: needs pixel_values of shape [1, %d, H, W]", path,
                      m->cfg.enc.channels);
    *H = (int)tp->shape[2];
    *W = (int)tp->shape[3];
    if (!(*pix = malloc((size_t)dm_tensor_numel(tp) * sizeof(float))))
        return dm_err(err, "out of memory");
    return dm_tensor_to_f32(tp, *pix, err);
}

/* Encode a page and set up its cross keys and values. */
static int s_page(const DonutModel *m, const float *pix, int H, int W, float **enc, DecPage *page,
                  DmErr *err)
{
    int oh, ow;
    swin_output_grid(&m->cfg.enc, H, W, &oh, &ow);
    int N = oh * ow;
    if (!(*enc = malloc((size_t)N * m->cfg.enc.hidden_size * sizeof(float))))
        return dm_err(err, "out of memory");
    if (swin_encode(m, pix, H, W, *enc, NULL, err))
        return -1;
    return dec_page_init(page, m, *enc, N, err);
}

/* Seconds of one teacher-forced pass of ids with the LM head at the scored
 * rows (the second of two). */
static int s_plain_pass(const DecPage *page, const int32_t *ids, int T, int a, double *secs,
                        DmErr *err)
{
    float *logits = malloc((size_t)T * page->m->cfg.dec.vocab * sizeof *logits);
    if (!logits)
        return dm_err(err, "out of memory");
    int rc = 0;
    for (int k = 0; k < 2 && !rc; k++) {
        DecSeq seq;
        if (dec_seq_init(&seq, page->m, T, err)) {
            rc = -1;
            break;
        }
        DecSeq *sp = &seq;
        double t0 = dm_now();
        rc = dec_forward_rows(page, &sp, &ids, &T, &a, 1, logits, NULL, err);
        *secs = dm_now() - t0;
        dec_seq_free(&seq);
    }
    free(logits);
    return rc;
}

/* "C1:1,3" into cfg (checked against the model). */
static int s_subset(const DonutModel *m, const char *spec, AnCfg *cfg, DmErr *err)
{
    int layer, n = 0;
    if (sscanf(spec, "C%d:%n", &layer, &n) != 1 || !n || !spec[n])
        return dm_err(err, "--subset %s: expected C<layer>:<head>,<head>,...", spec);
    const char *p = spec + n;
    while (*p) {
        char *end, site[48];
        long h = strtol(p, &end, 10);
        if (end == p || (*end && *end != ','))
            return dm_err(err, "--subset %s: expected C<layer>:<head>,<head>,...", spec);
        snprintf(site, sizeof site, "C%d.H%ld", layer, h);
        AnSite s;
        if (an_site_parse(m, site, &s, err)) {
            dm_err_prefix(err, "--subset");
            return -1;
        }
        cfg->subset_keep[h] = 1;
        p = *end ? end + 1 : end;
    }
    cfg->subset_layer = layer;
    return 0;
}

int cmd_analyze_item(int argc, char **argv)
{
    const char *dir = NULL, *in = NULL, *cor = NULL, *out = NULL, *subset = NULL, *png = NULL;
    int a = -1, want_stats = 0;
    AnStats stats = {0};
    AnCfg cfg = {.analyses = AN_A_ALL, .subset_layer = -1, .stats = &stats};
    enum { MAXN = 64 };
    const char *skip_spec[MAXN], *patch_spec[MAXN], *repl_spec[MAXN];
    int nskip = 0, npatch = 0, nrepl = 0;
    AnSkipSet skips[MAXN];
    AnSite sites[MAXN];
    AnReplace repls[MAXN];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--in") && i + 1 < argc) {
            in = argv[++i];
        } else if (!strcmp(argv[i], "--corrupt") && i + 1 < argc) {
            cor = argv[++i];
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--stats")) {
            want_stats = 1;
        } else if (!strcmp(argv[i], "--analyses") && i + 1 < argc) {
            char list[256], *save = NULL;
            snprintf(list, sizeof list, "%s", argv[++i]);
            cfg.analyses = 0;
            for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                unsigned bit = an_analysis_bit(t);
                if (!bit) {
                    fprintf(stderr, "docmint analyze-item: --analyses: unknown analysis %s (see --help)\n", t);
                    return 2;
                }
                if (bit == AN_A_KV) {
                    fprintf(stderr, "docmint analyze-item: --analyses: kv_retrieval decodes greedily "
                                    "on corrupted twins: run it in the analyze stage "
                                    "(docs/analyze.md)\n");
                    return 2;
                }
                cfg.analyses |= bit;
            }
        } else if (!strcmp(argv[i], "--png") && i + 1 < argc) {
            png = argv[++i];
        } else if (!strcmp(argv[i], "--subset") && i + 1 < argc) {
            subset = argv[++i];
        } else if (!strcmp(argv[i], "--skip-set") && i + 1 < argc && nskip < MAXN) {
            skip_spec[nskip++] = argv[++i];
        } else if (!strcmp(argv[i], "--patch") && i + 1 < argc && npatch < MAXN) {
            patch_spec[npatch++] = argv[++i];
        } else if (!strcmp(argv[i], "--replace") && i + 1 < argc && nrepl < MAXN) {
            repl_spec[nrepl++] = argv[++i];
        } else if (!strcmp(argv[i], "--patch-scope") && i + 1 < argc) {
            const char *v = argv[++i];
            if (strcmp(v, "scored") && strcmp(v, "all")) {
                fprintf(stderr, "docmint analyze-item: --patch-scope %s: expected scored or all\n", v);
                return 2;
            }
            cfg.patch_all_positions = !strcmp(v, "all");
        } else if (!strcmp(argv[i], "--transcribe-logits")) {
            cfg.transcribe_logits = 1;
        } else if (!strcmp(argv[i], "--answer-start") && i + 1 < argc) {
            char *end;
            a = (int)strtol(argv[++i], &end, 10);
            if (*end || end == argv[i] || a < 0) {
                fprintf(stderr, "docmint analyze-item: --answer-start %s: expected a position >= 0\n",
                        argv[i]);
                return 2;
            }
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint analyze-item: unknown or incomplete option %s (see --help)\n",
                    argv[i]);
            return 2;
        } else if (!dir) {
            dir = argv[i];
        } else {
            fprintf(stderr, "docmint analyze-item: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!dir || !in || !out || a < 0) {
        fprintf(stderr, "docmint analyze-item: needs MODEL_DIR, --in, --answer-start and --out "
                        "(see --help)\n");
        return 2;
    }
    DmErr err = {{0}};
    DonutModel *m = NULL;
    TensorFile *tin = NULL, *tcor = NULL;
    StWriter *w = st_writer_new();
    float *pix = NULL, *cpix = NULL, *enc = NULL, *cenc = NULL;
    int64_t *ids64 = NULL;
    int32_t *ids = NULL;
    DecPage page = {0}, cpage = {0};
    int rc = 1, H, W, cH, cW;
    if (donut_load(dir, &m, &err) || tensorfile_open(in, &tin, &err) ||
        (cor && tensorfile_open(cor, &tcor, &err)) || (subset && s_subset(m, subset, &cfg, &err)))
        goto done;
    for (int i = 0; i < nskip; i++)
        if (an_skip_set_parse(m, skip_spec[i], &skips[i], &err)) {
            dm_err_prefix(&err, "--skip-set");
            goto done;
        }
    for (int i = 0; i < npatch; i++)
        if (an_site_parse(m, patch_spec[i], &sites[i], &err)) {
            dm_err_prefix(&err, "--patch");
            goto done;
        }
    for (int i = 0; i < nrepl; i++)
        if (an_replace_parse(m, repl_spec[i], &repls[i], &err)) {
            dm_err_prefix(&err, "--replace");
            goto done;
        }
    if (npatch && !cor) {
        dm_err(&err, "--patch needs --corrupt (the run patched from or into)");
        goto done;
    }
    cfg.skip_sets = skips;
    cfg.nskip_sets = nskip;
    cfg.patch_sites = sites;
    cfg.npatch = npatch;
    cfg.replaces = repls;
    cfg.nreplace = nrepl;
    const DmTensor *ti = tensorfile_find(tin, "decoder_input_ids");
    if (!ti || ti->ndim != 2 || ti->shape[0] != 1 || ti->shape[1] < 2 ||
        (ti->dtype != DM_I64 && ti->dtype != DM_I32)) {
        dm_err(&err, "%s: needs decoder_input_ids (int64 or int32) of shape [1, T], T >= 2", in);
        goto done;
    }
    int T = (int)ti->shape[1];
    if (a > T - 2) {
        dm_err(&err, "--answer-start %d: leaves no scored position in the %d tokens of %s", a, T, in);
        goto done;
    }
    ids64 = malloc((size_t)T * sizeof *ids64);
    ids = malloc((size_t)T * sizeof *ids);
    if (!ids64 || !ids) {
        dm_err(&err, "out of memory");
        goto done;
    }
    if (dm_tensor_to_i64(ti, ids64, &err))
        goto done;
    for (int i = 0; i < T; i++)
        ids[i] = (int32_t)ids64[i];
    /* packed as the analyze stage packs it, so an item gives the stage's numbers */
    if (dec_pack(m, &err) || s_pixels(m, tin, in, &pix, &H, &W, &err) ||
        s_page(m, pix, H, W, &enc, &page, &err))
        goto done;
    if (tcor && (s_pixels(m, tcor, cor, &cpix, &cH, &cW, &err) ||
                 s_page(m, cpix, cH, cW, &cenc, &cpage, &err)))
        goto done;
    AnItem it = {&page, tcor ? &cpage : NULL, ids, T, a};
    Out o = {w, {0}, 0};
    AnSink sink = {s_f32, s_i64, &o};
    /* the unit of cost: one plain teacher-forced pass (as the cache stage
     * runs it), timed after one to warm up */
    double pass_s = 0;
    if (want_stats && s_plain_pass(&page, ids, T, a, &pass_s, &err))
        goto done;
    int bad = an_item(&it, &cfg, &sink, &err) || st_writer_save(w, out, &err);
    if (!bad && want_stats)
        printf("{\"tokens\": %d, \"passes\": %ld, \"blocks\": %ld, \"backward\": %ld, "
               "\"seconds\": %.6f, \"teacher_forced_pass_seconds\": %.6f, "
               "\"cost_in_passes\": %.2f}\n",
               T, stats.passes, stats.blocks, stats.backward, stats.seconds, pass_s,
               pass_s > 0 ? stats.seconds / pass_s : 0.0);
    if (!bad && o.oom)
        bad = dm_err(&err, "out of memory") != 0;
    if (!bad && png) {
        int gh, gw;
        swin_output_grid(&m->cfg.enc, H, W, &gh, &gw);
        bad = s_figures(dir, &o.kept, ids, T, a, pix, H, W, gh, gw, png, &err) != 0;
    }
    an_tensors_free(&o.kept);
    if (bad)
        goto done;
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "docmint analyze-item: %s\n", err.msg);
    dec_page_free(&page);
    dec_page_free(&cpage);
    free(pix);
    free(cpix);
    free(enc);
    free(cenc);
    free(ids64);
    free(ids);
    st_writer_free(&w);
    tensorfile_close(&tin);
    tensorfile_close(&tcor);
    donut_free(&m);
    return rc;
}
