/* plot.c - shared by the coordinator's figures (plot.h). */
#include "coordinator/plot.h"

#include <stdio.h>

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
