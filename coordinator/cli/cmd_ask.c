/* cmd_ask.c - `docmint ask`: answer questions about one page. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "worker/image/image.h"
#include "kernels/cpu/kern.h"
#include "worker/image/preprocess.h"
#include "worker/stages/qa.h"

static void s_usage(FILE *f)
{
    fprintf(f, "usage: docmint ask MODEL_DIR IMAGE QUESTION [QUESTION ...] [options]\n"
               "  prints one answer per question, in order\n"
               "  --page N      page of a multi-page TIFF or PDF, from 0 (default 0)\n"
               "  --dpi D       PDF rendering resolution (default %d)\n"
               "  --max-pixels P  refuse a page of more than P pixels (a PDF page: at D dpi)\n"
               "                from its header, before decoding (default %lld)\n"
               "  --threads N   compute threads (default: the CPUs this process may use)\n"
               "  --precision P fp32 (default) or bf16: bfloat16 weights with float32\n"
               "                accumulation (half the weight memory, faster decoding)\n"
               "  --max-length N  generation limit in tokens, counting the prompt (default:\n"
               "                the model's max_position_embeddings)\n"
               "  --verbose     also print timings and token log-probabilities on stderr\n",
            IMAGE_PDF_DPI_DEFAULT, (long long)IMAGE_MAX_PIXELS_DEFAULT);
}

static int s_posint(const char *flag, const char *s, int min, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < min || v > 1 << 20) {
        fprintf(stderr, "docmint ask: %s %s: expected an integer >= %d (see --help)\n", flag, s,
                min);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int cmd_ask(int argc, char **argv)
{
    const char *dir = NULL, *image = NULL;
    const char **questions = calloc((size_t)argc, sizeof *questions);
    int nq = 0, page = 0, dpi = IMAGE_PDF_DPI_DEFAULT, threads = 0, verbose = 0;
    DmPrecision prec = DM_PREC_F32;
    int max_length = 0;
    if (!questions)
        return 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            free(questions);
            return 0;
        } else if (!strcmp(argv[i], "--page") && i + 1 < argc) {
            if (s_posint("--page", argv[++i], 0, &page))
                goto usage;
        } else if (!strcmp(argv[i], "--dpi") && i + 1 < argc) {
            if (s_posint("--dpi", argv[++i], 1, &dpi))
                goto usage;
        } else if (!strcmp(argv[i], "--max-pixels") && i + 1 < argc) {
            char *end;
            long long mp = strtoll(argv[++i], &end, 10);
            if (*end || mp < 1 || mp > IMAGE_MAX_PIXELS_CAP) {
                fprintf(stderr, "docmint ask: --max-pixels %s: expected a number from 1 to %lld\n",
                        argv[i], (long long)IMAGE_MAX_PIXELS_CAP);
                goto usage;
            }
            image_set_max_pixels(mp);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            if (s_posint("--threads", argv[++i], 1, &threads))
                goto usage;
        } else if (!strcmp(argv[i], "--precision") && i + 1 < argc) {
            if (donut_precision_parse(argv[++i], &prec)) {
                fprintf(stderr, "docmint ask: --precision %s: expected fp32 or bf16\n", argv[i]);
                goto usage;
            }
        } else if (!strcmp(argv[i], "--max-length") && i + 1 < argc) {
            if (s_posint("--max-length", argv[++i], 2, &max_length))
                goto usage;
        } else if (!strcmp(argv[i], "--verbose")) {
            verbose = 1;
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            fprintf(stderr, "docmint ask: unknown or incomplete option %s (see --help)\n", argv[i]);
            goto usage;
        } else if (!dir) {
            dir = argv[i];
        } else if (!image) {
            image = argv[i];
        } else {
            questions[nq++] = argv[i];
        }
    }
    if (!dir || !image || nq == 0) {
        fprintf(stderr, "docmint ask: needs MODEL_DIR, IMAGE and at least one question (see --help)\n");
        goto usage;
    }
    kern_set_threads(threads ? threads : kern_cpu_count());

    DmErr err = {{0}};
    QaModel qa;
    DmImage img = {0};
    PreprocConfig pc;
    float *pix = NULL, *enc = NULL;
    QaAnswer *answers = calloc((size_t)nq, sizeof *answers);
    int rc = 1, opened = 0, answered = 0;
    char path[4096];
    double t0 = dm_now();
    if (!answers || qa_open_as(dir, prec, &qa, &err))
        goto done;
    opened = 1;
    if (max_length > qa.model->cfg.dec.max_pos) {
        dm_err(&err, "--max-length %d exceeds the model's %d positions (%s)", max_length,
               qa.model->cfg.dec.max_pos, dir);
        goto done;
    }
    if (max_length)
        qa.gen.max_length = max_length;
    /* Check every question before the page is loaded and encoded. */
    for (int i = 0; i < nq; i++) {
        int32_t *ids;
        int n;
        if (qa_prompt(&qa, questions[i], &ids, &n, &err)) {
            dm_err_prefix(&err, "question %d", i + 1);
            goto done;
        }
        free(ids);
    }
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    if (preproc_config_load(path, &pc, &err) || image_load_page(image, page, dpi, &img, &err))
        goto done;
    PreprocGeometry geo;
    if (preproc_geometry(&pc, img.w, img.h, &geo, &err))
        goto done;
    const SwinConfig *ec = &qa.model->cfg.enc;
    int oh, ow;
    swin_output_grid(ec, geo.out_h, geo.out_w, &oh, &ow);
    pix = malloc((size_t)3 * geo.out_h * geo.out_w * sizeof(float));
    enc = malloc((size_t)oh * ow * ec->hidden_size * sizeof(float));
    if (!pix || !enc) {
        dm_err(&err, "out of memory");
        goto done;
    }
    double t1 = dm_now();
    if (preproc_run(&pc, &img, pix, &err))
        goto done;
    double t2 = dm_now();
    if (swin_encode(qa.model, pix, geo.out_h, geo.out_w, enc, NULL, &err))
        goto done;
    /* one page: the encoder's working memory would only add to the
     * decoder's peak */
    swin_free_workspace(qa.model);
    double t3 = dm_now();
    if (qa_answer_page(&qa, enc, oh * ow, questions, nq, answers, &err))
        goto done;
    answered = 1;
    double t4 = dm_now();
    for (int i = 0; i < nq; i++)
        printf("%s\n", answers[i].text);
    if (verbose) {
        fprintf(stderr, "load %.3fs  preprocess %.3fs  encoder %.3fs  decoder %.3fs\n", t1 - t0,
                t2 - t1, t3 - t2, t4 - t3);
        for (int i = 0; i < nq; i++)
            fprintf(stderr, "q%d: %d tokens, mean log-prob %.4f\n", i + 1, answers[i].n_ids,
                    answers[i].mean_logprob);
    }
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "docmint ask: %s\n", err.msg);
    if (answered)
        for (int i = 0; i < nq; i++)
            qa_answer_free(&answers[i]);
    free(answers);
    free(pix);
    free(enc);
    image_free(&img);
    if (opened)
        qa_close(&qa);
    free(questions);
    return rc;
usage:
    free(questions);
    return 2;
}
