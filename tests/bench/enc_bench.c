/* enc_bench.c - the Swin encoder alone on one page of a checkpoint, float32
 * then bfloat16, against the machine's bounds measured in the same run
 * (`make bench` runs it; build/enc_bench MODEL_DIR [--reps N] [--threads N]).
 *
 * bf16: the model is converted by donut_set_precision (encoder linears
 * too, DM_SWIN_BF16); the output is compared with the float32 one (max |diff| and the largest
 * |value|).  The bound of a precision is the encoder's GEMM flops at the
 * GEMM library's best rate on the encoder's shapes (kern_gemm, 4096 rows)
 * plus nothing for the rest: time / bound says how far from GEMM-bound.
 *
 * --pages N (float32, instead of the rest) encodes pages 2..N twice each, in
 * turn: once after swin_free_workspace (a fresh block per page, as every
 * page was before the model kept it; the free is timed with the page) and
 * once on the kept block, and prints the minor page faults, wall time and
 * user / system CPU time (getrusage) of each, so the two are compared under
 * the same load. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "kernels/cpu/bounds.h"
#include "worker/model/donut.h"
#include "common/dm_error.h"
#include "kernels/cpu/kern.h"
#include "kernels/cpu/kern_gemm.h"
#include "common/tensorfile.h"

/* GEMM flops of one page and the GEMM time at the best measured rates. */
static double enc_gemm_flops(const DonutModel *m, int H, int W)
{
    const SwinConfig *c = &m->cfg.enc;
    double h = (H + c->patch - 1) / c->patch, w = (W + c->patch - 1) / c->patch, f = 0;
    for (int s = 0; s < c->nstages; s++) {
        const SwinStage *st = &m->enc.stages[s];
        double C = st->dim, T = h * w;
        int win = c->window;
        double Tp = ceil(h / win) * win * ceil(w / win) * win; /* padded windows */
        for (int b = 0; b < st->depth; b++)
            f += 2 * Tp * C * 4 * C + 2 * T * C * 2 * st->blocks[b].fc1.out;
        if (s + 1 < c->nstages) {
            h = ceil(h / 2);
            w = ceil(w / 2);
            f += 2 * h * w * 4 * C * 2 * C;
        }
    }
    return f;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best wall time of reps runs after a warm-up; *cpu gets the process CPU
 * seconds of that run (on a machine shared with other work, CPU seconds of
 * a one-thread run are close to its wall time on an idle core). */
static double time_enc(const DonutModel *m, const float *pix, int H, int W, float *out, int reps,
                       double *cpu, DmErr *err)
{
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t = dm_now(), c = cpu_now();
        if (swin_encode(m, pix, H, W, out, NULL, err))
            return -1;
        t = dm_now() - t;
        c = cpu_now() - c;
        fprintf(stderr, "enc_bench: %s %.2f s (cpu %.2f s)\n", r ? "run" : "warm-up", t, c);
        if (r > 0 && t < best) {
            best = t;
            *cpu = c;
        }
    }
    return best;
}

/* What one page cost: minor faults, wall, user and system CPU seconds. */
typedef struct PageCost {
    double flt, wall, user, sys;
} PageCost;

static double tv_s(struct timeval tv) { return tv.tv_sec + tv.tv_usec * 1e-6; }

/* One page, after giving the kept block back first when fresh. */
static int fault_page(const DonutModel *m, const float *pix, int H, int W, float *out, int fresh,
                      PageCost *pc, DmErr *err)
{
    struct rusage a, b;
    getrusage(RUSAGE_SELF, &a);
    double t = dm_now();
    if (fresh)
        swin_free_workspace(m);
    if (swin_encode(m, pix, H, W, out, NULL, err))
        return -1;
    pc->wall = dm_now() - t;
    getrusage(RUSAGE_SELF, &b);
    pc->flt = (double)(b.ru_minflt - a.ru_minflt);
    pc->user = tv_s(b.ru_utime) - tv_s(a.ru_utime);
    pc->sys = tv_s(b.ru_stime) - tv_s(a.ru_stime);
    return 0;
}

static void cost_print(const char *what, const PageCost *c)
{
    printf("%s %.0f minor faults, %.2f s (cpu user %.2f s, sys %.3f s)", what, c->flt, c->wall,
           c->user, c->sys);
}

static int fault_pages(const DonutModel *m, const float *pix, int H, int W, float *out, int pages,
                       DmErr *err)
{
    PageCost c, f, k, sf = {0}, sk = {0};
    if (fault_page(m, pix, H, W, out, 1, &c, err))
        return -1;
    cost_print("page 1 (allocates the block):", &c);
    printf("\n");
    for (int p = 2; p <= pages; p++) {
        if (fault_page(m, pix, H, W, out, 1, &f, err) || fault_page(m, pix, H, W, out, 0, &k, err))
            return -1;
        printf("page %d:", p);
        cost_print(" fresh block", &f);
        cost_print("; kept block", &k);
        printf("\n");
        fflush(stdout);
        sf = (PageCost){sf.flt + f.flt, sf.wall + f.wall, sf.user + f.user, sf.sys + f.sys};
        sk = (PageCost){sk.flt + k.flt, sk.wall + k.wall, sk.user + k.user, sk.sys + k.sys};
    }
    if (pages >= 2)
        printf("pages 2..%d, kept/fresh: minor faults %.4f (%.0f vs %.0f per page), wall %.3f, "
               "cpu user %.3f, sys %.3f\n", pages, sk.flt / sf.flt, sk.flt / (pages - 1),
               sf.flt / (pages - 1), sk.wall / sf.wall, sk.user / sf.user, sk.sys / sf.sys);
    return 0;
}

/* best rate of kern_gemm over the encoder's linears, 4096 rows */
static double gemm_rate(const DonutModel *m, int bf16, DmErr *err)
{
    int dims[DM_MAX_STAGES];
    for (int s = 0; s < m->cfg.enc.nstages; s++)
        dims[s] = m->enc.stages[s].dim;
    double g;
    return bound_encoder_gemm(dims, m->cfg.enc.nstages, 4096, bf16, 3, &g, err) ? -1.0 : g;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int reps = 2, threads = 0, pages = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pages") && i + 1 < argc)
            pages = atoi(argv[++i]);
        else if (!dir && argv[i][0] != '-')
            dir = argv[i];
        else
            dir = NULL, i = argc;
    }
    if (!dir || reps < 1) {
        fprintf(stderr, "usage: enc_bench MODEL_DIR [--reps N] [--threads N] [--pages N]\n");
        return 2;
    }
    kern_set_threads(threads > 0 ? threads : omp_get_max_threads());
    int nth = kern_get_threads();
    DmErr err = {{0}};
    DonutModel *m = NULL;
    if (donut_load(dir, &m, &err)) {
        fprintf(stderr, "enc_bench: %s\n", err.msg);
        return 1;
    }
    const SwinConfig *ec = &m->cfg.enc;
    int H = ec->image_h, W = ec->image_w, oh, ow;
    swin_output_grid(ec, H, W, &oh, &ow);
    size_t npix = (size_t)ec->channels * H * W, nout = (size_t)oh * ow * ec->hidden_size;
    float *pix = malloc(npix * sizeof *pix), *o32 = malloc(nout * sizeof *o32),
          *o16 = malloc(nout * sizeof *o16);
    if (!pix || !o32 || !o16) {
        fprintf(stderr, "enc_bench: out of memory\n");
        return 1;
    }
    uint64_t x = 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < npix; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pix[i] = (float)((x >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
    }
    if (pages > 0) {
        printf("encoder %dx%d, %d threads, %d pages\n", H, W, nth, pages);
        int rc = fault_pages(m, pix, H, W, o32, pages, &err);
        if (rc)
            fprintf(stderr, "enc_bench: %s\n", err.msg);
        free(pix);
        free(o32);
        free(o16);
        donut_free(&m);
        return rc ? 1 : 0;
    }
    double c32 = 0, c16 = 0, t32 = time_enc(m, pix, H, W, o32, reps, &c32, &err);
    double t16 = t32 < 0 || donut_set_precision(m, DM_PREC_BF16, &err) ? -1
                                                : time_enc(m, pix, H, W, o16, reps, &c16, &err);
    double p32 = 0, p16 = 0, g32 = 0, g16 = 0;
    if (t16 < 0 || bound_fma_peak("avx512f", nth, 3, &p32, &err) ||
        bound_fma_peak("avx512bf16", nth, 3, &p16, &err) || (g32 = gemm_rate(m, 0, &err)) < 0 ||
        (g16 = gemm_rate(m, 1, &err)) < 0) {
        fprintf(stderr, "enc_bench: %s\n", err.msg);
        return 1;
    }
    double md = 0, amax = 0;
    for (size_t i = 0; i < nout; i++) {
        double d = fabs((double)o16[i] - o32[i]);
        md = d > md ? d : md;
        amax = fabs(o32[i]) > amax ? fabs(o32[i]) : amax;
    }
    double fl = enc_gemm_flops(m, H, W);
    printf("encoder %dx%d, %d threads, OPENBLAS_CORETYPE=%s, best of %d\n", H, W, nth,
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "(unset)", reps);
    printf("peaks: fp32 FMA %.1f GFLOP/s, bf16 dot %.1f GFLOP/s; kern_gemm on the encoder's "
           "shapes: fp32 %.1f, bf16 %.1f GFLOP/s\n", p32, p16, g32, g16);
    printf("linear-layer GFLOP per page: %.1f\n", fl * 1e-9);
    double load = 0;
    getloadavg(&load, 1);
    printf("load average at the end %.2f; CPU seconds of the best runs: fp32 %.2f, bf16 %.2f\n",
           load, c32, c16);
    printf("fp32: %.2f s  (GEMM bound %.2f s: %.0f%% of bound; %.0f%% of FMA peak)\n", t32,
           fl / g32 * 1e-9, 100 * fl / g32 * 1e-9 / t32, 100 * fl / t32 * 1e-9 / p32);
    printf("bf16: %.2f s  (GEMM bound %.2f s: %.0f%% of bound; %.0f%% of bf16 peak); "
           "%.2fx fp32\n", t16, fl / g16 * 1e-9, 100 * fl / g16 * 1e-9 / t16,
           100 * fl / t16 * 1e-9 / p16, t32 / t16);
    printf("bf16 vs fp32 output: max|diff| %.3e (max|value| %.2f)\n", md, amax);
    free(pix);
    free(o32);
    free(o16);
    donut_free(&m);
    return 0;
}
