/* compare_plot.c - pareto.png of `docmint compare`: ANLS on the
 * evaluation part against the share of the teacher's decoder-layer FLOPs
 * (docmint's convention), one labelled marker per complete row, the
 * Pareto front joined by a line (compare.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vips/vips.h>

#include "coordinator/compare.h"
#include "coordinator/plot.h"
#include "worker/image/image.h" /* image_vips_init */

#define W 960
#define H 640
#define LEFT 80
#define RIGHT 40
#define TOP 50
#define BOTTOM 60

void compare_pareto(const double *x, const double *y, int n, int *front)
{
    for (int i = 0; i < n; i++) {
        front[i] = isfinite(x[i]) && isfinite(y[i]);
        for (int j = 0; front[i] && j < n; j++)
            if (j != i && isfinite(x[j]) && isfinite(y[j]) && x[j] <= x[i] && y[j] >= y[i] &&
                (x[j] < x[i] || y[j] > y[i]))
                front[i] = 0;
    }
}

static int s_text(VipsImage *img, const char *s, int x, int y, int align, const double *ink,
                  DmErr *err)
{
    VipsImage *t = NULL;
    if (vips_text(&t, s, "font", "DejaVu Sans 11", "dpi", 96, NULL))
        return plot_vips_fail(err, "pareto.png: text");
    int w = vips_image_get_width(t), h = vips_image_get_height(t);
    int x0 = align < 0 ? x - w : align == 0 ? x - w / 2 : x;
    int rc = vips_draw_mask(img, (double *)ink, 3, t, x0, y - h / 2, NULL);
    g_object_unref(t);
    return rc ? plot_vips_fail(err, "pareto.png: text") : 0;
}

static const double *s_ink(int k)
{
    static const double ink[][3] = {{0, 0, 0},       {225, 225, 225}, {214, 39, 40},
                                    {31, 119, 180}, {44, 160, 44},   {148, 103, 189}};
    return ink[k];
}

typedef struct Pt {
    double x, y;
    const char *label;
    int teacher, masked;
} Pt;

typedef struct Box {
    int x, y, w, h;
} Box;

static int s_overlap(const Box *a, const Box *b)
{
    return a->x < b->x + b->w && b->x < a->x + a->w && a->y < b->y + b->h && b->y < a->y + a->h;
}

static int s_by_x(const void *a, const void *b)
{
    const Pt *p = a, *q = b;
    return p->x < q->x ? -1 : p->x > q->x;
}

int compare_plot(const json_t *rows, const char *png, DmErr *err)
{
    if (image_vips_init(err))
        return -1;
    size_t n = json_array_size(rows);
    Pt *pt = calloc(n ? n : 1, sizeof *pt);
    double *xs = calloc(n ? n : 1, sizeof *xs), *ys = calloc(n ? n : 1, sizeof *ys);
    int *front = calloc(n ? n : 1, sizeof *front);
    if (!pt || !xs || !ys || !front) {
        free(pt), free(xs), free(ys), free(front);
        return dm_err(err, "%s: out of memory", png);
    }
    int m = 0;
    double xmax = 1.0, ymax = 0.0;
    for (size_t i = 0; i < n; i++) {
        const json_t *r = json_array_get(rows, i);
        const json_t *fl = json_object_get(json_object_get(r, "flops"), "docmint");
        const json_t *x = json_object_get(fl, "layers_share"), *y = json_object_get(r, "anls");
        if (!json_is_number(x) || !json_is_number(y))
            continue;
        pt[m].x = json_number_value(x);
        pt[m].y = json_number_value(y);
        pt[m].label = json_string_value(json_object_get(r, "id"));
        pt[m].teacher = !strcmp(pt[m].label, "teacher");
        pt[m].masked = json_is_true(json_object_get(json_object_get(r, "params"), "masked"));
        if (pt[m].x > xmax)
            xmax = pt[m].x;
        if (pt[m].y > ymax)
            ymax = pt[m].y;
        m++;
    }
    qsort(pt, (size_t)m, sizeof *pt, s_by_x);
    for (int i = 0; i < m; i++) {
        xs[i] = pt[i].x;
        ys[i] = pt[i].y;
    }
    compare_pareto(xs, ys, m, front);
    xmax = ceil(xmax * 10.0 + 0.5) / 10.0;
    /* ANLS up to 1, or to the next tenth above the best when every score
     * is low, so that low scores stay apart */
    ymax = fmin(1.0, fmax(0.1, ceil(ymax * 10.0 + 0.5) / 10.0));
    VipsImage *img = plot_canvas(W, H, png, err);
    int rc = img ? 0 : -1;
    int pw = W - LEFT - RIGHT, ph = H - TOP - BOTTOM;
#define PX(v) (LEFT + (int)lround((v) / xmax * pw))
#define PY(v) (TOP + ph - (int)lround((v) / ymax * ph))
    char label[96];
    for (int k = 0; !rc && k <= 10; k++) {
        double v = ymax * k / 10.0;
        if (vips_draw_line(img, (double *)s_ink(1), 3, LEFT, PY(v), LEFT + pw, PY(v), NULL))
            rc = plot_vips_fail(err, png);
        snprintf(label, sizeof label, ymax < 1.0 ? "%.2f" : "%.1f", v);
        rc = rc ? rc : s_text(img, label, LEFT - 8, PY(v), -1, s_ink(0), err);
    }
    for (double v = 0; !rc && v <= xmax + 1e-9; v += 0.1) {
        if (vips_draw_line(img, (double *)s_ink(0), 3, PX(v), TOP + ph, PX(v), TOP + ph + 5, NULL))
            rc = plot_vips_fail(err, png);
        snprintf(label, sizeof label, "%.0f%%", v * 100);
        rc = rc ? rc : s_text(img, label, PX(v), TOP + ph + 16, 0, s_ink(0), err);
    }
    if (!rc && (vips_draw_line(img, (double *)s_ink(0), 3, LEFT, TOP, LEFT, TOP + ph, NULL) ||
                vips_draw_line(img, (double *)s_ink(0), 3, LEFT, TOP + ph, LEFT + pw, TOP + ph,
                               NULL)))
        rc = plot_vips_fail(err, png);
    /* the front, three pixels wide, under the markers */
    int prev = -1;
    for (int i = 0; !rc && i < m; i++) {
        if (!front[i])
            continue;
        if (prev >= 0)
            for (int d = -1; !rc && d <= 1; d++)
                if (vips_draw_line(img, (double *)s_ink(4), 3, PX(pt[prev].x), PY(pt[prev].y) + d,
                                   PX(pt[i].x), PY(pt[i].y) + d, NULL))
                    rc = plot_vips_fail(err, png);
        prev = i;
    }
    /* markers first, so that labels can be kept off all of them */
    Box *taken = calloc((size_t)(2 * m + 1), sizeof *taken);
    int nt = 0;
    if (!taken && !rc)
        rc = dm_err(err, "%s: out of memory", png);
    for (int i = 0; !rc && i < m; i++) {
        const double *ink = s_ink(pt[i].teacher ? 0 : pt[i].masked ? 5 : 3);
        int cx = PX(pt[i].x), cy = PY(pt[i].y);
        if (vips_draw_rect(img, (double *)ink, 3, cx - 5, cy - 5, 11, 11, "fill", TRUE, NULL) ||
            (front[i] && vips_draw_rect(img, (double *)s_ink(4), 3, cx - 8, cy - 8, 17, 17, NULL)))
            rc = plot_vips_fail(err, png);
        taken[nt++] = (Box){cx - 8, cy - 8, 17, 17};
    }
    /* each label at the first of eight places around its marker that
     * overlaps no marker, no label placed before it and no edge (the first
     * place when none is free) */
    for (int i = 0; !rc && i < m; i++) {
        const double *ink = s_ink(pt[i].teacher ? 0 : pt[i].masked ? 5 : 3);
        int cx = PX(pt[i].x), cy = PY(pt[i].y);
        VipsImage *t = NULL;
        if (vips_text(&t, pt[i].label, "font", "DejaVu Sans 11", "dpi", 96, NULL)) {
            rc = plot_vips_fail(err, "pareto.png: text");
            break;
        }
        int w = vips_image_get_width(t), h = vips_image_get_height(t);
        static const int dx[8] = {10, 10, 10, -10, -10, -10, 0, 0}, dy[8] = {-14, 14, 0, -14, 14, 0, -22, 22};
        Box best = {0};
        for (int k = 0; k < 8; k++) {
            int x0 = dx[k] > 0 ? cx + dx[k] : dx[k] < 0 ? cx + dx[k] - w : cx - w / 2;
            Box b = {x0, cy + dy[k] - h / 2, w, h};
            int free_ = b.x >= LEFT + 2 && b.x + b.w <= W - 2 && b.y >= TOP && b.y + b.h <= TOP + ph;
            for (int j = 0; free_ && j < nt; j++)
                free_ = !s_overlap(&b, &taken[j]);
            if (k == 0 || free_)
                best = b;
            if (free_)
                break;
        }
        if (vips_draw_mask(img, (double *)ink, 3, t, best.x, best.y, NULL))
            rc = plot_vips_fail(err, "pareto.png: text");
        g_object_unref(t);
        taken[nt++] = best;
    }
    free(taken);
    rc = rc ? rc
            : s_text(img, "ANLS on the evaluation part against decoder-layer FLOPs (share of the "
                          "teacher's, docmint's convention)",
                     LEFT, TOP / 2, 1, s_ink(0), err);
    rc = rc ? rc
            : s_text(img, "green: Pareto front   blue: structured   purple: masked (dense FLOPs)   "
                          "black: teacher",
                     LEFT, H - 14, 1, s_ink(0), err);
    rc = rc ? rc : s_text(img, "ANLS", 12, TOP - 20, 1, s_ink(0), err);
#undef PX
#undef PY
    if (img) {
        rc = plot_save_png(img, png, rc, err);
        g_object_unref(img);
    }
    free(pt);
    free(xs);
    free(ys);
    free(front);
    return rc;
}
