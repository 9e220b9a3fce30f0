/* analyze_plot.c - heat maps of the analyses (analyze_plot.h). */
#include "coordinator/analyze_plot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vips/vips.h>

#include "coordinator/plot.h"
#include "worker/image/image.h" /* image_vips_init */
#include "worker/text/tokenizer.h"

#define CELL_W 92
#define CELL_H 40
#define LEFT 110
#define RIGHT 24
#define TOP 78
#define BOTTOM 48
#define MARGIN 14

/* The colour of value v: diverging blue - white - red over [-s, s], or
 * white to dark blue over [lo, hi]. */
static void s_colour(const HeatMap *h, double v, double lo, double hi, double rgb[3])
{
    static const double white[3] = {255, 255, 255}, red[3] = {178, 24, 43},
                        blue[3] = {33, 102, 172}, navy[3] = {8, 48, 107};
    const double *to;
    double f;
    if (h->diverging) {
        double s = fmax(fabs(lo), fabs(hi));
        f = s > 0 ? fabs(v) / s : 0;
        to = v >= 0 ? red : blue;
    } else {
        f = hi > lo ? (v - lo) / (hi - lo) : 0;
        to = navy;
    }
    f = f < 0 ? 0 : f > 1 ? 1 : f;
    for (int k = 0; k < 3; k++)
        rgb[k] = white[k] + f * (to[k] - white[k]);
}

int analyze_heatmap(const HeatMap *h, const char *png, DmErr *err)
{
    if (image_vips_init(err))
        return -1;
    const char *font = "DejaVu Sans 10", *bold = "DejaVu Sans Bold 12";
    /* cells wide enough for the longest label or cell text */
    int CW = CELL_W;
    for (int c = 0; c < h->cols; c++) {
        int w = plot_text_width(h->col_labels[c], font) + 12;
        CW = w > CW ? w : CW;
    }
    for (int i = 0; h->cell_text && i < h->rows * h->cols; i++) {
        int w = plot_text_width(h->cell_text[i], font) + 12;
        CW = w > CW ? w : CW;
    }
    int W = LEFT + h->cols * CW + RIGHT, H = TOP + h->rows * CELL_H + BOTTOM;
    int wt = 2 * MARGIN + plot_text_width(h->title, bold),
        wl = 2 * MARGIN + plot_text_width(h->legend, font);
    W = W > wt ? W : wt;
    W = W > wl ? W : wl;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < h->rows * h->cols; i++)
        if (isfinite(h->values[i])) {
            lo = fmin(lo, h->values[i]);
            hi = fmax(hi, h->values[i]);
        }
    VipsImage *img = plot_canvas(W, H, png, err);
    if (!img)
        return -1;
    static const double black[3] = {0, 0, 0}, white[3] = {255, 255, 255},
                        grey[3] = {215, 215, 215}, edge[3] = {160, 160, 160};
    int rc = plot_text(img, h->title, MARGIN, 22, -1, black, bold, png, err);
    for (int c = 0; !rc && c < h->cols; c++)
        rc = plot_text(img, h->col_labels[c], LEFT + c * CW + CW / 2, TOP - 14, 0, black,
                    font, png, err);
    for (int r = 0; !rc && r < h->rows; r++) {
        int y = TOP + r * CELL_H;
        rc = plot_text(img, h->row_labels[r], LEFT - 10, y + CELL_H / 2, 1, black, font, png, err);
        for (int c = 0; !rc && c < h->cols; c++) {
            int x = LEFT + c * CW;
            double v = h->values[r * h->cols + c], rgb[3];
            int empty = !isfinite(v);
            if (empty)
                memcpy(rgb, grey, sizeof rgb);
            else
                s_colour(h, v, lo, hi, rgb);
            if (vips_draw_rect(img, rgb, 3, x, y, CW, CELL_H, "fill", TRUE, NULL) ||
                vips_draw_rect(img, (double *)edge, 3, x, y, CW + 1, CELL_H + 1, NULL)) {
                rc = plot_vips_fail(err, png);
                break;
            }
            char label[64];
            const char *txt = h->cell_text ? h->cell_text[r * h->cols + c] : label;
            if (!h->cell_text)
                snprintf(label, sizeof label, empty ? "-" : h->fmt, v);
            /* light text on dark cells */
            double lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
            rc = plot_text(img, txt ? txt : "", x + CW / 2, y + CELL_H / 2, 0,
                        lum < 128 ? white : black, font, png, err);
        }
    }
    if (!rc)
        rc = plot_text(img, h->legend, MARGIN, TOP + h->rows * CELL_H + BOTTOM / 2, -1, black, font,
                    png, err);
    rc = plot_save_png(img, png, rc, err);
    g_object_unref(img);
    return rc;
}

/* ------------------------------------------------------------ tensors */

int an_tensors_add(AnTensors *ts, const char *name, int ndim, const int64_t *shape,
                   const float *f, const int64_t *i)
{
    if (ts->n == ts->cap) {
        int cap = ts->cap ? 2 * ts->cap : 32;
        AnTensor *t = realloc(ts->t, (size_t)cap * sizeof *t);
        if (!t)
            return -1;
        ts->t = t;
        ts->cap = cap;
    }
    AnTensor *t = &ts->t[ts->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    size_t n = 1;
    for (int k = 0; k < ndim && k < 3; k++)
        n *= (size_t)(t->shape[k] = shape[k]);
    if (!(t->v = malloc(n * sizeof(double))))
        return -1;
    for (size_t k = 0; k < n; k++)
        t->v[k] = f ? (double)f[k] : (double)i[k];
    ts->n++;
    return 0;
}

const AnTensor *an_tensors_find(const AnTensors *ts, const char *name)
{
    for (int i = 0; i < ts->n; i++)
        if (!strcmp(ts->t[i].name, name))
            return &ts->t[i];
    return NULL;
}

void an_tensors_free(AnTensors *ts)
{
    for (int i = 0; i < ts->n; i++)
        free(ts->t[i].v);
    free(ts->t);
    memset(ts, 0, sizeof *ts);
}

/* ------------------------------------------------------------ figures */

/* Labels of a figure, freed together. */
typedef struct Labels {
    char (*s)[48];
    const char **p;
    int n;
} Labels;

static int s_labels(Labels *l, int n)
{
    l->s = calloc(n ? n : 1, sizeof *l->s);
    l->p = calloc(n ? n : 1, sizeof *l->p);
    l->n = n;
    for (int i = 0; l->p && l->s && i < n; i++)
        l->p[i] = l->s[i];
    return l->s && l->p ? 0 : -1;
}

static void s_labels_free(Labels *l)
{
    free(l->s);
    free(l->p);
}

/* The token's piece, or #id. */
static void s_piece(const struct Tokenizer *tok, int64_t id, char *out, size_t n)
{
    const char *p = tok ? tokenizer_id_to_piece(tok, (int32_t)id) : NULL;
    if (p)
        snprintf(out, n, "%.20s", p);
    else
        snprintf(out, n, "#%lld", (long long)id);
}

/* "%+.3f", or an exponent form when every value is small (an untrained
 * model's effects are): the cells must not all read +0.000. */
static const char *s_signed_fmt(const double *v, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i]) && fabs(v[i]) > m)
            m = fabs(v[i]);
    return m > 0 && m < 0.05 ? "%+.2e" : "%+.3f";
}

/* A [L, 3] figure of sub-layer NLLs minus a baseline (skip, reproject). */
static int s_sublayer_map(const AnTensor *t, double base, const char *title, const char *legend,
                          const char *png, DmErr *err)
{
    int L = (int)(t->shape[0] / 3);
    Labels rows = {0}, cols = {0};
    double *v = malloc((size_t)L * 3 * sizeof(double));
    int rc = -1;
    if (!v || s_labels(&rows, L) || s_labels(&cols, 3)) {
        dm_err(err, "%s: out of memory", png);
        goto done;
    }
    for (int l = 0; l < L; l++) {
        snprintf(rows.s[l], sizeof rows.s[l], "layer %d", l);
        for (int k = 0; k < 3; k++)
            v[l * 3 + k] = t->v[l * 3 + k] - base;
    }
    snprintf(cols.s[0], sizeof cols.s[0], "S (self)");
    snprintf(cols.s[1], sizeof cols.s[1], "C (cross)");
    snprintf(cols.s[2], sizeof cols.s[2], "M (FFN)");
    HeatMap h = {title, legend, L, 3, rows.p, cols.p, v, NULL, s_signed_fmt(v, L * 3), 1};
    rc = analyze_heatmap(&h, png, err);
done:
    free(v);
    s_labels_free(&rows);
    s_labels_free(&cols);
    return rc;
}

/* A figure over (attention sub-layer, head): [L, H] with rows of one kind
 * (kind 0 self, 1 cross) or [L, 2, H] with rows S0, C0, S1, ... (kind -1). */
static int s_head_map(const AnTensor *t, int kind, double base, const char *fmt, int diverging,
                      const char *title, const char *legend, const char *png, DmErr *err)
{
    int L = (int)t->shape[0], H = (int)t->shape[t->ndim - 1];
    int R = kind < 0 ? 2 * L : L;
    Labels rows = {0}, cols = {0};
    double *v = malloc((size_t)R * H * sizeof(double));
    int rc = -1;
    if (!v || s_labels(&rows, R) || s_labels(&cols, H)) {
        dm_err(err, "%s: out of memory", png);
        goto done;
    }
    for (int r = 0; r < R; r++) {
        int k = kind < 0 ? r % 2 : kind;
        snprintf(rows.s[r], sizeof rows.s[r], "%c%d", k ? 'C' : 'S', kind < 0 ? r / 2 : r);
        for (int h = 0; h < H; h++)
            v[r * H + h] = t->v[r * H + h] - base;
    }
    for (int h = 0; h < H; h++)
        snprintf(cols.s[h], sizeof cols.s[h], "head %d", h);
    HeatMap hm = {title, legend, R, H, rows.p, cols.p, v, NULL,
                  diverging ? s_signed_fmt(v, R * H) : fmt, diverging};
    rc = analyze_heatmap(&hm, png, err);
done:
    free(v);
    s_labels_free(&rows);
    s_labels_free(&cols);
    return rc;
}

/* The logit-lens grid: residual x scored position, the top token written
 * in each cell, coloured by the target's log-probability. */
static int s_lens_map(const AnTensors *ts, const int32_t *ids, int answer_start,
                      const struct Tokenizer *tok, const char *png, DmErr *err)
{
    const AnTensor *lp = an_tensors_find(ts, "lens.target_logprob");
    const AnTensor *top = an_tensors_find(ts, "lens.top1");
    if (!lp || !top)
        return 0;
    int R = (int)lp->shape[0], P = (int)lp->shape[1];
    Labels rows = {0}, cols = {0}, cells = {0};
    int rc = -1;
    if (s_labels(&rows, R) || s_labels(&cols, P) || s_labels(&cells, R * P)) {
        dm_err(err, "%s: out of memory", png);
        goto done;
    }
    static const char kinds[] = "SCM";
    for (int r = 0; r < R; r++) {
        if (r == 0)
            snprintf(rows.s[r], sizeof rows.s[r], "embed");
        else
            snprintf(rows.s[r], sizeof rows.s[r], "after %c%d", kinds[(r - 1) % 3], (r - 1) / 3);
        for (int t = 0; t < P; t++)
            s_piece(tok, (int64_t)top->v[r * P + t], cells.s[r * P + t], sizeof cells.s[0]);
    }
    for (int t = 0; t < P; t++) {
        char piece[32];
        s_piece(tok, ids[answer_start + t + 1], piece, sizeof piece);
        snprintf(cols.s[t], sizeof cols.s[t], "t=%d: %s", answer_start + t, piece);
    }
    HeatMap h = {"Logit lens: top token after each sub-layer (columns: position and its target)",
                 "colour: log-probability of the target under the lens (darker = more likely)",
                 R, P, rows.p, cols.p, lp->v, cells.p, NULL, 0};
    rc = analyze_heatmap(&h, png, err);
done:
    s_labels_free(&rows);
    s_labels_free(&cols);
    s_labels_free(&cells);
    return rc;
}

int analyze_figures(const AnTensors *ts, const int32_t *ids, int T, int answer_start,
                    const struct Tokenizer *tok, const char *dir, DmErr *err)
{
    char png[4200], title[200];
    const AnTensor *clean = an_tensors_find(ts, "nll.clean"), *t;
    double base = clean ? clean->v[0] : 0.0;
    (void)T;
#define PNG(name) (snprintf(png, sizeof png, "%s/%s", dir, name), png)
    if ((t = an_tensors_find(ts, "nll.skip"))) {
        snprintf(title, sizeof title, "Sub-layer skipping: NLL increase (clean NLL %.3f)", base);
        if (s_sublayer_map(t, base, title,
                           "cell: NLL with the sub-layer's output set to 0, minus the clean NLL "
                           "(red: worse without it)",
                           PNG("skip.png"), err))
            return -1;
    }
    if ((t = an_tensors_find(ts, "nll.reproject"))) {
        int n = (int)t->shape[0];
        snprintf(title, sizeof title,
                 "Token reprojection at each sub-layer's input: NLL increase (final residual %+.3f)",
                 t->v[n - 1] - base);
        if (s_sublayer_map(t, base, title,
                           "cell: NLL with the sub-layer's input replaced by its reprojection, "
                           "minus the clean NLL",
                           PNG("reproject.png"), err))
            return -1;
    }
    if ((t = an_tensors_find(ts, "heads.sa_entropy")) &&
        s_head_map(t, 0, 0.0, "%.3f", 0, "Self-attention head entropy (nats, scored positions)",
                   "darker: attention spread over more keys", PNG("sa_entropy.png"), err))
        return -1;
    if ((t = an_tensors_find(ts, "heads.ca_variance")) &&
        s_head_map(t, 1, 0.0, "%.2e", 0, "Cross-attention head variance over encoder tokens",
                   "darker: attention focused on fewer patches", PNG("ca_variance.png"), err))
        return -1;
    if ((t = an_tensors_find(ts, "nll.head_ablation")) &&
        s_head_map(t, -1, base, "%+.3f", 1, "Head ablation: NLL increase",
                   "cell: NLL with the head's output set to 0, minus the clean NLL",
                   PNG("head_ablation.png"), err))
        return -1;
    const AnTensor *cor = an_tensors_find(ts, "nll.corrupt");
    if (cor && (t = an_tensors_find(ts, "nll.patch_head")) &&
        s_head_map(t, -1, cor->v[0], "%+.3f", 1,
                   "Activation patching, clean head into the corrupted run: NLL change",
                   "cell: corrupted-run NLL with the head's clean output, minus the corrupted NLL",
                   PNG("patch_head.png"), err))
        return -1;
    if ((t = an_tensors_find(ts, "atp.head")) &&
        s_head_map(t, -1, 0.0, "%+.3f", 1, "Attribution patching: estimated NLL change",
                   "cell: (clean - corrupted head output) . gradient of the corrupted NLL",
                   PNG("atp_head.png"), err))
        return -1;
    return s_lens_map(ts, ids, answer_start, tok, PNG("lens.png"), err);
#undef PNG
}

/* ------------------------------------------------------------ overlay */

/* Patch indices ordered by entropy, then index (ties in order). */
static const double *s_sort_ent;
static int s_cmp_patch(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    double x = s_sort_ent[i], y = s_sort_ent[j];
    return x < y ? -1 : x > y ? 1 : i - j;
}

int analyze_transcribe_overlay(const float *pixels, int H, int W, int gh, int gw,
                               const int64_t *top1, const double *entropy,
                               const struct Tokenizer *tok, const char *png, DmErr *err)
{
    if (image_vips_init(err))
        return -1;
    int N = gh * gw, k = W < 800 ? (800 + W - 1) / W : 1; /* small pages drawn larger */
    int OW = W * k, OH = H * k, top = 40;
    int *order = malloc((size_t)N * sizeof *order);
    unsigned char *low = calloc((size_t)N, 1);
    unsigned char *buf = malloc((size_t)OW * (OH + top) * 3);
    if (!order || !low || !buf) {
        free(order);
        free(low);
        free(buf);
        return dm_err(err, "%s: out of memory", png);
    }
    /* the lowest quarter by rank, leaving out patches at the page's
     * largest entropy (an undecided patch is not a transcription) */
    double emax = -INFINITY, cut = -INFINITY;
    for (int j = 0; j < N; j++) {
        order[j] = j;
        emax = fmax(emax, entropy[j]);
    }
    s_sort_ent = entropy;
    qsort(order, N, sizeof *order, s_cmp_patch);
    for (int r = 0; r < (N + 3) / 4; r++)
        if (entropy[order[r]] < emax) {
            low[order[r]] = 1;
            cut = entropy[order[r]];
        }
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < (size_t)3 * H * W; i++) {
        lo = fminf(lo, pixels[i]);
        hi = fmaxf(hi, pixels[i]);
    }
    float span = hi > lo ? hi - lo : 1;
    memset(buf, 255, (size_t)OW * (OH + top) * 3);
    for (int y = 0; y < OH; y++)
        for (int x = 0; x < OW; x++) {
            int sy = y / k, sx = x / k, j = (sy * gh / H) * gw + sx * gw / W;
            for (int c = 0; c < 3; c++) {
                double v = (pixels[((size_t)c * H + sy) * W + sx] - lo) / span * 255.0;
                /* low-entropy patches tinted orange */
                static const double tint[3] = {255, 140, 0};
                if (low[j])
                    v = 0.45 * v + 0.55 * tint[c];
                buf[((size_t)(y + top) * OW + x) * 3 + c] = (unsigned char)lrint(v);
            }
        }
    VipsImage *img =
        vips_image_new_from_memory(buf, (size_t)OW * (OH + top) * 3, OW, OH + top, 3, VIPS_FORMAT_UCHAR);
    int rc = img ? 0 : plot_vips_fail(err, png);
    static const double black[3] = {0, 0, 0}, grid[3] = {120, 120, 120};
    char title[200];
    snprintf(title, sizeof title,
             "Transcription: patches of lowest entropy (<= %.3f nats) coloured, top token",
             cut);
    if (!rc)
        rc = plot_text(img, title, 8, top / 2, -1, black, "DejaVu Sans Bold 11", png, err);
    for (int j = 0; !rc && j < N; j++) {
        int gy = j / gw, gx = j % gw;
        int x0 = gx * W / gw * k, x1 = (gx + 1) * W / gw * k, y0 = gy * H / gh * k + top,
            y1 = (gy + 1) * H / gh * k + top;
        if (vips_draw_rect(img, (double *)grid, 3, x0, y0, x1 - x0 + 1, y1 - y0 + 1, NULL)) {
            rc = plot_vips_fail(err, png);
            break;
        }
        if (!low[j])
            continue;
        char piece[32];
        s_piece(tok, top1[j], piece, sizeof piece);
        rc = plot_text(img, piece, (x0 + x1) / 2, (y0 + y1) / 2, 0, black, "DejaVu Sans 8", png, err);
    }
    rc = plot_save_png(img, png, rc, err);
    if (img)
        g_object_unref(img);
    free(buf);
    free(order);
    free(low);
    return rc;
}
