/* cmd_preprocess.c - `docmint preprocess MODEL_DIR IMAGE [--page N] [--dpi D]
 * -o OUT.safetensors`: one page through the Donut image processor, written
 * as pixel_values f32 [1, 3, H, W] (what the model's encoder takes). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "common/dm_error.h"
#include "worker/image/image.h"
#include "worker/image/preprocess.h"
#include "common/tensorfile.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint preprocess MODEL_DIR IMAGE [--page N] [--dpi D] [--max-pixels P]\n"
            "                          -o OUT.safetensors\n"
            "\n"
            "Run the Donut image processor (MODEL_DIR/preprocessor_config.json) on one page\n"
            "of IMAGE (PNG, JPEG, TIFF, PDF, or anything libvips reads) and write\n"
            "pixel_values, float32 [1, 3, H, W].\n"
            "\n"
            "  -o, --out FILE   output safetensors file (required)\n"
            "  --page N         page to use, counting from 0 (default 0); multi-page TIFF\n"
            "                   and PDF files have several\n"
            "  --dpi D          PDF rendering resolution in dots per inch (default %d);\n"
            "                   ignored for other formats\n"
            "  --max-pixels P   refuse a page of more than P pixels (a PDF page: at D dpi)\n"
            "                   from its header, before decoding (default %lld, at most %lld)\n"
            "  --trace          also write the uint8 intermediates resized_u8 and\n"
            "                   thumbnail_u8 (HWC), as the reference data names them\n"
            "  -h, --help       show this help\n",
            IMAGE_PDF_DPI_DEFAULT, (long long)IMAGE_MAX_PIXELS_DEFAULT, (long long)IMAGE_MAX_PIXELS_CAP);
}

/* A whole-string non-negative int, or -1. */
static int s_parse_nonneg(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > INT_MAX)
        return -1;
    return (int)v;
}

static void s_add_u8_image(StWriter *w, const char *name, const DmImage *img)
{
    int64_t shape[3] = {img->h, img->w, 3};
    st_writer_add(w, name, DM_U8, 3, shape, img->rgb);
}

int cmd_preprocess(int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL};
    const char *out = NULL;
    int npos = 0, page = 0, dpi = IMAGE_PDF_DPI_DEFAULT, trace = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out") || !strcmp(a, "--page") ||
                   !strcmp(a, "--dpi") || !strcmp(a, "--max-pixels")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "docmint preprocess: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (a[1] == 'o' || !strcmp(a, "--out")) {
                out = v;
            } else if (!strcmp(a, "--max-pixels")) {
                char *end;
                errno = 0;
                long long mp = strtoll(v, &end, 10);
                if (errno || end == v || *end || mp < 1 || mp > IMAGE_MAX_PIXELS_CAP) {
                    fprintf(stderr, "docmint preprocess: --max-pixels: '%s' is not a number from 1 to "
                                    "%lld\n", v, (long long)IMAGE_MAX_PIXELS_CAP);
                    return 2;
                }
                image_set_max_pixels(mp);
            } else if (!strcmp(a, "--page")) {
                if ((page = s_parse_nonneg(v)) < 0) {
                    fprintf(stderr,
                            "docmint preprocess: --page: '%s' is not a page number (0, 1, ...)\n",
                            v);
                    return 2;
                }
            } else {
                if ((dpi = s_parse_nonneg(v)) < 1) {
                    fprintf(stderr, "docmint preprocess: --dpi: '%s' is not a positive integer\n",
                            v);
                    return 2;
                }
            }
        } else if (!strcmp(a, "--trace")) {
            trace = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "docmint preprocess: unknown option '%s' (see --help)\n", a);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "docmint preprocess: unexpected argument '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (npos != 2 || !out) {
        fprintf(stderr, "docmint preprocess: need MODEL_DIR, IMAGE and -o OUT (see --help)\n");
        return 2;
    }

    DmErr err = {{0}};
    char cfg_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/preprocessor_config.json", pos[0]);
    PreprocConfig cfg;
    DmImage img = {0, 0, NULL};
    PreprocTrace tr;
    PreprocGeometry g;
    float *pv = NULL;
    int rc = 1;
    memset(&tr, 0, sizeof tr);
    if (preproc_config_load(cfg_path, &cfg, &err) ||
        image_load_page(pos[1], page, dpi, &img, &err))
        goto fail;
    if (preproc_geometry(&cfg, img.w, img.h, &g, &err)) {
        dm_err_prefix(&err, "%s", pos[1]);
        goto fail;
    }
    pv = malloc((size_t)3 * g.out_h * g.out_w * sizeof *pv);
    if (!pv) {
        dm_err(&err, "out of memory for %dx%d pixel_values", g.out_w, g.out_h);
        goto fail;
    }
    if (preproc_run_trace(&cfg, &img, pv, trace ? &tr : NULL, &err)) {
        dm_err_prefix(&err, "%s", pos[1]);
        goto fail;
    }
    StWriter *w = st_writer_new();
    int64_t shape[4] = {1, 3, g.out_h, g.out_w};
    st_writer_add_f32(w, "pixel_values", 4, shape, pv);
    char num[32];
    st_writer_meta(w, "image", pos[1]);
    snprintf(num, sizeof num, "%d", page);
    st_writer_meta(w, "page", num);
    snprintf(num, sizeof num, "%d", dpi);
    st_writer_meta(w, "pdf_dpi", num);
    if (trace) {
        s_add_u8_image(w, "resized_u8", &tr.resized);
        s_add_u8_image(w, "thumbnail_u8", &tr.thumbnail);
    }
    int src = st_writer_save(w, out, &err);
    st_writer_free(&w);
    if (src)
        goto fail;
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "docmint preprocess: %s\n", err.msg);
done:
    free(pv);
    image_free(&img);
    preproc_trace_free(&tr);
    return rc;
}
