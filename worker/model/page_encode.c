/* page_encode.c - image -> pixel values -> encoder output (page_encode.h). */
#include "worker/model/page_encode.h"

#include <stdlib.h>

#include "worker/image/image.h"

int page_encode(const DonutModel *m, const PreprocConfig *pc, const char *image_path, int page_no,
                int pdf_dpi, float **enc, int *n_enc, DmErr *err)
{
    DmImage img = {0};
    float *pix = NULL;
    int rc = -1;
    *enc = NULL;
    if (image_load_page(image_path, page_no, pdf_dpi, &img, err))
        goto done;
    PreprocGeometry geo;
    if (preproc_geometry(pc, img.w, img.h, &geo, err)) {
        dm_err_prefix(err, "%s", image_path);
        goto done;
    }
    const SwinConfig *ec = &m->cfg.enc;
    int oh, ow;
    swin_output_grid(ec, geo.out_h, geo.out_w, &oh, &ow);
    pix = malloc((size_t)3 * geo.out_h * geo.out_w * sizeof(float));
    *enc = malloc((size_t)oh * ow * ec->hidden_size * sizeof(float));
    if (!pix || !*enc) {
        dm_err(err, "out of memory encoding %s", image_path);
        goto done;
    }
    if (preproc_run(pc, &img, pix, err)) {
        dm_err_prefix(err, "%s", image_path);
        goto done;
    }
    if (swin_encode(m, pix, geo.out_h, geo.out_w, *enc, NULL, err))
        goto done;
    *n_enc = oh * ow;
    rc = 0;
done:
    if (rc) {
        free(*enc);
        *enc = NULL;
    }
    free(pix);
    image_free(&img);
    return rc;
}

int page_pixels(const PreprocConfig *pc, const char *image_path, int page_no, int pdf_dpi,
                float **pix, int *H, int *W, DmErr *err)
{
    DmImage img = {0};
    PreprocGeometry geo;
    *pix = NULL;
    int rc = -1;
    if (image_load_page(image_path, page_no, pdf_dpi, &img, err))
        goto done;
    if (preproc_geometry(pc, img.w, img.h, &geo, err)) {
        dm_err_prefix(err, "%s", image_path);
        goto done;
    }
    *pix = malloc((size_t)3 * geo.out_h * geo.out_w * sizeof(float));
    if (!*pix) {
        dm_err(err, "out of memory reading %s", image_path);
        goto done;
    }
    if (preproc_run(pc, &img, *pix, err)) {
        dm_err_prefix(err, "%s", image_path);
        goto done;
    }
    *H = geo.out_h;
    *W = geo.out_w;
    rc = 0;
done:
    if (rc) {
        free(*pix);
        *pix = NULL;
    }
    image_free(&img);
    return rc;
}
