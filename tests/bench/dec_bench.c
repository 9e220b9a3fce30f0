/* dec_bench.c - the decoder alone, one measurement at a time, for profiling
 * (build/dec_bench MODEL_DIR WHAT [--reps N] [--precision fp32|bf16]
 * [--threads N]).
 *
 * WHAT is one of
 *   step1   decoding steps of one question (after its prompt pass)
 *   step4   decoding steps of four questions of one page together
 *   cache   the teacher-logit cache's block of a page: four sequences of
 *           10 prompt + 8 answer + 2 tokens, LM head at the answer rows,
 *           with the decoder packed for it (dec_pack) as the stage does
 *   lm4     the LM head linear alone at four rows (kern_linear_team, as in
 *           a decoding step); lm1 at one row
 * The encoder output is a random stand-in of the config's size; the cross
 * keys and values are projected once before the timed part.  Prints the
 * best and mean time per unit (step, block or call), and the best process
 * CPU time per unit (with --threads 1 on a shared machine, the steadier
 * figure). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/model/decoder.h"
#include "common/dm_error.h"
#include "kernels/cpu/kern.h"
#include "worker/stages/stage_cache.h"

#define NQ 4
#define PROMPT 10
#define STEPS 32

static uint64_t s_rng(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static double s_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Prompt pass, then STEPS steps; returns the seconds of the steps. */
static double s_steps(const DecPage *page, int B, int32_t (*ids)[PROMPT + STEPS], DmErr *err)
{
    const DonutModel *m = page->m;
    DecSeq seqs[NQ];
    DecSeq *sp[NQ];
    int counts[NQ];
    const int32_t *idp[NQ];
    float *logits = malloc((size_t)B * m->cfg.dec.vocab * sizeof(float));
    double t = -1.0;
    memset(seqs, 0, sizeof seqs);
    for (int b = 0; b < B; b++) {
        sp[b] = &seqs[b];
        counts[b] = PROMPT;
        idp[b] = ids[b];
        if (dec_seq_init(&seqs[b], m, PROMPT + STEPS, err))
            goto done;
    }
    if (!logits || dec_forward(page, sp, idp, counts, B, logits, 0, NULL, NULL, err))
        goto done;
    double t0 = dm_now();
    for (int s = 0; s < STEPS; s++) {
        for (int b = 0; b < B; b++) {
            counts[b] = 1;
            idp[b] = ids[b] + PROMPT + s;
        }
        if (dec_forward(page, sp, idp, counts, B, logits, 0, NULL, NULL, err))
            goto done;
    }
    t = dm_now() - t0;
done:
    for (int b = 0; b < B; b++)
        dec_seq_free(&seqs[b]);
    free(logits);
    return t;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *what = NULL, *prec = "fp32";
    int reps = 5, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--precision") && i + 1 < argc)
            prec = argv[++i];
        else if (!dir && argv[i][0] != '-')
            dir = argv[i];
        else if (!what && argv[i][0] != '-')
            what = argv[i];
        else
            dir = NULL, i = argc;
    }
    int kind = !what ? -1
               : !strcmp(what, "step1") ? 0
               : !strcmp(what, "step4") ? 1
               : !strcmp(what, "cache") ? 2
               : !strcmp(what, "lm4")   ? 3
               : !strcmp(what, "lm1")   ? 4
                                        : -1;
    int bf16 = !strcmp(prec, "bf16");
    if (!dir || kind < 0 || reps < 1 || (!bf16 && strcmp(prec, "fp32"))) {
        fprintf(stderr, "usage: dec_bench MODEL_DIR step1|step4|cache|lm4|lm1 [--reps N] "
                        "[--precision fp32|bf16] [--threads N]\n");
        return 2;
    }
    kern_set_threads(threads > 0 ? threads : omp_get_max_threads());
    DmErr err = {{0}};
    DonutModel *m = NULL;
    if (donut_load_as(dir, bf16 ? DM_PREC_BF16 : DM_PREC_F32, &m, &err)) {
        fprintf(stderr, "dec_bench: %s\n", err.msg);
        return 1;
    }
    const MBartConfig *dc = &m->cfg.dec;
    int oh, ow;
    swin_output_grid(&m->cfg.enc, m->cfg.enc.image_h, m->cfg.enc.image_w, &oh, &ow);
    int n_enc = oh * ow, D = dc->d_model;
    float *enc = malloc((size_t)n_enc * D * sizeof *enc);
    float *x = malloc((size_t)NQ * D * sizeof *x), *y = malloc((size_t)NQ * dc->vocab * sizeof *y);
    uint16_t *xb = malloc((size_t)NQ * D * sizeof *xb);
    if (!enc || !x || !y || !xb) {
        fprintf(stderr, "dec_bench: out of memory\n");
        return 1;
    }
    uint64_t r = 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < (size_t)n_enc * D; i++)
        enc[i] = (float)((s_rng(&r) >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
    for (int i = 0; i < NQ * D; i++)
        x[i] = (float)((s_rng(&r) >> 40) * (1.0 / (1 << 24))) - 0.5f;
    int32_t ids[NQ][PROMPT + STEPS];
    for (int b = 0; b < NQ; b++)
        for (int i = 0; i < PROMPT + STEPS; i++)
            ids[b][i] = 4 + (int)(s_rng(&r) % (uint64_t)(dc->vocab - 4));
    DecPage page;
    if ((kind == 2 && dec_pack(m, &err)) || dec_page_init(&page, m, enc, n_enc, &err)) {
        fprintf(stderr, "dec_bench: %s\n", err.msg);
        return 1;
    }
    double best = 1e30, sum = 0.0, cpu_best = 1e30;
    int units = kind < 2 ? STEPS : 1;
    for (int rep = 0; rep <= reps; rep++) {
        double c0 = s_cpu_now(), t = dm_now();
        if (kind < 2) {
            t = s_steps(&page, kind ? NQ : 1, ids, &err);
        } else if (kind == 2) {
            int n[NQ], a0[NQ];
            const int32_t *cid[NQ];
            for (int b = 0; b < NQ; b++) {
                n[b] = PROMPT + 10;
                a0[b] = PROMPT - 1;
                cid[b] = ids[b];
            }
            float *logits = NULL;
            if (cache_forward_page(m, &page, NQ, cid, n, a0, &logits, &err))
                t = -1.0;
            else
                t = dm_now() - t;
            free(logits);
        } else {
            /* as the decoding step runs it: the team kernel in one region */
            float *rows[NQ];
            for (int b = 0; b < NQ; b++)
                rows[b] = y + (size_t)b * dc->vocab;
            for (int i = 0; bf16 && i < NQ * D; i++)
                xb[i] = kern_f32_bf16(x[i]);
#pragma omp parallel
            kern_linear_team(x, bf16 ? xb : NULL, kind == 4 ? 1 : NQ, D, m->dec.lm_head, m->dec.lm_head_bf16, NULL,
                             dc->vocab, rows, 0);
            t = dm_now() - t;
        }
        if (t < 0) {
            fprintf(stderr, "dec_bench: %s\n", err.msg);
            return 1;
        }
        t /= units;
        double c = (s_cpu_now() - c0) / units;
        if (rep > 0) { /* rep 0 warms up */
            best = t < best ? t : best;
            cpu_best = c < cpu_best ? c : cpu_best;
            sum += t;
        }
    }
    printf("%s %s: best %.2f ms, mean %.2f ms per %s (%d threads; CPU time best %.2f ms)\n",
           what, prec, best * 1e3, sum / reps * 1e3,
           kind < 2 ? "step" : kind == 2 ? "page block" : "call", kern_get_threads(),
           cpu_best * 1e3);
    dec_page_free(&page);
    free(enc);
    free(x);
    free(xb);
    free(y);
    donut_free(&m);
    return 0;
}
