/* cmd_ask.c - `docmint ask`: answer questions about one or more pages.
 *
 * The model loads once; the pages are then loaded, preprocessed and encoded
 * one after another, and each page's questions are decoded together
 * (qa_answer_page).  Two forms:
 *
 *   docmint ask MODEL IMAGE QUESTION...            one image (the old form)
 *   docmint ask MODEL IMAGE... -- QUESTION...      any number of images
 *
 * Everything after "--" is a question, even when it starts with "-".  In
 * the old form an argument after IMAGE that names an image (an existing
 * image file, or a word with an image extension) is refused: it is almost
 * certainly a second image given without the "--". */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "coordinator/cli/commands.h"
#include "worker/image/image.h"
#include "kernels/cpu/kern.h"
#include "worker/image/preprocess.h"
#include "worker/stages/qa.h"

static void s_usage(FILE *f)
{
    fprintf(f, "usage: docmint ask MODEL_DIR IMAGE QUESTION [QUESTION ...] [options]\n"
               "       docmint ask [options] MODEL_DIR IMAGE [IMAGE ...] -- QUESTION [QUESTION ...]\n"
               "  every question is asked of every page; the model loads once, the pages are\n"
               "  encoded one after another and a page's questions are decoded together.\n"
               "  Everything after -- is a question (a question may start with -); options go\n"
               "  before the --.  Prints one answer per line, in order; with several pages a\n"
               "  line \"== IMAGE, page N ==\" comes before each page's answers.\n"
               "  --json        one JSON object per line and question instead: image, page,\n"
               "                question, answer, mean_logprob, tokens and timing_ms (load,\n"
               "                preprocess, encoder, decoder; a page's figures are shared by its\n"
               "                questions); a page that fails gives objects with \"error\"\n"
               "  --page N|all  page of a multi-page TIFF or PDF, from 0, or every page of\n"
               "                every image (default 0)\n"
               "  --dpi D       PDF rendering resolution (default %d)\n"
               "  --max-pixels P  refuse a page of more than P pixels (a PDF page: at D dpi)\n"
               "                from its header, before decoding (default %lld)\n"
               "  --threads N   compute threads (default: the CPUs this process may use)\n"
               "  --precision P fp32 (default) or bf16: bfloat16 weights with float32\n"
               "                accumulation (half the weight memory, faster decoding)\n"
               "  --max-length N  generation limit in tokens, counting the prompt (default:\n"
               "                the model's max_position_embeddings)\n"
               "  --verbose     also print timings and token log-probabilities on stderr\n"
               "  exit status: 0 when every page was answered, 1 when a page or the model\n"
               "  failed (the other pages are still answered), 2 for a usage error\n",
            IMAGE_PDF_DPI_DEFAULT, (long long)IMAGE_MAX_PIXELS_DEFAULT);
}

static int s_posint(const char *flag, const char *s, int min, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < min || v > 1 << 20) {
        fprintf(stderr, "docmint ask: %s %s: expected an integer >= %d (see --help)\n", flag, s,
                min);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* A word (no spaces) ending in an extension of an image format libvips
 * reads, or an existing file libvips opens as an image. */
static int s_looks_like_image(const char *arg)
{
    static const char *const ext[] = {"png",  "jpg", "jpeg", "jpe", "tif", "tiff", "pdf",
                                      "gif",  "bmp", "webp", "jp2", "j2k", "ppm",  "pgm",
                                      "pbm",  "pnm", "heic", "heif", "avif", "jxl", "svg"};
    const char *dot = strrchr(arg, '.');
    if (dot && !strpbrk(arg, " \t\n"))
        for (size_t i = 0; i < sizeof ext / sizeof *ext; i++)
            if (!strcasecmp(dot + 1, ext[i]))
                return 1;
    struct stat st;
    if (stat(arg, &st) || !S_ISREG(st.st_mode))
        return 0;
    DmErr err = {{0}};
    int n;
    return image_count_pages(arg, &n, &err) == 0;
}

typedef struct AskPage {
    const char *image;
    int page;
} AskPage;

typedef struct AskTimes {
    double load, preprocess, encoder, decoder; /* seconds */
} AskTimes;

/* Milliseconds to the microsecond. */
static double s_ms(double seconds)
{
    return round(seconds * 1e6) / 1e3;
}

static json_t *s_timing(const AskTimes *t)
{
    return json_pack("{s:f, s:f, s:f, s:f}", "load", s_ms(t->load), "preprocess",
                     s_ms(t->preprocess), "encoder", s_ms(t->encoder), "decoder", s_ms(t->decoder));
}

/* One JSON line: the answer when a is given, else the error. */
static void s_print_json(const AskPage *p, const char *question, const QaAnswer *a,
                         const char *error, const AskTimes *t)
{
    json_t *o = json_object();
    json_object_set_new(o, "image", json_string(p->image));
    json_object_set_new(o, "page", json_integer(p->page));
    json_object_set_new(o, "question", json_string(question));
    if (a) {
        json_t *text = json_string(a->text);
        json_object_set_new(o, "answer", text ? text : json_string("\xEF\xBF\xBD"));
        json_object_set_new(o, "mean_logprob",
                            isfinite(a->mean_logprob) ? json_real(a->mean_logprob) : json_null());
        json_object_set_new(o, "tokens", json_integer(a->n_ids));
    } else {
        json_object_set_new(o, "error", json_string(error));
    }
    json_object_set_new(o, "timing_ms", s_timing(t));
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
    if (line)
        printf("%s\n", line);
    free(line);
    json_decref(o);
}

/* Load, preprocess and encode one page into *enc (allocated here) and
 * answer its questions.  Errors name the file (and the page when the file
 * has several). */
static int s_page(const QaModel *qa, const PreprocConfig *pc, const AskPage *p, int npages_file,
                  int dpi, int last, const char *const *questions, int nq, QaAnswer *answers,
                  AskTimes *t, DmErr *err)
{
    DmImage img = {0};
    float *pix = NULL, *enc = NULL;
    int rc = -1;
    double t0 = dm_now();
    if (image_load_page(p->image, p->page, dpi, &img, err))
        goto done;
    PreprocGeometry geo;
    if (preproc_geometry(pc, img.w, img.h, &geo, err))
        goto named;
    const SwinConfig *ec = &qa->model->cfg.enc;
    int oh, ow;
    swin_output_grid(ec, geo.out_h, geo.out_w, &oh, &ow);
    pix = malloc((size_t)3 * geo.out_h * geo.out_w * sizeof(float));
    enc = malloc((size_t)oh * ow * ec->hidden_size * sizeof(float));
    if (!pix || !enc) {
        dm_err(err, "out of memory");
        goto named;
    }
    if (preproc_run(pc, &img, pix, err))
        goto named;
    double t1 = dm_now();
    if (swin_encode(qa->model, pix, geo.out_h, geo.out_w, enc, NULL, err))
        goto named;
    /* the last page: the encoder's working memory would only add to the
     * decoder's peak (earlier pages keep it for the next one) */
    if (last)
        swin_free_workspace(qa->model);
    double t2 = dm_now();
    if (qa_answer_page(qa, enc, oh * ow, questions, nq, answers, err))
        goto named;
    t->preprocess = t1 - t0;
    t->encoder = t2 - t1;
    t->decoder = dm_now() - t2;
    rc = 0;
    goto done;
named:
    if (npages_file > 1)
        dm_err_prefix(err, "%s page %d", p->image, p->page);
    else
        dm_err_prefix(err, "%s", p->image);
done:
    free(pix);
    free(enc);
    image_free(&img);
    return rc;
}

int cmd_ask(int argc, char **argv)
{
    const char *dir = NULL;
    const char **pos = calloc((size_t)argc, sizeof *pos);
    const char **questions = calloc((size_t)argc, sizeof *questions);
    int npos = 0, nq = 0, page = 0, all_pages = 0, dpi = IMAGE_PDF_DPI_DEFAULT, threads = 0;
    int verbose = 0, json = 0, sep = 0;
    DmPrecision prec = DM_PREC_F32;
    int max_length = 0;
    if (!pos || !questions) {
        free(pos);
        free(questions);
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (sep) {
            questions[nq++] = argv[i];
        } else if (!strcmp(argv[i], "--")) {
            sep = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            free(pos);
            free(questions);
            return 0;
        } else if (!strcmp(argv[i], "--page") && i + 1 < argc) {
            all_pages = !strcmp(argv[++i], "all");
            if (!all_pages && s_posint("--page", argv[i], 0, &page))
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
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            fprintf(stderr, "docmint ask: unknown or incomplete option %s (see --help)\n", argv[i]);
            goto usage;
        } else {
            pos[npos++] = argv[i];
        }
    }
    const char **images;
    int nimages;
    if (sep) {
        if (npos < 2 || nq == 0) {
            fprintf(stderr, "docmint ask: needs MODEL_DIR, at least one IMAGE before -- and at "
                            "least one question after it (see --help)\n");
            goto usage;
        }
        dir = pos[0];
        images = pos + 1;
        nimages = npos - 1;
    } else {
        if (npos < 3) {
            fprintf(stderr,
                    "docmint ask: needs MODEL_DIR, IMAGE and at least one question (see --help)\n");
            goto usage;
        }
        dir = pos[0];
        images = pos + 1;
        nimages = 1;
        for (int i = 2; i < npos; i++) {
            if (s_looks_like_image(pos[i])) {
                fprintf(stderr,
                        "docmint ask: '%s' looks like an image, not a question; to ask about "
                        "several images put -- before the questions: docmint ask MODEL_DIR %s %s "
                        "-- QUESTION...\n",
                        pos[i], pos[1], pos[i]);
                goto usage;
            }
            questions[nq++] = pos[i];
        }
    }

    int npages = 0, cap = 0, rc = 1, opened = 0, failed = 0;
    AskPage *pages = NULL;
    int *file_pages = NULL;
    QaAnswer *answers = NULL;
    QaModel qa;
    PreprocConfig pc;
    DmErr err = {{0}};
    char path[4096];
    AskTimes times = {0};
    /* Every file is opened (its header only) before the model loads, so a
     * wrong path or page costs no loading time. */
    for (int i = 0; i < nimages; i++) {
        int n;
        if (image_count_pages(images[i], &n, &err))
            goto done;
        if (!all_pages && page >= n) {
            dm_err(&err, "%s: page %d out of range (the file has %d page%s)", images[i], page, n,
                   n == 1 ? "" : "s");
            goto done;
        }
        for (int p = all_pages ? 0 : page; p < (all_pages ? n : page + 1); p++) {
            if (npages == cap) {
                cap = cap ? 2 * cap : 16;
                pages = dm_xrealloc(pages, (size_t)cap * sizeof *pages);
                file_pages = dm_xrealloc(file_pages, (size_t)cap * sizeof *file_pages);
            }
            pages[npages] = (AskPage){images[i], p};
            file_pages[npages++] = n;
        }
    }
    kern_set_threads(threads ? threads : kern_cpu_count());

    double t0 = dm_now();
    answers = calloc((size_t)nq, sizeof *answers);
    if (!answers) {
        dm_err(&err, "out of memory");
        goto done;
    }
    if (qa_open_as(dir, prec, &qa, &err))
        goto done;
    opened = 1;
    if (max_length > qa.model->cfg.dec.max_pos) {
        dm_err(&err, "--max-length %d exceeds the model's %d positions (%s)", max_length,
               qa.model->cfg.dec.max_pos, dir);
        goto done;
    }
    if (max_length)
        qa.gen.max_length = max_length;
    /* Check every question before any page is loaded and encoded. */
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
    if (preproc_config_load(path, &pc, &err))
        goto done;
    times.load = dm_now() - t0;
    if (verbose && npages > 1)
        fprintf(stderr, "load %.3fs\n", times.load);
    for (int k = 0; k < npages; k++) {
        const AskPage *p = &pages[k];
        times.preprocess = times.encoder = times.decoder = 0;
        if (s_page(&qa, &pc, p, file_pages[k], dpi, k == npages - 1, questions, nq, answers,
                   &times, &err)) {
            failed++;
            fprintf(stderr, "docmint ask: %s\n", err.msg);
            if (json)
                for (int i = 0; i < nq; i++)
                    s_print_json(p, questions[i], NULL, err.msg, &times);
            fflush(stdout);
            continue;
        }
        if (json) {
            for (int i = 0; i < nq; i++)
                s_print_json(p, questions[i], &answers[i], NULL, &times);
        } else {
            if (npages > 1)
                printf("== %s, page %d ==\n", p->image, p->page);
            for (int i = 0; i < nq; i++)
                printf("%s\n", answers[i].text);
        }
        fflush(stdout);
        if (verbose) {
            if (npages == 1) /* one line with the load, as tests/bench.sh reads it */
                fprintf(stderr, "load %.3fs  preprocess %.3fs  encoder %.3fs  decoder %.3fs\n",
                        times.load, times.preprocess, times.encoder, times.decoder);
            else
                fprintf(stderr, "%s page %d: preprocess %.3fs  encoder %.3fs  decoder %.3fs\n",
                        p->image, p->page, times.preprocess, times.encoder, times.decoder);
            for (int i = 0; i < nq; i++)
                fprintf(stderr, "q%d: %d tokens, mean log-prob %.4f\n", i + 1, answers[i].n_ids,
                        answers[i].mean_logprob);
        }
        for (int i = 0; i < nq; i++)
            qa_answer_free(&answers[i]);
    }
    rc = failed ? 1 : 0;
    err.msg[0] = '\0';
done:
    if (rc && err.msg[0])
        fprintf(stderr, "docmint ask: %s\n", err.msg);
    free(answers);
    free(pages);
    free(file_pages);
    if (opened)
        qa_close(&qa);
    free(pos);
    free(questions);
    return rc;
usage:
    free(pos);
    free(questions);
    return 2;
}
