/* plot.c - shared by the coordinator's figures (plot.h). */
#include "coordinator/plot.h"

#include <stdio.h>
#include <string.h>

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
