/* plot.h - what the PNG figures of the coordinator share (distill_plot.c,
 * analyze_plot.c): libvips errors as DmErr, and a PNG written whole or not
 * at all. */
#ifndef DM_PLOT_H
#define DM_PLOT_H

#include <vips/vips.h>

#include "common/dm_error.h"

/* err = "WHAT: libvips: <its error buffer>" (the buffer is cleared); -1. */
int plot_vips_fail(DmErr *err, const char *what);

/* Save img as png through PNG.tmp.png and a rename, so that png is either
 * the whole new figure or what was there before.  rc: the caller's status
 * so far; nothing is written unless it is 0.  Returns the new status. */
int plot_save_png(VipsImage *img, const char *png, int rc, DmErr *err);

/* Text s (Pango markup characters escaped) in font at (x, y): centred
 * (align 0), ending at x (align 1) or starting at x (align -1), vertically
 * centred on y; png names the figure in messages. */
int plot_text(VipsImage *img, const char *s, int x, int y, int align, const double *ink,
              const char *font, const char *png, DmErr *err);

/* Width in pixels of s in font (0 when it cannot be drawn). */
int plot_text_width(const char *s, const char *font);

/* A white RGB canvas of w x h pixels that owns its pixels (drawn on in
 * place, freed with g_object_unref); NULL with err naming png. */
VipsImage *plot_canvas(int w, int h, const char *png, DmErr *err);

/* A tick spacing of 1, 2 or 5 times a power of ten giving about n ticks
 * over span. */
double plot_nice_step(double span, int n);

/* One series y against x (n points, x increasing) as a 960x540 PNG: a
 * line through dots, each dot labelled with its value when label_fmt is
 * not NULL (e.g. "%.3f"), axes with ticks, a title and the axis names.
 * y is drawn over [ymin, ymax]. */
int plot_series_png(const char *png, const char *title, const char *xname, const char *yname,
                    const long *x, const double *y, int n, double ymin, double ymax,
                    const char *label_fmt, DmErr *err);

#endif
