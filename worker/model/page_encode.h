/* page_encode.h - one page image to the encoder output: load (image.h),
 * Donut processor (preprocess.h), Swin encoder.  Shared by the stages that
 * run the encoder once per page (infer, cache-logits) and by cache-check. */
#ifndef DM_PAGE_ENCODE_H
#define DM_PAGE_ENCODE_H

#include "worker/model/donut.h"
#include "worker/image/preprocess.h"

/* *enc (malloc'ed) receives [*n_enc, hidden] floats.  On failure err says
 * why, naming the image. */
int page_encode(const DonutModel *m, const PreprocConfig *pc, const char *image_path, int page_no,
                int pdf_dpi, float **enc, int *n_enc, DmErr *err);

/* The page's pixel values only: *pix (malloc'ed) [3, *H, *W], normalised
 * as the encoder takes them (training runs the encoder itself). */
int page_pixels(const PreprocConfig *pc, const char *image_path, int page_no, int pdf_dpi,
                float **pix, int *H, int *W, DmErr *err);

#endif
