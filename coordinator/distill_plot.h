/* distill_plot.h - the training curve of the distill stage as a PNG drawn
 * with libvips: loss, ce and alpha * kd against the step, with axes, a few
 * labelled ticks and a legend. */
#ifndef DM_DISTILL_PLOT_H
#define DM_DISTILL_PLOT_H

#include "common/dm_error.h"

typedef struct DistillCurve {
    long *step;
    double *loss, *ce, *kd;
    int n, cap;
} DistillCurve;

void distill_curve_add(DistillCurve *c, long step, double loss, double ce, double kd);
void distill_curve_free(DistillCurve *c);

/* Write png (via a temporary file and a rename).  alpha 0 is a teach run
 * (cross-entropy alone): the title says so and the alpha * kd series, 0
 * throughout, is left out; otherwise the title says distill. */
int distill_plot(const DistillCurve *c, double alpha, const char *png, DmErr *err);

#endif
