/* test_distill.c - the distill stage's pieces that need no MPI: the
 * learning-rate schedules against transformers' formulas (written out
 * here), the epoch permutation, the distill block of job files, and the
 * loss plot read back with libvips.  The training loop itself is tested
 * under mpirun (tests/mpi/distill.sh, tests/mpi/distill_e2e.sh). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <vips/vips.h>

#include "coordinator/distill.h"
#include "coordinator/distill_plot.h"
#include "worker/image/image.h"
#include "coordinator/job.h"
#include "tutil.h"

#define S_MIN "\"model\": \"m\", \"output\": \"o\", \"corpus\": {\"path\": \"c.json\"}"

/* transformers.optimization: get_linear_schedule_with_warmup,
 * get_cosine_schedule_with_warmup (num_cycles 0.5), get_constant_schedule_with_warmup. */
static double s_hf(int kind, long step, long warm, long total)
{
    if (step < warm)
        return (double)step / (double)(warm > 1 ? warm : 1);
    if (kind == 2)
        return 1.0;
    double progress = (double)(step - warm) / (double)((total - warm) > 1 ? total - warm : 1);
    if (kind == 0)
        return fmax(0.0, (double)(total - step) / (double)((total - warm) > 1 ? total - warm : 1));
    return fmax(0.0, 0.5 * (1.0 + cos(M_PI * 2.0 * 0.5 * progress)));
}

static void t_schedule(void)
{
    DistillDecay kinds[3] = {DISTILL_DECAY_LINEAR, DISTILL_DECAY_COSINE, DISTILL_DECAY_CONSTANT};
    long warms[3] = {0, 1, 10};
    for (int k = 0; k < 3; k++)
        for (int w = 0; w < 3; w++) {
            DistillSpec d;
            memset(&d, 0, sizeof d);
            d.lr = 3e-4;
            d.decay = kinds[k];
            d.warmup_steps = warms[w];
            double worst = 0;
            for (long s = 0; s <= 110; s++)
                worst = fmax(worst, fabs(distill_lr(&d, s, 110) - 3e-4 * s_hf(k, s, warms[w], 110)));
            CU_ASSERT(worst < 1e-18);
        }
    /* a few values by hand: warm-up 10 of 110 */
    DistillSpec d = {0};
    d.lr = 1.0;
    d.warmup_steps = 10;
    d.decay = DISTILL_DECAY_LINEAR;
    CU_ASSERT_DOUBLE_EQUAL(distill_lr(&d, 0, 110), 0.0, 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(distill_lr(&d, 5, 110), 0.5, 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(distill_lr(&d, 60, 110), 0.5, 1e-15);
    d.decay = DISTILL_DECAY_COSINE;
    CU_ASSERT_DOUBLE_EQUAL(distill_lr(&d, 35, 110), 0.5 * (1 + cos(M_PI / 4)), 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(distill_lr(&d, 110, 110), 0.0, 1e-15);
}

static void t_permutation(void)
{
    enum { N = 37 };
    int a[N], b[N], c[N], seen[N];
    distill_permutation(5, 0, N, a);
    distill_permutation(5, 0, N, b);
    CU_ASSERT(memcmp(a, b, sizeof a) == 0); /* deterministic */
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < N; i++)
        if (a[i] >= 0 && a[i] < N)
            seen[a[i]]++;
    int perm = 1;
    for (int i = 0; i < N; i++)
        perm &= seen[i] == 1;
    CU_ASSERT(perm);
    distill_permutation(5, 1, N, b);
    distill_permutation(6, 0, N, c);
    CU_ASSERT(memcmp(a, b, sizeof a) != 0); /* another epoch */
    CU_ASSERT(memcmp(a, c, sizeof a) != 0); /* another seed */
    /* Every item lands in every slot about equally often: where item 0
     * goes over 4000 epochs, chi-square with 36 degrees of freedom (the
     * 0.999 quantile is 67.99). */
    int where[N];
    memset(where, 0, sizeof where);
    for (long e = 0; e < 4000; e++) {
        distill_permutation(9, e, N, c);
        for (int i = 0; i < N; i++)
            if (c[i] == 0)
                where[i]++;
    }
    double chi = 0, expect = 4000.0 / N;
    for (int i = 0; i < N; i++)
        chi += (where[i] - expect) * (where[i] - expect) / expect;
    CU_ASSERT(chi < 67.99);
}

/* Items grouped by page: checked against the definition, pages in the
 * order of their first item and each page's items in permutation order,
 * computed here by a quadratic scan. */
static void t_group_pages(void)
{
    enum { N = 41, P = 9 };
    int page_of[N], perm[N], grouped[N], want[N], work[N + 2 * P + 1];
    for (int i = 0; i < N; i++)
        page_of[i] = (i * 7 + i / 3) % P;
    page_of[N - 1] = P - 1;
    distill_permutation(3, 2, N, perm);
    memcpy(grouped, perm, sizeof perm);
    distill_group_pages(N, grouped, page_of, P, work);
    int k = 0, taken[N] = {0};
    for (int i = 0; i < N; i++) {
        if (taken[i])
            continue;
        for (int j = i; j < N; j++)
            if (!taken[j] && page_of[perm[j]] == page_of[perm[i]]) {
                want[k++] = perm[j];
                taken[j] = 1;
            }
    }
    CU_ASSERT_EQUAL(k, N);
    CU_ASSERT(memcmp(grouped, want, sizeof want) == 0);
    /* a page's items are contiguous: the page changes at most P - 1 times */
    int changes = 0;
    for (int i = 1; i < N; i++)
        changes += page_of[grouped[i]] != page_of[grouped[i - 1]];
    CU_ASSERT_EQUAL(changes, P - 1);
}

static void t_job(void)
{
    Job *j = NULL;
    DmErr err = {{0}};
    int rc = job_parse("{\"stage\": \"distill\", " S_MIN ", \"distill\": {\"logits\": \"L\"}}",
                       "job.json", &j, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    const DistillSpec *d = &j->distill;
    CU_ASSERT_STRING_EQUAL(d->logits, "L");
    CU_ASSERT(d->steps == 0 && d->epochs == 1 && d->batch_size == 8 && d->micro_batch == 0);
    CU_ASSERT_DOUBLE_EQUAL(d->lr, 5e-5, 0);
    CU_ASSERT(d->decay == DISTILL_DECAY_LINEAR && d->alpha_auto && d->alpha_batches == 2);
    CU_ASSERT_DOUBLE_EQUAL(d->beta1, 0.9, 0);
    CU_ASSERT_DOUBLE_EQUAL(d->beta2, 0.999, 0);
    CU_ASSERT_DOUBLE_EQUAL(d->eps, 1e-8, 0);
    CU_ASSERT_DOUBLE_EQUAL(d->clip_norm, 1.0, 0);
    CU_ASSERT_DOUBLE_EQUAL(d->weight_decay, 0.01, 0);
    CU_ASSERT_DOUBLE_EQUAL(d->temperature, 1.0, 0);
    CU_ASSERT(d->checkpoint_every == 100 && d->keep_checkpoints == 3 && d->hash_check_every == 50);
    CU_ASSERT(d->plot && d->feature_cache_mb == 2048);
    CU_ASSERT(d->train_all == 0);
    job_free(&j);
    /* no store: no teacher (cross-entropy on the gold answers); the whole model */
    rc = job_parse("{\"stage\": \"distill\", " S_MIN ", \"distill\": {\"train\": \"all\"}}",
                   "job.json", &j, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT(j->distill.logits == NULL && j->distill.train_all == 1);
    job_free(&j);
    rc = job_parse("{\"stage\": \"distill\", " S_MIN ", \"distill\": {\"logits\": \"L\", \"alpha\": 0.25, "
                   "\"decay\": \"cosine\", \"seed\": 9007199254740991, \"adam_betas\": [0.8, 0.99]}}",
                   "job.json", &j, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT(!j->distill.alpha_auto && j->distill.alpha == 0.25);
    CU_ASSERT(j->distill.decay == DISTILL_DECAY_COSINE);
    CU_ASSERT(j->distill.seed == 9007199254740991ull);
    CU_ASSERT_DOUBLE_EQUAL(j->distill.beta1, 0.8, 0);
    job_free(&j);
    struct {
        const char *text, *needle;
    } bad[] = {
        {"{\"stage\": \"distill\", " S_MIN "}", "distill: missing"},
        {"{" S_MIN ", \"distill\": {\"logits\": \"L\"}}", "distill: only for stage \"distill\""},
        {"{\"stage\": \"distill\", " S_MIN ", \"distill\": {\"train\": \"encoder\"}}",
         "distill.train: expected one of \"decoder\", \"all\""},
        {"{\"stage\": \"distill\", " S_MIN ", \"distill\": {\"logits\": \"L\", \"lr\": 0}}", "distill.lr"},
        {"{\"stage\": \"distill\", " S_MIN ", \"distill\": {\"logits\": \"L\", \"batch_size\": 4, "
         "\"micro_batch\": 8}}", "distill.micro_batch: 8 is more than batch_size 4"},
        {"{\"stage\": \"distill\", " S_MIN ", \"distill\": {\"logits\": \"L\", \"steps\": 5, "
         "\"warmup_steps\": 6}}", "distill.warmup_steps"},
        {"{\"stage\": \"distill\", " S_MIN ", \"distill\": {\"logits\": \"L\", \"adam_betas\": [0.9]}}",
         "distill.adam_betas"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rc = job_parse(bad[i].text, "job.json", &j, &err);
        CU_ASSERT_EQUAL(rc, -1);
        int found = rc && strstr(err.msg, bad[i].needle) != NULL;
        if (!found)
            printf("\n  expected \"%s\" in \"%s\"", bad[i].needle, err.msg);
        CU_ASSERT(found);
        job_free(&j);
    }
}

/* The plot: an RGB PNG of the fixed size whose pixels hold each series'
 * colour (the legend and the lines). */
static void t_plot(void)
{
    DistillCurve c = {0};
    for (long s = 1; s <= 50; s++)
        distill_curve_add(&c, s, 5.0 / s + 1, 4.0 / s + 0.5, 0.5 / s + 0.25);
    char dir[] = "/tmp/dm_plot_XXXXXX", png[64];
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    snprintf(png, sizeof png, "%s/losses.png", dir);
    DmErr err = {{0}};
    int rc = distill_plot(&c, 2.0, png, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    VipsImage *im = vips_image_new_from_file(png, "access", VIPS_ACCESS_RANDOM, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(im);
    CU_ASSERT(vips_image_get_width(im) == 960 && vips_image_get_height(im) == 540 &&
              vips_image_get_bands(im) == 3);
    size_t n = 0;
    unsigned char *px = vips_image_write_to_memory(im, &n);
    int blue = 0, red = 0;
    for (size_t i = 0; px && i + 2 < n; i += 3) {
        blue += px[i] == 31 && px[i + 1] == 119 && px[i + 2] == 180;
        red += px[i] == 214 && px[i + 1] == 39 && px[i + 2] == 40;
    }
    CU_ASSERT(blue > 100 && red > 100);
    g_free(px);
    g_object_unref(im);
    unlink(png);
    rmdir(dir);
    distill_curve_free(&c);
}

/* A teach run (alpha 0): loss and ce are the same numbers, and both lines
 * must still show inside the plot area (the legend, top right, left out). */
static void t_plot_teach(void)
{
    DistillCurve c = {0};
    for (long s = 1; s <= 80; s++) {
        double ce = 6.0 / (1 + 0.05 * s) + 0.3;
        distill_curve_add(&c, s, ce, ce, 1.0 / s);
    }
    char dir[] = "/tmp/dm_plot_XXXXXX", png[64];
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    snprintf(png, sizeof png, "%s/losses.png", dir);
    DmErr err = {{0}};
    int rc = distill_plot(&c, 0.0, png, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    VipsImage *im = vips_image_new_from_file(png, "access", VIPS_ACCESS_RANDOM, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(im);
    int w = vips_image_get_width(im);
    size_t n = 0;
    unsigned char *px = vips_image_write_to_memory(im, &n);
    int loss = 0, ce = 0, kd = 0;
    for (size_t i = 0; px && i + 2 < n; i += 3) {
        int x = (int)(i / 3 % (size_t)w), y = (int)(i / 3 / (size_t)w);
        if (x > 960 - 30 - 200 && y < 50 + 100)
            continue; /* the legend */
        loss += px[i] == 20 && px[i + 1] == 20 && px[i + 2] == 20;
        ce += px[i] == 31 && px[i + 1] == 119 && px[i + 2] == 180;
        kd += px[i] == 214 && px[i + 1] == 39 && px[i + 2] == 40;
    }
    if (loss <= 100 || ce <= 100 || kd != 0)
        printf("\n  loss %d, ce %d, alpha * kd %d pixels in the plot area", loss, ce, kd);
    CU_ASSERT(loss > 100 && ce > 100 && kd == 0);
    g_free(px);
    g_object_unref(im);
    unlink(png);
    rmdir(dir);
    distill_curve_free(&c);
}

void tests_distill(void)
{
    DmErr err;
    image_vips_init(&err);
    TU_SUITE("distill", {"lr schedules as transformers'", t_schedule},
             {"epoch permutation", t_permutation},
             {"items grouped by page", t_group_pages}, {"distill block of job files", t_job},
             {"loss plot", t_plot}, {"teach loss plot: loss and ce both visible", t_plot_teach});
}
