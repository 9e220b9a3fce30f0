/* plot.c - shared by the coordinator's figures (plot.h). */
#include "coordinator/plot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/image/image.h" /* image_vips_init */

int plot_vips_fail(DmErr *err, const char *what)
{
    dm_err(err, "%s: libvips: %s", what, vips_error_buffer());
    vips_error_clear();
    return -1;
}

int plot_save_png(VipsImage *img, const char *png, int rc, DmErr *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.png", png);
    if (!rc && vips_pngsave(img, tmp, NULL))
        rc = plot_vips_fail(err, png);
    if (!rc && rename(tmp, png) != 0)
        rc = dm_err_errno(err, "%s: cannot rename", tmp);
    return rc;
}

/* vips_text reads Pango markup: tokens such as <s_answer> are escaped. */
static void s_escape(const char *s, char *esc, size_t cap)
{
    size_t n = 0;
    for (const char *p = s; *p && n + 6 < cap; p++) {
        const char *e = *p == '<' ? "&lt;" : *p == '>' ? "&gt;" : *p == '&' ? "&amp;" : NULL;
        if (e) {
            memcpy(esc + n, e, strlen(e));
            n += strlen(e);
        } else {
            esc[n++] = *p;
        }
    }
    esc[n] = 0;
}

int plot_text(VipsImage *img, const char *s, int x, int y, int align, const double *ink,
              const char *font, const char *png, DmErr *err)
{
    VipsImage *t = NULL;
    if (!s[0])
        return 0;
    char esc[512];
    s_escape(s, esc, sizeof esc);
    if (vips_text(&t, esc, "font", font, "dpi", 96, NULL))
        return plot_vips_fail(err, png);
    int w = vips_image_get_width(t), h = vips_image_get_height(t);
    int x0 = align == 0 ? x - w / 2 : align > 0 ? x - w : x;
    int rc = vips_draw_mask(img, (double *)ink, 3, t, x0, y - h / 2, NULL);
    g_object_unref(t);
    return rc ? plot_vips_fail(err, png) : 0;
}

int plot_text_width(const char *s, const char *font)
{
    VipsImage *t = NULL;
    char esc[512];
    if (s)
        s_escape(s, esc, sizeof esc);
    if (!s || !s[0] || vips_text(&t, esc, "font", font, "dpi", 96, NULL)) {
        vips_error_clear();
        return 0;
    }
    int w = vips_image_get_width(t);
    g_object_unref(t);
    return w;
}

VipsImage *plot_canvas(int w, int h, const char *png, DmErr *err)
{
    size_t bytes = (size_t)w * h * 3;
    unsigned char *buf = malloc(bytes);
    if (!buf) {
        dm_err(err, "%s: out of memory", png);
        return NULL;
    }
    memset(buf, 255, bytes);
    VipsImage *img = vips_image_new_from_memory_copy(buf, bytes, w, h, 3, VIPS_FORMAT_UCHAR);
    free(buf);
    if (!img)
        plot_vips_fail(err, png);
    return img;
}

double plot_nice_step(double span, int n)
{
    double raw = span / n, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

#define S_FONT "DejaVu Sans 11"

enum { SW = 960, SH = 540, SLEFT = 90, SRIGHT = 40, STOP = 50, SBOTTOM = 60 };

int plot_series_png(const char *png, const char *title, const char *xname, const char *yname,
                    const long *x, const double *y, int n, double ymin, double ymax,
                    const char *label_fmt, DmErr *err)
{
    if (image_vips_init(err))
        return -1;
    if (n <= 0)
        return 0;
    if (!(ymax > ymin))
        ymax = ymin + 1;
    long x0 = x[0] < 0 ? x[0] : 0, x1 = x[n - 1] > x0 ? x[n - 1] : x0 + 1;
    double xtick = fmax(1, plot_nice_step((double)(x1 - x0), 8)), ytick = plot_nice_step(ymax - ymin, 5);
    int pw = SW - SLEFT - SRIGHT, ph = SH - STOP - SBOTTOM;
    VipsImage *img = plot_canvas(SW, SH, png, err);
    if (!img)
        return -1;
    static const double black[3] = {0, 0, 0}, grey[3] = {225, 225, 225}, blue[3] = {31, 119, 180};
    char label[64];
    int rc = 0;
#define PX(v) (SLEFT + (int)lround((double)((v) - x0) / (double)(x1 - x0) * pw))
#define PY(v) (STOP + ph - (int)lround(((v) - ymin) / (ymax - ymin) * ph))
    for (double v = ymin; !rc && v <= ymax + 1e-9 * (ymax - ymin); v += ytick) {
        rc |= vips_draw_line(img, (double *)grey, 3, SLEFT, PY(v), SLEFT + pw, PY(v), NULL);
        rc |= vips_draw_line(img, (double *)black, 3, SLEFT - 5, PY(v), SLEFT, PY(v), NULL);
        snprintf(label, sizeof label, "%g", fabs(v) < 1e-12 ? 0 : v);
        rc = rc ? plot_vips_fail(err, png) : plot_text(img, label, SLEFT - 8, PY(v), 1, black, S_FONT, png, err);
    }
    for (double v = ceil(x0 / xtick) * xtick; !rc && v <= x1; v += xtick) {
        rc |= vips_draw_line(img, (double *)black, 3, PX(v), STOP + ph, PX(v), STOP + ph + 5, NULL);
        snprintf(label, sizeof label, "%ld", (long)v);
        rc = rc ? plot_vips_fail(err, png)
                : plot_text(img, label, PX(v), STOP + ph + 16, 0, black, S_FONT, png, err);
    }
    if (!rc && (vips_draw_line(img, (double *)black, 3, SLEFT, STOP, SLEFT, STOP + ph, NULL) ||
                vips_draw_line(img, (double *)black, 3, SLEFT, STOP + ph, SLEFT + pw, STOP + ph, NULL)))
        rc = plot_vips_fail(err, png);
    for (int i = 0; !rc && i < n; i++) {
        double v = fmin(ymax, fmax(ymin, y[i]));
        if (i > 0) {
            double u = fmin(ymax, fmax(ymin, y[i - 1]));
            for (int d = -1; !rc && d <= 1; d++)
                if (vips_draw_line(img, (double *)blue, 3, PX(x[i - 1]), PY(u) + d, PX(x[i]),
                                   PY(v) + d, NULL))
                    rc = plot_vips_fail(err, png);
        }
        if (!rc && vips_draw_circle(img, (double *)blue, 3, PX(x[i]), PY(v), 4, "fill", TRUE, NULL))
            rc = plot_vips_fail(err, png);
        if (!rc && label_fmt && (n <= 24 || i == n - 1)) {
            snprintf(label, sizeof label, label_fmt, y[i]);
            rc = plot_text(img, label, PX(x[i]), PY(v) - 14, 0, black, S_FONT, png, err);
        }
    }
#undef PX
#undef PY
    rc = rc ? rc : plot_text(img, title, SLEFT, STOP / 2, -1, black, S_FONT, png, err);
    rc = rc ? rc : plot_text(img, xname, SLEFT + pw / 2, SH - 18, 0, black, S_FONT, png, err);
    rc = rc ? rc : plot_text(img, yname, 8, STOP - 14, -1, black, S_FONT, png, err);
    rc = plot_save_png(img, png, rc, err);
    g_object_unref(img);
    return rc;
}
