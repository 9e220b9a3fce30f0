/* cmd_bench.c - `docmint bench`: encoder seconds per page and decoder
 * milliseconds per token, next to the limits of the same machine measured
 * in the same run (sgemm rate, memory read bandwidth, FMA peak).
 *
 * The teacher-logit cache figure (positions per second of teacher-forced
 * passes with top-k + log-sum-exp, as the cache-logits stage runs them) is
 * reported next to the decoder's, with its ratio to the batch generated
 * tokens per second.
 *
 * Order of work: load, encoder, decoder, cache, then the machine bounds, so that
 * the peak RSS of the model runs is read before the bound buffers (a
 * 512 MiB bandwidth buffer, GEMM operands) raise the high-water mark.
 * Output: aligned text on stdout, then one JSON line for scripts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "bounds.h"
#include "commands.h"
#include "decoder.h"
#include "generate.h"
#include "kern.h"
#include "stage_cache.h"

#define DEF_QUESTIONS 4
#define DEF_TOKENS 32
#define DEF_PROMPT 10
#define DEF_REPEAT 3
#define DEF_BW_MIB 512
/* The teacher-logit cache measurement: CACHE_Q sequences of --prompt +
 * CACHE_ANSWER + 2 tokens (</s_answer></s>), top-k CACHE_TOPK at T = 1. */
#define CACHE_Q 4
#define CACHE_ANSWER 8
#define CACHE_TOPK 64

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint bench MODEL_DIR [--questions N] [--tokens N] [--prompt N] [--repeat N]\n"
            "                     [--threads N] [--bw-mib N]\n"
            "  --questions N   questions decoded together in the batched run (default %d)\n"
            "  --tokens N      new tokens forced per question, >= 2 (default %d)\n"
            "  --prompt N      prompt length in tokens (default %d)\n"
            "  --repeat N      timed runs of every measurement, after one warm-up; the best\n"
            "                  is reported (default %d)\n"
            "  --threads N     BLAS and worker threads (default: the BLAS default, i.e.\n"
            "                  OPENBLAS_NUM_THREADS or all cores)\n"
            "  --bw-mib N      buffer of the memory-bandwidth measurement in MiB (default %d)\n"
            "Prints aligned text, then one JSON line.  The model's weights may be random\n"
            "(docmint init); the image is random normalised pixels of the config's size.\n",
            DEF_QUESTIONS, DEF_TOKENS, DEF_PROMPT, DEF_REPEAT, DEF_BW_MIB);
}

static int s_parse_int(const char *flag, const char *s, int lo, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > 1000000) {
        fprintf(stderr, "docmint bench: %s %s: expected an integer >= %d\n", flag, s, lo);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static double s_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

static uint64_t s_rng(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* ------------------------------------------------------- analytic FLOPs */

static int s_round_up(int x, int m) { return (x + m - 1) / m * m; }

/* Multiply-adds count 2.  Linear layers of attention (qkv, proj) and the
 * window attention itself run over the map padded to whole windows, as HF
 * does; the MLP over the unpadded tokens; a merge over the map padded to
 * even sides.  LayerNorm, softmax, GELU and biases are not counted. */
static double s_swin_flops(const DonutModel *m, int H, int W, double *attn_flops)
{
    const SwinConfig *c = &m->cfg.enc;
    int h = (H + c->patch - 1) / c->patch, w = (W + c->patch - 1) / c->patch;
    double f = 2.0 * h * w * c->embed_dim * (double)(c->channels * c->patch * c->patch);
    double fa = 0.0;
    for (int s = 0; s < c->nstages; s++) {
        const SwinStage *st = &m->enc.stages[s];
        double C = st->dim;
        int mn = h < w ? h : w;
        int win = mn <= c->window ? mn : c->window;
        double Tpad = (double)s_round_up(h, win) * s_round_up(w, win), T = (double)h * w;
        double N = (double)win * win;
        for (int b = 0; b < st->depth; b++) {
            const SwinBlock *bl = &st->blocks[b];
            f += 2.0 * Tpad * C * (bl->q.out + bl->k.out + bl->v.out); /* q, k, v */
            double a = 2.0 * 2.0 * Tpad * N * bl->q.out;               /* QK^T, PV */
            f += a;
            fa += a;
            f += 2.0 * Tpad * bl->proj.in * bl->proj.out;            /* proj */
            f += 2.0 * T * (C * bl->fc1.out + (double)bl->fc2.in * bl->fc2.out); /* MLP */
        }
        if (st->has_merge && s + 1 < c->nstages) {
            h = (h + 1) / 2;
            w = (w + 1) / 2;
            f += 2.0 * h * w * (double)st->merge.in * st->merge.out;
        }
    }
    *attn_flops = fa;
    return f;
}

/* ---------------------------------------------------- decoder step bytes */

static double s_lin_bytes(const DmLinear *l) { return 4.0 * ((double)l->out * l->in + (l->b ? l->out : 0)); }
static double s_norm_bytes(const DmNorm *n) { return 4.0 * 2.0 * n->n; }

/* Weights one decoder step reads, whatever the batch: per present
 * sub-layer its LayerNorm and linears (self q,k,v,o; cross q,o — the cross
 * k,v were applied once per page; fc1, fc2), the embedding and final
 * LayerNorms, and the LM head [vocab, d]. */
static double s_dec_weight_bytes(const DonutModel *m)
{
    const MBartConfig *c = &m->cfg.dec;
    const MBartWeights *w = &m->dec;
    double b = s_norm_bytes(&w->ln_emb) + s_norm_bytes(&w->ln_final) + 4.0 * c->vocab * c->d_model;
    for (int l = 0; l < c->layers; l++) {
        const DecLayer *L = &w->layers[l];
        if (L->self.present)
            b += s_norm_bytes(&L->self.ln) + s_lin_bytes(&L->self.q) + s_lin_bytes(&L->self.k) +
                 s_lin_bytes(&L->self.v) + s_lin_bytes(&L->self.o);
        if (L->cross.present)
            b += s_norm_bytes(&L->cross.ln) + s_lin_bytes(&L->cross.q) + s_lin_bytes(&L->cross.o);
        if (L->ffn.present)
            b += s_norm_bytes(&L->ffn.ln) + s_lin_bytes(&L->ffn.fc1) + s_lin_bytes(&L->ffn.fc2);
    }
    return b;
}

/* Key/value bytes one sequence's step reads: every cross K/V of the page
 * and the self-attention cache at length len. */
static double s_dec_kv_bytes(const DonutModel *m, int n_enc, double len)
{
    const MBartConfig *c = &m->cfg.dec;
    double b = 0.0;
    for (int l = 0; l < c->layers; l++) {
        const DecLayer *L = &m->dec.layers[l];
        if (L->cross.present)
            b += 2.0 * 4.0 * n_enc * L->cross.k.out;
        if (L->self.present)
            b += 2.0 * 4.0 * len * L->self.k.out;
    }
    return b;
}

/* -------------------------------------------------------- decoder timing */

typedef struct StepClock {
    int n;
    double *first; /* time of the first on_step call of each step */
} StepClock;

static void s_on_step(void *ctx, int seq, int step, const float *raw, int vocab)
{
    StepClock *sc = ctx;
    if (step >= 0 && step < sc->n && sc->first[step] == 0.0)
        sc->first[step] = dm_now();
}

typedef struct GenTiming {
    double prompt_s; /* start of gen_greedy to the first step's logits: all prompt passes */
    double step_s;   /* per decoding step (one dec_forward for all sequences), best */
    double step_mean_s;
} GenTiming;

/* One untimed run, then reps timed runs of gen_greedy over B prompts;
 * every run must produce exactly `tokens` new tokens per question. */
static int s_time_gen(const DecPage *page, int32_t **prompts, int P, int B, int tokens, int reps,
                      GenTiming *gt, DmErr *err)
{
    const DonutModel *m = page->m;
    GenConfig g;
    gen_config_default(m, &g);
    g.max_length = P + tokens;
    g.eos_id = -1;        /* never stop early */
    g.forced_eos_id = -1; /* and force nothing at the end */
    int lens[64];
    GenResult res[64];
    for (int b = 0; b < B; b++)
        lens[b] = P;
    StepClock sc = {tokens, calloc((size_t)tokens, sizeof(double))};
    if (!sc.first)
        return dm_err(err, "out of memory");
    gt->prompt_s = gt->step_s = 1e30;
    gt->step_mean_s = 0.0;
    int rc = 0;
    for (int r = 0; r <= reps && !rc; r++) {
        memset(sc.first, 0, (size_t)tokens * sizeof(double));
        double t0 = dm_now();
        if (gen_greedy(page, (const int32_t *const *)prompts, lens, B, &g, res, s_on_step, &sc,
                       err)) {
            rc = -1;
            break;
        }
        for (int b = 0; b < B; b++) {
            if (res[b].len != P + tokens && !rc)
                rc = dm_err(err, "question %d: generated %d tokens, expected %d", b,
                            res[b].len - P, tokens);
            gen_result_free(&res[b]);
        }
        if (rc || r == 0)
            continue; /* r == 0 is the warm-up */
        double pr = sc.first[0] - t0;
        double st = (sc.first[tokens - 1] - sc.first[0]) / (tokens - 1);
        if (pr < gt->prompt_s)
            gt->prompt_s = pr;
        if (st < gt->step_s)
            gt->step_s = st;
        gt->step_mean_s += st / reps;
    }
    free(sc.first);
    return rc;
}

/* ---------------------------------------------------------------- output */

static void s_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

typedef struct Shape {
    int M, K, N;
    const char *what;
} Shape;

/* Encoder-like GEMMs (tokens x in -> out) of the full-size config, the
 * row-chunk sizes an encoder may run them in, and a square one. */
static const Shape s_shapes[] = {
    {19200, 128, 384, "stage-0 qkv-like, K=128"},
    {19200, 128, 512, "stage-0 fc1-like"},
    {19200, 512, 128, "stage-0 fc2-like"},
    {19200, 512, 1536, "stage-2 qkv"},
    {19200, 512, 2048, "stage-2 fc1"},
    {19200, 2048, 512, "stage-2 fc2"},
    {4800, 1024, 4096, "stage-3 fc1"},
    {4800, 4096, 1024, "stage-3 fc2"},
    {4096, 128, 512, "fc1 C=128, 4096-row chunk"},
    {512, 1024, 4096, "fc1 C=1024, 512-row chunk"},
    {2048, 2048, 2048, "square"},
};
#define NSHAPES (int)(sizeof s_shapes / sizeof *s_shapes)

int cmd_bench(int argc, char **argv)
{
    const char *dir = NULL;
    int questions = DEF_QUESTIONS, tokens = DEF_TOKENS, P = DEF_PROMPT, reps = DEF_REPEAT;
    int threads = 0, bw_mib = DEF_BW_MIB;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--questions") && i + 1 < argc) {
            if (s_parse_int(a, argv[++i], 1, &questions))
                return 2;
            if (questions > 64) {
                fprintf(stderr, "docmint bench: --questions %d: at most 64\n", questions);
                return 2;
            }
        } else if (!strcmp(a, "--tokens") && i + 1 < argc) {
            if (s_parse_int(a, argv[++i], 2, &tokens))
                return 2;
        } else if (!strcmp(a, "--prompt") && i + 1 < argc) {
            if (s_parse_int(a, argv[++i], 1, &P))
                return 2;
        } else if (!strcmp(a, "--repeat") && i + 1 < argc) {
            if (s_parse_int(a, argv[++i], 1, &reps))
                return 2;
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            if (s_parse_int(a, argv[++i], 1, &threads))
                return 2;
        } else if (!strcmp(a, "--bw-mib") && i + 1 < argc) {
            if (s_parse_int(a, argv[++i], 16, &bw_mib))
                return 2;
        } else if (a[0] == '-') {
            fprintf(stderr, "docmint bench: unknown or incomplete option %s\n", a);
            s_usage(stderr);
            return 2;
        } else if (!dir) {
            dir = a;
        } else {
            fprintf(stderr, "docmint bench: unexpected argument %s\n", a);
            return 2;
        }
    }
    if (!dir) {
        s_usage(stderr);
        return 2;
    }
    struct stat stt;
    if (stat(dir, &stt) != 0 || !S_ISDIR(stt.st_mode)) {
        fprintf(stderr, "docmint bench: %s: not a folder\n", dir);
        return 1;
    }
    double load0 = -1.0, load1 = -1.0;
    getloadavg(&load0, 1);
    if (threads)
        kern_set_threads(threads);
    int nth = kern_get_threads();

    DmErr err = {{0}};
    DonutModel *m = NULL;
    float *pix = NULL, *enc = NULL;
    int32_t *prompts[64] = {0};
    DecPage page;
    int page_ok = 0, rc = 1;

    /* ------------------------------------------------------------ load */
    double t = dm_now();
    if (donut_load(dir, &m, &err))
        goto fail;
    double load_s = dm_now() - t;
    const SwinConfig *ec = &m->cfg.enc;
    const MBartConfig *dc = &m->cfg.dec;
    if (P + tokens > dc->max_pos) {
        fprintf(stderr,
                "docmint bench: --prompt %d + --tokens %d exceed the decoder's %d positions (%s)\n",
                P, tokens, dc->max_pos, dir);
        goto out;
    }
    if (ec->hidden_size != dc->d_model) {
        dm_err(&err, "%s: encoder hidden size %d differs from decoder d_model %d", dir,
               ec->hidden_size, dc->d_model);
        goto fail;
    }

    /* --------------------------------------------------------- encoder */
    int H = ec->image_h, W = ec->image_w, oh, ow;
    swin_output_grid(ec, H, W, &oh, &ow);
    int n_enc = oh * ow;
    size_t npix = (size_t)ec->channels * H * W;
    pix = malloc(npix * sizeof(float));
    enc = malloc((size_t)n_enc * ec->hidden_size * sizeof(float));
    if (!pix || !enc) {
        dm_err(&err, "out of memory for a %dx%d page", H, W);
        goto fail;
    }
    uint64_t rng = 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < npix; i++) /* normalised pixels: (x - 0.5) / 0.5 in [-1, 1] */
        pix[i] = (float)((s_rng(&rng) >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
    double enc_best = 1e30, enc_mean = 0.0;
    for (int r = 0; r <= reps; r++) {
        fprintf(stderr, "bench: encoder %s %d/%d\n", r ? "run" : "warm-up", r, reps);
        t = dm_now();
        if (swin_encode(m, pix, H, W, enc, NULL, &err))
            goto fail;
        double dt = dm_now() - t;
        if (r == 0)
            continue;
        enc_best = dt < enc_best ? dt : enc_best;
        enc_mean += dt / reps;
    }
    double attn_flops, enc_flops = s_swin_flops(m, H, W, &attn_flops);

    /* --------------------------------------------------------- decoder */
    fprintf(stderr, "bench: decoder\n");
    double init_best = 1e30;
    for (int r = 0; r <= reps; r++) {
        t = dm_now();
        if (dec_page_init(&page, m, enc, n_enc, &err))
            goto fail;
        double dt = dm_now() - t;
        if (r > 0 && dt < init_best)
            init_best = dt;
        if (r < reps)
            dec_page_free(&page);
    }
    page_ok = 1;
    for (int b = 0; b < questions; b++) {
        prompts[b] = malloc((size_t)P * sizeof(int32_t));
        if (!prompts[b]) {
            dm_err(&err, "out of memory");
            goto fail;
        }
        /* ids above the usual specials (0..3), never <unk> */
        int lo = dc->vocab > 8 ? 4 : 0;
        for (int i = 0; i < P; i++) {
            int id;
            do
                id = lo + (int)(s_rng(&rng) % (uint64_t)(dc->vocab - lo));
            while (id == dc->unk_id);
            prompts[b][i] = id;
        }
    }
    GenTiming g1 = {0}, gB = {0};
    if (s_time_gen(&page, prompts, P, 1, tokens, reps, &g1, &err) ||
        s_time_gen(&page, prompts, P, questions, tokens, reps, &gB, &err))
        goto fail;
    /* The LM head alone, [M, d] x [vocab, d]^T, at M = 1 and M = questions:
     * the largest weight of a step, through kern_linear as the decoder
     * calls it (sgemv at M = 1, sgemm above). */
    double lm_ms[2] = {0, 0};
    {
        int Ms[2] = {1, questions};
        float *x = malloc((size_t)questions * dc->d_model * sizeof(float));
        float *y = malloc((size_t)questions * dc->vocab * sizeof(float));
        if (!x || !y) {
            free(x);
            free(y);
            dm_err(&err, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < (size_t)questions * dc->d_model; i++)
            x[i] = (float)((s_rng(&rng) >> 40) * (1.0 / (1 << 24))) - 0.5f;
        for (int k = 0; k < 2; k++) {
            double best = 1e30;
            for (int r = 0; r <= (reps > 5 ? reps : 5); r++) {
                t = dm_now();
                kern_linear(x, Ms[k], dc->d_model, m->dec.lm_head, NULL, dc->vocab, y);
                double dt = dm_now() - t;
                if (r > 0 && dt < best)
                    best = dt;
            }
            lm_ms[k] = best * 1e3;
        }
        free(x);
        free(y);
    }
    /* ---------------------------------------------- teacher-logit cache
     * What the cache-logits stage does with a page's answers: one
     * teacher-forced block over all of them with the LM head at the answer
     * positions only, then the top-k selection and log-sum-exp of each
     * (cache_forward_page + cache_fill_record).  Positions cached per sequence: the answer, its
     * </s_answer> and </s> (the prompt ends with <s_answer>). */
    fprintf(stderr, "bench: teacher-logit cache\n");
    int cache_n = P + CACHE_ANSWER + 2, cache_pos = CACHE_Q * (CACHE_ANSWER + 2);
    double cache_best = 1e30;
    if (cache_n > dc->max_pos) {
        dm_err(&err, "cache sequence of %d tokens exceeds the decoder's %d positions", cache_n,
               dc->max_pos);
        goto fail;
    }
    {
        CacheOpts co = {0};
        co.top_k = CACHE_TOPK;
        co.n_temps = 1;
        co.temps[0] = 1.0;
        int32_t *seqs[CACHE_Q];
        int lo = dc->vocab > 8 ? 4 : 0, crc = 0;
        for (int q = 0; q < CACHE_Q; q++) {
            seqs[q] = malloc((size_t)cache_n * sizeof(int32_t));
            if (!seqs[q]) {
                for (int j = 0; j < q; j++)
                    free(seqs[j]);
                dm_err(&err, "out of memory");
                goto fail;
            }
            for (int i = 0; i < cache_n; i++) {
                int id;
                do
                    id = lo + (int)(s_rng(&rng) % (uint64_t)(dc->vocab - lo));
                while (id == dc->unk_id);
                seqs[q][i] = id;
            }
        }
        const int32_t *cids[CACHE_Q];
        int cns[CACHE_Q], ca0[CACHE_Q];
        for (int q = 0; q < CACHE_Q; q++) {
            cids[q] = seqs[q];
            cns[q] = cache_n;
            ca0[q] = P - 1;
        }
        for (int r = 0; r <= reps && !crc; r++) {
            t = dm_now();
            float *logits = NULL;
            crc = cache_forward_page(m, &page, CACHE_Q, cids, cns, ca0, &logits, &err);
            for (int q = 0; q < CACHE_Q && !crc; q++) {
                Docmint__LogitRecord rec;
                docmint__logit_record__init(&rec);
                crc = cache_fill_record(&co, dc->vocab, seqs[q], cache_n, P - 1,
                                        logits + (size_t)q * (CACHE_ANSWER + 2) * dc->vocab, &rec,
                                        &err);
                cache_record_clear(&rec);
            }
            free(logits);
            double dt = dm_now() - t;
            if (r > 0 && dt < cache_best)
                cache_best = dt;
        }
        for (int q = 0; q < CACHE_Q; q++)
            free(seqs[q]);
        if (crc)
            goto fail;
    }
    double cache_pps = cache_pos / cache_best, gen_tps = questions / gB.step_s;
    double rss_model = s_rss_mib();

    /* -------------------------------------------------- machine bounds */
    fprintf(stderr, "bench: machine bounds\n");
    /* Bounds are best-of: at least 5 runs of the cheap ones and 3 of each
     * GEMM, so a busy moment of a shared machine does not set them. */
    int breps = reps > 5 ? reps : 5, greps = reps > 3 ? reps : 3;
    double fma512 = 0.0, fma256 = 0.0, bw = 0.0, gemm[NSHAPES], gemm_best = 0.0;
    if (bound_fma_peak("avx512f", nth, breps, &fma512, &err) ||
        bound_fma_peak("avx2", nth, breps, &fma256, &err) ||
        bound_read_bandwidth((size_t)bw_mib << 20, nth, breps, &bw, &err))
        goto fail;
    for (int i = 0; i < NSHAPES; i++) {
        if (bound_sgemm(s_shapes[i].M, s_shapes[i].N, s_shapes[i].K, greps, &gemm[i], &err))
            goto fail;
        if (gemm[i] > gemm_best)
            gemm_best = gemm[i];
    }
    double rss_all = s_rss_mib();
    getloadavg(&load1, 1);

    /* ----------------------------------------------------------- report */
    BlasInfo bi;
    bound_blas_info(&bi);
    char feats[256];
    bound_cpu_features(feats, sizeof feats);
    const char *coretype = getenv("OPENBLAS_CORETYPE");
#if defined(__AVX512F__)
    const char *compiled = "AVX-512 (16-wide vector code)";
#elif defined(__AVX2__)
    const char *compiled = "AVX2 (8-wide vector code)";
#else
    const char *compiled = "no AVX2";
#endif
    double fma_peak = fma512 > 0 ? fma512 : fma256;
    double enc_gflops = enc_flops / enc_best * 1e-9;
    double wbytes = s_dec_weight_bytes(m);
    double mid_len = P + tokens / 2.0; /* mean self-cache length over the timed steps */
    double kv1 = s_dec_kv_bytes(m, n_enc, mid_len);
    double bound_w = wbytes / (bw * 1e9);
    double bound_1 = (wbytes + kv1) / (bw * 1e9);
    double bound_B = (wbytes + questions * kv1) / (bw * 1e9);
    int Bq = questions;

    printf("docmint bench %s  (best of %d timed runs after one warm-up; %d threads)\n", dir, reps,
           nth);
    printf("paths\n");
    printf("  %-34s %s\n", "BLAS", bi.config);
    printf("  %-34s core %s, %d threads (%s)\n", "", bi.corename, bi.threads, bi.parallel);
    printf("  %-34s %s\n", "OPENBLAS_CORETYPE", coretype ? coretype : "(unset)");
    printf("  %-34s %s\n", "CPU features", feats);
    printf("  %-34s %s\n", "compiled for", compiled);
    printf("  %-34s %.2f at start, %.2f at end (1-minute; >0 means other work shared the CPUs)\n",
           "load average", load0, load1);
    printf("machine bounds (%d threads)\n", nth);
    for (int i = 0; i < NSHAPES; i++) {
        char lab[64];
        snprintf(lab, sizeof lab, "sgemm %5d x %4d -> %4d", s_shapes[i].M, s_shapes[i].K,
                 s_shapes[i].N);
        printf("  %-34s %8.1f GFLOP/s   %s\n", lab, gemm[i], s_shapes[i].what);
    }
    printf("  %-34s %8.1f GFLOP/s\n", "sgemm best", gemm_best);
    printf("  %-34s %8.1f GB/s      (%d MiB, read-only sum)\n", "memory read bandwidth", bw,
           bw_mib);
    if (fma512 > 0)
        printf("  %-34s %8.1f GFLOP/s\n", "fp32 FMA peak, AVX-512", fma512);
    else
        printf("  %-34s %8s\n", "fp32 FMA peak, AVX-512", "n/a");
    if (fma256 > 0)
        printf("  %-34s %8.1f GFLOP/s\n", "fp32 FMA peak, AVX2", fma256);
    printf("model  image %dx%d -> %d encoder tokens (%dx%d), decoder %d layers d=%d vocab %d\n", H,
           W, n_enc, oh, ow, dc->layers, dc->d_model, dc->vocab);
    printf("  %-34s %8.2f s\n", "load", load_s);
    printf("encoder\n");
    printf("  %-34s %8.3f s        (mean %.3f s)\n", "seconds per page", enc_best, enc_mean);
    printf("  %-34s %8.1f GFLOP    (window attention %.1f)\n", "analytic FLOPs", enc_flops * 1e-9,
           attn_flops * 1e-9);
    printf("  %-34s %8.1f GFLOP/s  = %.2f of sgemm best", "rate", enc_gflops,
           enc_gflops / gemm_best);
    if (fma512 > 0)
        printf(", %.2f of AVX-512 peak", enc_gflops / fma512);
    if (fma256 > 0)
        printf(", %.2f of AVX2 peak", enc_gflops / fma256);
    printf("\n");
    printf("decoder  (prompt %d tokens, %d new tokens forced per question)\n", P, tokens);
    printf("  %-34s %8.2f ms\n", "dec_page_init (cross K/V)", init_best * 1e3);
    printf("  %-34s %8.2f ms\n", "first step (prompt pass), batch 1", g1.prompt_s * 1e3);
    char lab[64];
    snprintf(lab, sizeof lab, "prompt passes, batch %d", Bq);
    printf("  %-34s %8.2f ms     (%.2f ms per question)\n", lab, gB.prompt_s * 1e3,
           gB.prompt_s * 1e3 / Bq);
    printf("  %-34s %8.2f ms/step = %.2f ms/token  (mean %.2f ms/step)\n", "step, batch 1",
           g1.step_s * 1e3, g1.step_s * 1e3, g1.step_mean_s * 1e3);
    snprintf(lab, sizeof lab, "step, batch %d", Bq);
    printf("  %-34s %8.2f ms/step = %.2f ms/token  (mean %.2f ms/step)\n", lab, gB.step_s * 1e3,
           gB.step_s * 1e3 / Bq, gB.step_mean_s * 1e3);
    printf("  %-34s %8.1f MiB\n", "weights read per step", wbytes / 1048576.0);
    printf("  %-34s %8.2f ms       batch 1 at %.2fx, batch %d at %.2fx\n",
           "memory bound per step (weights)", bound_w * 1e3, g1.step_s / bound_w, Bq,
           gB.step_s / bound_w);
    printf("  %-34s %8.1f MiB      (cross K/V %d tokens + self cache ~%.0f)\n",
           "K/V read per step per question", kv1 / 1048576.0, n_enc, mid_len);
    printf("  %-34s %8.2f ms       batch 1 at %.2fx\n", "bound (weights + K/V), batch 1",
           bound_1 * 1e3, g1.step_s / bound_1);
    snprintf(lab, sizeof lab, "bound (weights + K/V), batch %d", Bq);
    printf("  %-34s %8.2f ms       batch %d at %.2fx\n", lab, bound_B * 1e3, Bq,
           gB.step_s / bound_B);
    double lm_mib = 4.0 * dc->vocab * dc->d_model / 1048576.0;
    printf("  %-34s %8.2f ms       (%.1f GB/s of its %.1f MiB)\n", "LM head linear alone, M=1",
           lm_ms[0], lm_mib * 1048576.0 / (lm_ms[0] * 1e-3) * 1e-9, lm_mib);
    snprintf(lab, sizeof lab, "LM head linear alone, M=%d", Bq);
    printf("  %-34s %8.2f ms       (%.1f GB/s)\n", lab, lm_ms[1],
           lm_mib * 1048576.0 / (lm_ms[1] * 1e-3) * 1e-9);
    printf("teacher-logit cache  (%d sequences of %d tokens, %d positions each, top-%d, T = 1)\n",
           CACHE_Q, cache_n, CACHE_ANSWER + 2, CACHE_TOPK);
    printf("  %-34s %8.2f ms       (one block, LM head at the answer positions, top-k + log-sum-exp)\n",
           "one page", cache_best * 1e3);
    printf("  %-34s %8.1f pos/s\n", "cached positions per second", cache_pps);
    snprintf(lab, sizeof lab, "generated tokens/s, batch %d", Bq);
    printf("  %-34s %8.1f tok/s\n", lab, gen_tps);
    printf("  %-34s %8.2fx\n", "cache positions / generated tokens", cache_pps / gen_tps);
    printf("memory\n");
    printf("  %-34s %8.0f MiB\n", "peak RSS, model runs", rss_model);
    printf("  %-34s %8.0f MiB\n", "peak RSS, with bound buffers", rss_all);

    /* one JSON line */
    printf("{\"model\":");
    s_json_str(stdout, dir);
    printf(",\"threads\":%d,\"repeat\":%d,\"blas\":{\"config\":", nth, reps);
    s_json_str(stdout, bi.config);
    printf(",\"corename\":");
    s_json_str(stdout, bi.corename);
    printf(",\"threads\":%d,\"parallel\":\"%s\"},\"openblas_coretype\":", bi.threads, bi.parallel);
    if (coretype)
        s_json_str(stdout, coretype);
    else
        printf("null");
    printf(",\"loadavg_start\":%.2f,\"loadavg_end\":%.2f,\"cpu_features\":", load0, load1);
    s_json_str(stdout, feats);
    printf(",\"compiled\":");
    s_json_str(stdout, compiled);
    printf(",\"bounds\":{\"sgemm_gflops\":%.2f,\"sgemm\":[", gemm_best);
    for (int i = 0; i < NSHAPES; i++)
        printf("%s{\"m\":%d,\"k\":%d,\"n\":%d,\"gflops\":%.2f}", i ? "," : "", s_shapes[i].M,
               s_shapes[i].K, s_shapes[i].N, gemm[i]);
    printf("],\"read_gbps\":%.2f,\"bw_mib\":%d,\"fma_avx512_gflops\":%.2f,\"fma_avx2_gflops\":%.2f}",
           bw, bw_mib, fma512, fma256);
    printf(",\"load_s\":%.3f", load_s);
    printf(",\"encoder\":{\"image\":[%d,%d],\"tokens\":%d,\"seconds\":%.4f,\"seconds_mean\":%.4f,"
           "\"gflop\":%.2f,\"attn_gflop\":%.2f,\"gflops\":%.2f,\"frac_sgemm\":%.4f,"
           "\"frac_fma_peak\":%.4f,\"frac_avx2_peak\":%.4f}",
           H, W, n_enc, enc_best, enc_mean, enc_flops * 1e-9, attn_flops * 1e-9, enc_gflops,
           enc_gflops / gemm_best, fma_peak > 0 ? enc_gflops / fma_peak : 0.0,
           fma256 > 0 ? enc_gflops / fma256 : 0.0);
    printf(",\"decoder\":{\"prompt\":%d,\"tokens\":%d,\"questions\":%d,\"page_init_ms\":%.3f,"
           "\"prompt_ms_b1\":%.3f,\"prompt_ms_bn\":%.3f,\"step_ms_b1\":%.3f,\"step_ms_b1_mean\":%.3f,"
           "\"token_ms_b1\":%.3f,\"step_ms_bn\":%.3f,\"step_ms_bn_mean\":%.3f,\"token_ms_bn\":%.3f,"
           "\"weight_mib_per_step\":%.2f,\"kv_mib_per_step_per_question\":%.2f,"
           "\"bound_ms_weights\":%.3f,\"ratio_b1\":%.3f,\"ratio_bn\":%.3f,"
           "\"bound_ms_kv_b1\":%.3f,\"ratio_kv_b1\":%.3f,\"bound_ms_kv_bn\":%.3f,\"ratio_kv_bn\":%.3f,"
           "\"lm_head_ms_b1\":%.3f,\"lm_head_ms_bn\":%.3f}",
           P, tokens, Bq, init_best * 1e3, g1.prompt_s * 1e3, gB.prompt_s * 1e3, g1.step_s * 1e3,
           g1.step_mean_s * 1e3, g1.step_s * 1e3, gB.step_s * 1e3, gB.step_mean_s * 1e3,
           gB.step_s * 1e3 / Bq, wbytes / 1048576.0, kv1 / 1048576.0, bound_w * 1e3,
           g1.step_s / bound_w, gB.step_s / bound_w, bound_1 * 1e3, g1.step_s / bound_1,
           bound_B * 1e3, gB.step_s / bound_B, lm_ms[0], lm_ms[1]);
    printf(",\"cache\":{\"sequences\":%d,\"tokens\":%d,\"positions\":%d,\"top_k\":%d,"
           "\"page_ms\":%.3f,\"positions_per_s\":%.2f,\"gen_tokens_per_s_bn\":%.2f,"
           "\"ratio\":%.4f}",
           CACHE_Q, cache_n, cache_pos, CACHE_TOPK, cache_best * 1e3, cache_pps, gen_tps,
           cache_pps / gen_tps);
    printf(",\"peak_rss_mib\":%.1f,\"peak_rss_mib_all\":%.1f}\n", rss_model, rss_all);
    fflush(stdout);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "docmint bench: %s\n", err.msg);
    rc = 1;
out:
    if (page_ok)
        dec_page_free(&page);
    for (int b = 0; b < 64; b++)
        free(prompts[b]);
    free(pix);
    free(enc);
    donut_free(&m);
    return rc;
}
