/* image.h - page images: load one page of a PNG, JPEG, TIFF or PDF file
 * (anything libvips can open) as 8-bit RGB.
 *
 * The goal is the array that `numpy.asarray(PIL.Image.open(f).convert("RGB"))`
 * gives, because that is what the Hugging Face Donut processor sees:
 *
 *   - 8-bit RGB / RGBA: the RGB bands; alpha is dropped, never composited
 *     (PIL's convert("RGB") drops it too).
 *   - grey, grey+alpha, 1-bit: the grey band replicated into R, G and B.
 *   - palette: expanded through the palette (the loader does it).
 *   - 16-bit samples: the high byte (v >> 8).  This is what PIL does for
 *     16-bit RGB; for 16-bit GREY PIL clips every value above 255 to 255
 *     (an almost white page), and we deliberately scale instead.
 *   - CMYK: PIL's naive formula, per channel R = (255-K) - round(C*(255-K)/255)
 *     (no ICC profile), so CMYK JPEG/TIFF pages match PIL bit for bit.
 *   - Lab, XYZ and other colour spaces: libvips' conversion to sRGB
 *     (PIL cannot open most of these at all).
 *   - other sample formats (float, 32-bit): clipped to 0..255.
 *   - no EXIF auto-rotation and no ICC transform, as PIL's open/convert.
 *
 * Pages: a multi-page TIFF has one page per directory; a PDF one page per
 * PDF page, rendered by libvips' pdfload (poppler) at `pdf_dpi` dots per
 * inch over a white background.  Every other format has one page.
 *
 * libvips is initialised on first use (once, thread-safe) with its worker
 * concurrency set to 1 and its operation cache disabled: MPI ranks share a
 * node, so each rank must not start a thread pool or keep decoded images.
 * libvips' own warnings (stderr) are silenced unless DOCMINT_VIPS_WARNINGS=1:
 * failures reach the caller through DmErr. */
#ifndef DM_IMAGE_H
#define DM_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "common/dm_error.h"

/* 200 dpi renders a US-letter page at 1700x2200 and an A4 page at
 * 1654x2339: close to the real Donut input (1920 wide, 2560 high), so the
 * processor's resize changes the scale little and small print stays legible,
 * at a fraction of the cost of 300 dpi. */
#define IMAGE_PDF_DPI_DEFAULT 200

typedef struct DmImage {
    int w, h;
    uint8_t *rgb; /* h * w * 3 bytes, row-major, R G B interleaved (HWC) */
} DmImage;

/* Decompression bombs: a page larger than this many pixels (width x
 * height as decoded; for a PDF page, at the chosen dpi) is refused from
 * its header, before a pixel is decoded or rendered, with an error naming
 * the file, the size, the limit and how to raise it.  The limit, first
 * that applies: a job's corpus.max_page_pixels or the --max-pixels flag of
 * `preprocess` and `ask` (image_set_max_pixels), the environment variable
 * DOCMINT_MAX_PIXELS (every command and rank: `mpirun -x`), else the
 * default.  The setting is per process (one job per process), like
 * libvips' own settings. */
#define IMAGE_MAX_PIXELS_DEFAULT 50000000LL
#define IMAGE_MAX_PIXELS_CAP (1LL << 32) /* the most any setting allows: 12 GiB of RGB */
#define IMAGE_MAX_PIXELS_ENV "DOCMINT_MAX_PIXELS"
/* n in 1..IMAGE_MAX_PIXELS_CAP; 0 returns to the environment or default. */
void image_set_max_pixels(int64_t n);
/* The limit in force; -1 with err set when DOCMINT_MAX_PIXELS decides it
 * and is not a number in 1..IMAGE_MAX_PIXELS_CAP. */
int64_t image_max_pixels_checked(DmErr *err);
/* The same, the default where the variable is malformed. */
int64_t image_max_pixels(void);

/* Number of pages in the file (1 for single-image formats). */
int image_count_pages(const char *path, int *npages, DmErr *err);

/* Load page `page` (0-based) as 8-bit RGB into *out (which the caller frees
 * with image_free).  pdf_dpi applies to PDF pages only; pass
 * IMAGE_PDF_DPI_DEFAULT unless the user chose otherwise.  Errors (missing,
 * empty, unreadable or corrupt file, page out of range, bad dpi) name the
 * file. */
int image_load_page(const char *path, int page, int pdf_dpi, DmImage *out, DmErr *err);


/* Allocate a w x h image (contents zero).  Returns -1 on a bad size or when
 * memory runs out. */
int image_alloc(DmImage *img, int w, int h, DmErr *err);

/* Release the pixels and zero the struct; safe on a zeroed struct. */
void image_free(DmImage *img);

/* Whether this libvips can render PDF (its pdfload operation exists: on
 * Debian that is the poppler module shipped in libvips42). */
int image_pdf_supported(void);

/* Initialise libvips (idempotent, thread-safe).  Returns -1 if vips_init
 * fails. */
int image_vips_init(DmErr *err);

/* The first line of libvips' error buffer in buf ("" when it is empty),
 * and the buffer cleared: vips accumulates messages until cleared, and
 * only the first names the actual failure.  Returns buf. */
const char *image_vips_error(char *buf, size_t n);

#endif
