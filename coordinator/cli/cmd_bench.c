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
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "kernels/cpu/bounds.h"
#include "coordinator/cli/commands.h"
#include "worker/model/decoder.h"
#include "worker/model/generate.h"
#include "kernels/cpu/kern.h"
#include "worker/stages/stage_cache.h"

#define DEF_QUESTIONS 4
#define DEF_TOKENS 32
#define DEF_PROMPT 10
#define DEF_REPEAT 3
#define DEF_BW_MIB 512
/* rows per call of the encoder GEMM bound (the encoder's chunks are ~4k) */
#define ENC_GEMM_ROWS 4096
/* The teacher-logit cache measurement: CACHE_Q sequences of --prompt +
 * CACHE_ANSWER + 2 tokens (</s_answer></s>), top-k CACHE_TOPK at T = 1. */
#define CACHE_Q 4
#define CACHE_ANSWER 8
#define CACHE_TOPK 64

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint bench MODEL_DIR [--questions N] [--tokens N] [--prompt N] [--repeat N]\n"
            "                     [--threads N] [--bw-mib N] [--precision P] [--decoder-only]\n"
            "  --questions N   questions decoded together in the batched run (default %d)\n"
            "  --tokens N      new tokens forced per question, >= 2 (default %d)\n"
            "  --prompt N      prompt length in tokens (default %d)\n"
            "  --repeat N      timed runs of every measurement, after one warm-up; the best\n"
            "                  is reported (default %d)\n"
            "  --threads N     compute threads, OpenBLAS and OpenMP alike (default: the CPUs\n"
            "                  this process may use)\n"
            "  --bw-mib N      buffer of the memory-bandwidth measurement in MiB (default %d)\n"
            "  --precision P   fp32, bf16 or both (default both: the decoder measured in fp32,\n"
            "                  then the same weights converted to bf16 and measured again)\n"
            "  --decoder-only  skip the encoder (the decoder reads a random stand-in output)\n"
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

/* Bytes of a linear's weights as the model holds them (bfloat16 or
 * float32) and of its float32 bias. */
static double s_lin_bytes(const DmLinear *l)
{
    return (l->wbf ? 2.0 : 4.0) * l->out * l->in + (l->b ? 4.0 * l->out : 0);
}
static double s_norm_bytes(const DmNorm *n) { return 4.0 * 2.0 * n->n; }

/* Weights one decoder step reads, whatever the batch: per present
 * sub-layer its LayerNorm and linears (self q,k,v,o; cross q,o — the cross
 * k,v were applied once per page; fc1, fc2), the embedding and final
 * LayerNorms, and the LM head [vocab, d]. */
static double s_dec_weight_bytes(const DonutModel *m)
{
    const MBartConfig *c = &m->cfg.dec;
    const MBartWeights *w = &m->dec;
    double b = s_norm_bytes(&w->ln_emb) + s_norm_bytes(&w->ln_final) +
               (w->lm_head_bf16 ? 2.0 : 4.0) * c->vocab * c->d_model;
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

/* Key/value bytes of a step: the page's cross K/V (read once per step for
 * all questions: bfloat16 when the model runs in bf16) and one sequence's
 * self-attention cache at length len (float32). */
static void s_dec_kv_bytes(const DonutModel *m, int n_enc, double len, double *cross,
                           double *self)
{
    const MBartConfig *c = &m->cfg.dec;
    double es = m->precision == DM_PREC_BF16 ? 2.0 : 4.0;
    *cross = *self = 0.0;
    for (int l = 0; l < c->layers; l++) {
        const DecLayer *L = &m->dec.layers[l];
        if (L->cross.present)
            *cross += 2.0 * es * n_enc * L->cross.k.out;
        if (L->self.present)
            *self += 2.0 * 4.0 * len * L->self.k.out;
    }
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

/* One precision's decoder figures. */
typedef struct DecBench {
    DmPrecision prec;
    double init_s;        /* dec_page_init: the cross K/V projections */
    GenTiming g1, gB;     /* batch 1 and batch B */
    double lm_ms[2];      /* the LM head alone at M = 1 and M = B */
    double wbytes, kv_cross, kv_self; /* bytes per step (kv_self per question) */
    double init_flops; /* the page init's k and v projections */
} DecBench;

/* Page init (kept in *page), generation at batch 1 and B, the LM head. */
static int s_bench_decoder(const DonutModel *m, const float *enc, int n_enc, int32_t **prompts,
                           int P, int B, int tokens, int reps, DecPage *page, DecBench *db,
                           DmErr *err)
{
    const MBartConfig *dc = &m->cfg.dec;
    db->prec = m->precision;
    db->init_s = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t = dm_now();
        if (dec_page_init(page, m, enc, n_enc, err))
            return -1;
        double dt = dm_now() - t;
        if (r > 0 && dt < db->init_s)
            db->init_s = dt;
        if (r < reps)
            dec_page_free(page);
    }
    if (s_time_gen(page, prompts, P, 1, tokens, reps, &db->g1, err) ||
        s_time_gen(page, prompts, P, B, tokens, reps, &db->gB, err))
        return -1;
    /* The LM head alone, [M, d] x [vocab, d]^T at M = 1 and M = B, as a
     * decoding step runs it (the team kernel in one parallel region). */
    float *x = malloc((size_t)B * dc->d_model * sizeof(float));
    float *y = malloc((size_t)B * dc->vocab * sizeof(float));
    if (!x || !y) {
        free(x);
        free(y);
        return dm_err(err, "out of memory");
    }
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < (size_t)B * dc->d_model; i++)
        x[i] = (float)((s_rng(&rng) >> 40) * (1.0 / (1 << 24))) - 0.5f;
    int Ms[2] = {1, B};
    uint16_t *xb = malloc((size_t)B * dc->d_model * sizeof *xb);
    float *rows[64];
    if (!xb) {
        free(x);
        free(y);
        return dm_err(err, "out of memory");
    }
    for (int b = 0; b < B; b++)
        rows[b] = y + (size_t)b * dc->vocab;
    for (int k = 0; k < 2; k++) {
        double best = 1e30;
        for (int r = 0; r <= (reps > 5 ? reps : 5); r++) {
            double t = dm_now();
            for (int i = 0; m->dec.lm_head_bf16 && i < Ms[k] * dc->d_model; i++)
                xb[i] = kern_f32_bf16(x[i]);
#pragma omp parallel
            kern_linear_team(x, m->dec.lm_head_bf16 ? xb : NULL, Ms[k], dc->d_model,
                             m->dec.lm_head, m->dec.lm_head_bf16, NULL, dc->vocab, rows, 0);
            double dt = dm_now() - t;
            if (r > 0 && dt < best)
                best = dt;
        }
        db->lm_ms[k] = best * 1e3;
    }
    free(x);
    free(xb);
    free(y);
    /* k and v of every layer with cross-attention: 2 GEMMs [n_enc, d] x [d, inner] */
    db->init_flops = 0.0;
    for (int l = 0; l < dc->layers; l++)
        if (m->dec.layers[l].cross.present)
            db->init_flops += 2.0 * 2.0 * n_enc * dc->d_model * m->dec.layers[l].cross.k.out;
    db->wbytes = s_dec_weight_bytes(m);
    s_dec_kv_bytes(m, n_enc, P + tokens / 2.0, &db->kv_cross, &db->kv_self);
    return 0;
}

/* The decoder block of the text report. */
static void s_print_decoder(const DecBench *d, const MBartConfig *dc, int B, int P, int tokens,
                            int n_enc, double bw, double gemm_gflops)
{
    const char *pn = donut_precision_name(d->prec);
    double bound_w = d->wbytes / (bw * 1e9);
    double bound_1 = (d->wbytes + d->kv_cross + d->kv_self) / (bw * 1e9);
    double bound_B = (d->wbytes + d->kv_cross + B * d->kv_self) / (bw * 1e9);
    char lab[64];
    printf("decoder %s  (prompt %d tokens, %d new tokens forced per question)\n", pn, P, tokens);
    double init_gf = d->init_flops / d->init_s * 1e-9;
    printf("  %-34s %8.2f ms       (%.1f GFLOP/s; %.2f of the encoder GEMM's %s rate)\n",
           "dec_page_init (cross K/V)", d->init_s * 1e3, init_gf,
           gemm_gflops > 0 ? init_gf / gemm_gflops : 0.0, pn);
    printf("  %-34s %8.2f ms\n", "first step (prompt pass), batch 1", d->g1.prompt_s * 1e3);
    snprintf(lab, sizeof lab, "prompt passes, batch %d", B);
    printf("  %-34s %8.2f ms     (%.2f ms per question)\n", lab, d->gB.prompt_s * 1e3,
           d->gB.prompt_s * 1e3 / B);
    printf("  %-34s %8.2f ms/step = %.2f ms/token  (mean %.2f ms/step)\n", "step, batch 1",
           d->g1.step_s * 1e3, d->g1.step_s * 1e3, d->g1.step_mean_s * 1e3);
    snprintf(lab, sizeof lab, "step, batch %d", B);
    printf("  %-34s %8.2f ms/step = %.2f ms/token  (mean %.2f ms/step)\n", lab, d->gB.step_s * 1e3,
           d->gB.step_s * 1e3 / B, d->gB.step_mean_s * 1e3);
    printf("  %-34s %8.1f MiB\n", "weights read per step", d->wbytes / 1048576.0);
    printf("  %-34s %8.2f ms       batch 1 at %.2fx, batch %d at %.2fx\n",
           "memory bound per step (weights)", bound_w * 1e3, d->g1.step_s / bound_w, B,
           d->gB.step_s / bound_w);
    printf("  %-34s %8.1f MiB      (cross K/V %d tokens, once for all questions)\n",
           "cross K/V read per step", d->kv_cross / 1048576.0, n_enc);
    printf("  %-34s %8.1f MiB      (self cache ~%.0f tokens)\n", "self K/V per step per question",
           d->kv_self / 1048576.0, P + tokens / 2.0);
    printf("  %-34s %8.2f ms       batch 1 at %.2fx\n", "bound (weights + K/V), batch 1",
           bound_1 * 1e3, d->g1.step_s / bound_1);
    snprintf(lab, sizeof lab, "bound (weights + K/V), batch %d", B);
    printf("  %-34s %8.2f ms       batch %d at %.2fx\n", lab, bound_B * 1e3, B,
           d->gB.step_s / bound_B);
    double lm_bytes = (d->prec == DM_PREC_BF16 ? 2.0 : 4.0) * dc->vocab * dc->d_model;
    printf("  %-34s %8.2f ms       (%.1f GB/s of its %.1f MiB)\n", "LM head linear alone, M=1",
           d->lm_ms[0], lm_bytes / (d->lm_ms[0] * 1e-3) * 1e-9, lm_bytes / 1048576.0);
    snprintf(lab, sizeof lab, "LM head linear alone, M=%d", B);
    printf("  %-34s %8.2f ms       (%.1f GB/s)\n", lab, d->lm_ms[1],
           lm_bytes / (d->lm_ms[1] * 1e-3) * 1e-9);
}

/* The decoder object of the JSON line. */
static void s_json_decoder(const DecBench *d, int B, int P, int tokens, double bw)
{
    double bound_w = d->wbytes / (bw * 1e9);
    double bound_1 = (d->wbytes + d->kv_cross + d->kv_self) / (bw * 1e9);
    double bound_B = (d->wbytes + d->kv_cross + B * d->kv_self) / (bw * 1e9);
    printf("{\"precision\":\"%s\",\"prompt\":%d,\"tokens\":%d,\"questions\":%d,"
           "\"page_init_ms\":%.3f,\"prompt_ms_b1\":%.3f,\"prompt_ms_bn\":%.3f,"
           "\"step_ms_b1\":%.3f,\"step_ms_b1_mean\":%.3f,\"token_ms_b1\":%.3f,"
           "\"step_ms_bn\":%.3f,\"step_ms_bn_mean\":%.3f,\"token_ms_bn\":%.3f,"
           "\"weight_mib_per_step\":%.2f,\"cross_kv_mib_per_step\":%.2f,"
           "\"self_kv_mib_per_step_per_question\":%.2f,\"bound_ms_weights\":%.3f,"
           "\"ratio_b1\":%.3f,\"ratio_bn\":%.3f,\"bound_ms_kv_b1\":%.3f,\"ratio_kv_b1\":%.3f,"
           "\"bound_ms_kv_bn\":%.3f,\"ratio_kv_bn\":%.3f,\"lm_head_ms_b1\":%.3f,"
           "\"lm_head_ms_bn\":%.3f}",
           donut_precision_name(d->prec), P, tokens, B, d->init_s * 1e3, d->g1.prompt_s * 1e3,
           d->gB.prompt_s * 1e3, d->g1.step_s * 1e3, d->g1.step_mean_s * 1e3, d->g1.step_s * 1e3,
           d->gB.step_s * 1e3, d->gB.step_mean_s * 1e3, d->gB.step_s * 1e3 / B,
           d->wbytes / 1048576.0, d->kv_cross / 1048576.0, d->kv_self / 1048576.0, bound_w * 1e3,
           d->g1.step_s / bound_w, d->gB.step_s / bound_w, bound_1 * 1e3, d->g1.step_s / bound_1,
           bound_B * 1e3, d->gB.step_s / bound_B, d->lm_ms[0], d->lm_ms[1]);
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

/* One untimed and reps timed encoder runs: best and mean seconds. */
static int s_time_encoder(const DonutModel *m, const float *pix, int H, int W, float *out, int reps,
                          double *best, double *mean, DmErr *err)
{
    *best = 1e30;
    *mean = 0.0;
    for (int r = 0; r <= reps; r++) {
        fprintf(stderr, "bench: encoder %s %s %d/%d\n", donut_precision_name(m->precision),
                r ? "run" : "warm-up", r, reps);
        double t = dm_now();
        if (swin_encode(m, pix, H, W, out, NULL, err))
            return -1;
        double dt = dm_now() - t;
        if (r == 0)
            continue;
        *best = dt < *best ? dt : *best;
        *mean += dt / reps;
    }
    return 0;
}

int cmd_bench(int argc, char **argv)
{
    const char *dir = NULL;
    int questions = DEF_QUESTIONS, tokens = DEF_TOKENS, P = DEF_PROMPT, reps = DEF_REPEAT;
    int threads = 0, bw_mib = DEF_BW_MIB, both = 1, dec_only = 0;
    DmPrecision prec = DM_PREC_F32;
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
        } else if (!strcmp(a, "--precision") && i + 1 < argc) {
            both = !strcmp(argv[++i], "both");
            if (!both && donut_precision_parse(argv[i], &prec)) {
                fprintf(stderr, "docmint bench: --precision %s: expected fp32, bf16 or both\n",
                        argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--decoder-only")) {
            dec_only = 1;
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
    kern_set_threads(threads ? threads : kern_cpu_count());
    int nth = kern_get_threads();

    DmErr err = {{0}};
    DonutModel *m = NULL;
    float *pix = NULL, *enc = NULL, *enc16 = NULL;
    int32_t *prompts[64] = {0};
    DecPage page;
    int page_ok = 0, rc = 1;

    /* ------------------------------------------------------------ load */
    double t = dm_now();
    if (donut_load_as(dir, prec, &m, &err))
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
    if (dec_only) /* a stand-in encoder output: LayerNorm-sized values */
        for (size_t i = 0; i < (size_t)n_enc * ec->hidden_size; i++)
            enc[i] = (float)((s_rng(&rng) >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
    /* the encoder in the precision the model was loaded in; with --precision
     * both, again in bf16 after the conversion below */
    DmPrecision enc_prec = m->precision;
    double enc16_best = 0.0, enc16_mean = 0.0, enc16_diff = 0.0;
    if (!dec_only && s_time_encoder(m, pix, H, W, enc, reps, &enc_best, &enc_mean, &err))
        goto fail;
    double attn_flops, enc_flops = s_swin_flops(m, H, W, &attn_flops);

    /* --------------------------------------------------------- decoder */
    fprintf(stderr, "bench: decoder %s\n", donut_precision_name(m->precision));
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
    DecBench dbs[2];
    int ndb = 1;
    if (s_bench_decoder(m, enc, n_enc, prompts, P, questions, tokens, reps, &page, &dbs[0], &err))
        goto fail;
    page_ok = 1;
    /* ---------------------------------------------- teacher-logit cache
     * What the cache-logits stage does with a page's answers: one
     * teacher-forced block over all of them with the LM head at the answer
     * positions only, then the top-k selection and log-sum-exp of each
     * (cache_forward_page + cache_fill_record).  Positions cached per sequence: the answer, its
     * </s_answer> and </s> (the prompt ends with <s_answer>). */
    fprintf(stderr, "bench: teacher-logit cache\n");
    if (dec_pack(m, &err)) /* as the cache stage runs it */
        goto fail;
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
            Docmint__LogitRecord recs[CACHE_Q], *rp[CACHE_Q];
            for (int q = 0; q < CACHE_Q; q++) {
                docmint__logit_record__init(&recs[q]);
                rp[q] = &recs[q];
            }
            if (!crc) /* the records one per thread, as the stage fills them */
                crc = cache_fill_block(&co, dc->vocab, CACHE_Q, cids, cns, ca0, logits, rp, &err);
            for (int q = 0; q < CACHE_Q; q++)
                cache_record_clear(&recs[q]);
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
    double cache_pps = cache_pos / cache_best, gen_tps = questions / dbs[0].gB.step_s;
    /* both: the same weights again in bf16, decoded on a page of their own */
    if (both) {
        fprintf(stderr, "bench: decoder bf16\n");
        dec_page_free(&page);
        page_ok = 0;
        if (donut_set_precision(m, DM_PREC_BF16, &err) ||
            s_bench_decoder(m, enc, n_enc, prompts, P, questions, tokens, reps, &page, &dbs[1],
                            &err))
            goto fail;
        if (!dec_only) {
            size_t ne = (size_t)n_enc * ec->hidden_size;
            enc16 = malloc(ne * sizeof *enc16);
            if (!enc16) {
                dm_err(&err, "out of memory for a second encoder output");
                goto fail;
            }
            if (s_time_encoder(m, pix, H, W, enc16, reps, &enc16_best, &enc16_mean, &err))
                goto fail;
            for (size_t i = 0; i < ne; i++) {
                double d = fabs((double)enc16[i] - enc[i]);
                enc16_diff = d > enc16_diff ? d : enc16_diff;
            }
        }
        page_ok = 1;
        ndb = 2;
    }
    double rss_model = s_rss_mib();

    /* -------------------------------------------------- machine bounds */
    fprintf(stderr, "bench: machine bounds\n");
    /* Bounds are best-of: at least 5 runs of the cheap ones and 3 of each
     * GEMM, so a busy moment of a shared machine does not set them. */
    int breps = reps > 5 ? reps : 5, greps = reps > 3 ? reps : 3;
    double fma512 = 0.0, fma256 = 0.0, dpbf16 = 0.0, bw = 0.0, gemm[NSHAPES], gemm_best = 0.0;
    /* the encoder's GEMM backend on the encoder's own shapes, fp32 and bf16 */
    int enc_dims[DM_MAX_STAGES];
    for (int s = 0; s < ec->nstages; s++)
        enc_dims[s] = m->enc.stages[s].dim;
    double enc_gemm[2] = {0.0, 0.0};
    if (bound_fma_peak("avx512f", nth, breps, &fma512, &err) ||
        bound_fma_peak("avx2", nth, breps, &fma256, &err) ||
        bound_fma_peak("avx512bf16", nth, breps, &dpbf16, &err) ||
        bound_encoder_gemm(enc_dims, ec->nstages, ENC_GEMM_ROWS, 0, greps, &enc_gemm[0], &err) ||
        (dpbf16 > 0 && bound_encoder_gemm(enc_dims, ec->nstages, ENC_GEMM_ROWS, 1, greps,
                                          &enc_gemm[1], &err)) ||
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
    /* the encoder's time if its linear layers ran at the GEMM backend's rate
     * and everything else (window attention, LayerNorm, gathers) were free */
    double lin_flops = enc_flops - attn_flops;
    int e16 = enc_prec == DM_PREC_BF16;
    double enc_bound = enc_gemm[e16] > 0 ? lin_flops / (enc_gemm[e16] * 1e9) : 0.0;
    double enc16_bound = enc_gemm[1] > 0 ? lin_flops / (enc_gemm[1] * 1e9) : 0.0;
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
    if (dpbf16 > 0)
        printf("  %-34s %8.1f GFLOP/s\n", "bf16 dot-product peak (vdpbf16ps)", dpbf16);
    printf("  %-34s %8.1f GFLOP/s   (kern_gemm: oneDNN, packed weights, %d rows)\n",
           "encoder GEMM fp32, its shapes", enc_gemm[0], ENC_GEMM_ROWS);
    if (enc_gemm[1] > 0)
        printf("  %-34s %8.1f GFLOP/s   (bf16 x bf16 -> fp32)\n", "encoder GEMM bf16, its shapes",
               enc_gemm[1]);
    printf("model  image %dx%d -> %d encoder tokens (%dx%d), decoder %d layers d=%d vocab %d\n", H,
           W, n_enc, oh, ow, dc->layers, dc->d_model, dc->vocab);
    printf("  %-34s %8.2f s\n", "load", load_s);
    if (dec_only) {
        printf("encoder  not run (--decoder-only: a random stand-in output)\n");
    } else {
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
        printf("  %-34s %s\n", "precision", donut_precision_name(enc_prec));
        printf("  %-34s %8.3f s        seconds per page at %.2fx of it\n",
               "bound (linears at encoder GEMM)", enc_bound, enc_best / enc_bound);
        if (enc16_best > 0) {
            printf("  %-34s %8.3f s        (mean %.3f s) = %.2fx faster than fp32\n",
                   "seconds per page, bf16", enc16_best, enc16_mean, enc_best / enc16_best);
            printf("  %-34s %8.3f s        bf16 seconds per page at %.2fx of it\n",
                   "bound bf16 (linears at bf16 GEMM)", enc16_bound, enc16_best / enc16_bound);
            printf("  %-34s %8.2e\n", "bf16 vs fp32 output, max|diff|", enc16_diff);
        }
    }
    for (int i = 0; i < ndb; i++)
        s_print_decoder(&dbs[i], dc, Bq, P, tokens, n_enc, bw,
                        enc_gemm[dbs[i].prec == DM_PREC_BF16]);
    if (ndb == 2)
        printf("  %-34s %8.2fx      batch %d %.2fx, first step %.2fx, page init %.2fx\n",
               "bf16 step speed-up, batch 1", dbs[0].g1.step_s / dbs[1].g1.step_s, Bq,
               dbs[0].gB.step_s / dbs[1].gB.step_s, dbs[0].g1.prompt_s / dbs[1].g1.prompt_s,
               dbs[0].init_s / dbs[1].init_s);
    char lab[64];
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
    printf("],\"read_gbps\":%.2f,\"bw_mib\":%d,\"fma_avx512_gflops\":%.2f,\"fma_avx2_gflops\":%.2f,"
           "\"dpbf16_gflops\":%.2f,\"encoder_gemm_gflops\":%.2f,\"encoder_gemm_bf16_gflops\":%.2f}",
           bw, bw_mib, fma512, fma256, dpbf16, enc_gemm[0], enc_gemm[1]);
    printf(",\"load_s\":%.3f", load_s);
    if (dec_only)
        printf(",\"encoder\":null");
    else
        printf(",\"encoder\":{\"image\":[%d,%d],\"tokens\":%d,\"seconds\":%.4f,\"seconds_mean\":%.4f,"
               "\"gflop\":%.2f,\"attn_gflop\":%.2f,\"gflops\":%.2f,\"frac_sgemm\":%.4f,"
               "\"frac_fma_peak\":%.4f,\"frac_avx2_peak\":%.4f,\"precision\":\"%s\","
               "\"bound_s\":%.4f,\"bf16_seconds\":%.4f,\"bf16_bound_s\":%.4f,"
               "\"bf16_maxdiff\":%.3e}",
               H, W, n_enc, enc_best, enc_mean, enc_flops * 1e-9, attn_flops * 1e-9, enc_gflops,
               enc_gflops / gemm_best, fma_peak > 0 ? enc_gflops / fma_peak : 0.0,
               fma256 > 0 ? enc_gflops / fma256 : 0.0, donut_precision_name(enc_prec), enc_bound,
               enc16_best, enc16_bound, enc16_diff);
    printf(",\"decoder\":");
    s_json_decoder(&dbs[0], Bq, P, tokens, bw);
    if (ndb == 2) {
        printf(",\"decoder_bf16\":");
        s_json_decoder(&dbs[1], Bq, P, tokens, bw);
    }
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
    free(enc16);
    donut_free(&m);
    return rc;
}
