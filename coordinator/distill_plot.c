/* distill_plot.c - losses.png of the distill stage (distill_plot.h). */
#include "coordinator/distill_plot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vips/vips.h>

#include "coordinator/plot.h"
#include "worker/image/image.h" /* image_vips_init */

#define W 960
#define H 540
#define LEFT 90
#define RIGHT 30
#define TOP 50
#define BOTTOM 60

void distill_curve_add(DistillCurve *c, long step, double loss, double ce, double kd)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 256;
        c->step = dm_xrealloc(c->step, (size_t)c->cap * sizeof *c->step);
        c->loss = dm_xrealloc(c->loss, (size_t)c->cap * sizeof *c->loss);
        c->ce = dm_xrealloc(c->ce, (size_t)c->cap * sizeof *c->ce);
        c->kd = dm_xrealloc(c->kd, (size_t)c->cap * sizeof *c->kd);
    }
    c->step[c->n] = step;
    c->loss[c->n] = loss;
    c->ce[c->n] = ce;
    c->kd[c->n] = kd;
    c->n++;
}

void distill_curve_free(DistillCurve *c)
{
    free(c->step);
    free(c->loss);
    free(c->ce);
    free(c->kd);
    memset(c, 0, sizeof *c);
}

static int s_text(VipsImage *img, const char *s, int x, int y, int right_align, const double *ink,
                  DmErr *err)
{
    return plot_text(img, s, x, y, right_align ? 1 : -1, ink, "DejaVu Sans 11", "losses.png: text", err);
}

int distill_plot(const DistillCurve *c, double alpha, const char *png, DmErr *err)
{
    if (image_vips_init(err))
        return -1;
    if (c->n == 0)
        return 0;
    double ymax = 0;
    for (int i = 0; i < c->n; i++) {
        double v[3] = {c->loss[i], c->ce[i], alpha * c->kd[i]};
        for (int k = 0; k < 3; k++)
            if (isfinite(v[k]) && v[k] > ymax)
                ymax = v[k];
    }
    if (ymax <= 0)
        ymax = 1;
    double ytick = plot_nice_step(ymax, 5);
    ymax = ceil(ymax / ytick) * ytick;
    long x0 = c->step[0], x1 = c->step[c->n - 1] > x0 ? c->step[c->n - 1] : x0 + 1;
    double xtick = plot_nice_step((double)(x1 - x0), 8);
    if (xtick < 1)
        xtick = 1;
    int pw = W - LEFT - RIGHT, ph = H - TOP - BOTTOM;
    VipsImage *img = plot_canvas(W, H, png, err);
    if (!img)
        return -1;
    static const double black[3] = {0, 0, 0}, grey[3] = {225, 225, 225};
    static const double colour[3][3] = {{20, 20, 20}, {31, 119, 180}, {214, 39, 40}};
    static const char *name[3] = {"loss", "ce", "alpha * kd"};
    int rc = 0;
    char label[64];
#define PX(s) (LEFT + (int)lround((double)((s) - x0) / (double)(x1 - x0) * pw))
#define PY(v) (TOP + ph - (int)lround((v) / ymax * ph))
    for (double y = 0; !rc && y <= ymax * 1.0000001; y += ytick) {
        rc |= vips_draw_line(img, (double *)grey, 3, LEFT, PY(y), LEFT + pw, PY(y), NULL);
        rc |= vips_draw_line(img, (double *)black, 3, LEFT - 5, PY(y), LEFT, PY(y), NULL);
        snprintf(label, sizeof label, "%g", y);
        rc = rc ? plot_vips_fail(err, png) : s_text(img, label, LEFT - 8, PY(y), 1, black, err);
    }
    for (double s = ceil(x0 / xtick) * xtick; !rc && s <= x1; s += xtick) {
        rc |= vips_draw_line(img, (double *)black, 3, PX(s), TOP + ph, PX(s), TOP + ph + 5, NULL);
        snprintf(label, sizeof label, "%ld", (long)s);
        rc = rc ? plot_vips_fail(err, png) : s_text(img, label, PX(s) - 4 * (int)strlen(label), TOP + ph + 16, 0, black, err);
    }
    if (!rc && (vips_draw_line(img, (double *)black, 3, LEFT, TOP, LEFT, TOP + ph, NULL) ||
                vips_draw_line(img, (double *)black, 3, LEFT, TOP + ph, LEFT + pw, TOP + ph, NULL)))
        rc = plot_vips_fail(err, png);
    /* ce first and five pixels wide, then alpha * kd, then the loss last
     * and one pixel wide: where loss and ce coincide (always when alpha is
     * 0) the loss runs along the middle of the ce band and both show. */
    int teach = alpha == 0;
    static const int order[3] = {1, 2, 0};
    int row = 0;
    for (int o = 0; !rc && o < 3; o++) {
        int k = order[o];
        if (k == 2 && teach)
            continue; /* alpha * kd is 0 throughout */
        const double *ser = k == 0 ? c->loss : k == 1 ? c->ce : c->kd;
        double mul = k == 2 ? alpha : 1;
        int width = k == 1 ? 5 : 1;
        for (int i = 1; !rc && i < c->n; i++) {
            double a = ser[i - 1] * mul, b = ser[i] * mul;
            if (!isfinite(a) || !isfinite(b))
                continue;
            for (int d = -(width / 2); !rc && d <= width / 2; d++)
                if (vips_draw_line(img, (double *)colour[k], 3, PX(c->step[i - 1]), PY(a) + d,
                                   PX(c->step[i]), PY(b) + d, NULL))
                    rc = plot_vips_fail(err, png);
        }
        int ly = TOP + 12 + 20 * row;
        if (!rc && vips_draw_rect(img, (double *)colour[k], 3, LEFT + pw - 170, ly - (width - 1) / 2,
                                  24, width, "fill", TRUE, NULL))
            rc = plot_vips_fail(err, png);
        const char *label_k = k == 0 && teach ? "loss (= ce: alpha is 0)" : name[k];
        rc = rc ? rc : s_text(img, label_k, LEFT + pw - 140, ly + 1, 0, colour[k], err);
        row++;
    }
#undef PX
#undef PY
    snprintf(label, sizeof label, "alpha = %.4g", alpha);
    rc = rc ? rc
            : s_text(img,
                     teach ? "teach (cross-entropy on the answers alone): training loss per step"
                           : "distill (cross-entropy + alpha * KD to the teacher): training loss "
                             "per step",
                     LEFT, TOP / 2, 0, black, err);
    rc = rc ? rc : s_text(img, label, LEFT + pw - 170, TOP + 13 + 20 * row, 0, black, err);
    rc = rc ? rc : s_text(img, "step", LEFT + pw / 2, H - 18, 0, black, err);
    rc = plot_save_png(img, png, rc, err);
    g_object_unref(img);
    return rc;
}
