/* preprocess.h - the Donut image processor (Hugging Face
 * DonutImageProcessor, transformers 4.30), bit-exact with Pillow 9.4.0.
 *
 * Steps on an 8-bit RGB image (HWC), each optional per the config:
 *   1. align long axis: rotate 90 degrees clockwise (numpy rot90 k=3) when
 *      the image is landscape and the target portrait, or the reverse;
 *   2. resize (filter cfg->resample, PIL Image.resize): the shortest edge
 *      becomes min(height, width), the other int(min * long / short);
 *   3. thumbnail: fit inside height x width keeping the aspect ratio
 *      (the side that is not limiting becomes int(other * limit / side)),
 *      always BICUBIC with reducing_gap 2.0, i.e. PIL first box-reduces by
 *      an integer factor when the image is more than 2x too large;
 *      skipped when the image already fits;
 *   4. pad with zeros to height x width, centred: top = (H - h) / 2,
 *      left = (W - w) / 2, the remainder at the bottom/right;
 *   5. rescale: x = float32(double(v) * rescale_factor) (numpy multiplies the
 *      uint8 array by the Python float in float64, then casts);
 *   6. normalize: (x - float32(mean)) / float32(std) in float32.
 * Output: float32 [3, H, W] (CHW).  Against the reference (Pillow 9.4.0,
 * numpy) the uint8 intermediates and pixel_values are bit-identical: the
 * resampler is Pillow's fixed-point separable convolution, written anew. */
#ifndef DM_PREPROCESS_H
#define DM_PREPROCESS_H

#include "common/dm_error.h"
#include "worker/image/image.h"

/* PIL's resampling filter numbers (Image.Resampling). */
enum {
    PREPROC_NEAREST = 0, /* not supported: PIL uses a different code path */
    PREPROC_LANCZOS = 1,
    PREPROC_BILINEAR = 2,
    PREPROC_BICUBIC = 3,
    PREPROC_BOX = 4,
    PREPROC_HAMMING = 5,
};

typedef struct PreprocConfig {
    int height, width; /* size */
    int do_resize;
    int resample; /* PREPROC_* filter of step 2 */
    int do_thumbnail;
    int do_align_long_axis;
    int do_pad;
    int do_rescale;
    double rescale_factor;
    int do_normalize;
    double image_mean[3], image_std[3];
} PreprocConfig;

/* DonutImageProcessor's constructor defaults: 2560x1920, BILINEAR,
 * thumbnail, no alignment, pad, rescale 1/255, normalize mean = std = 0.5. */
void preproc_config_default(PreprocConfig *cfg);

/* Read preprocessor_config.json.  Keys absent take the defaults above.
 * "size" may be {"height": H, "width": W}, the legacy list [W, H], or one
 * integer (square).  image_mean/image_std are a number or 3 numbers.
 * Keys the Donut processor does not read are ignored (as HF does), but a
 * value this port cannot reproduce is an error: resample 0 (NEAREST) or an
 * unknown filter, size given as shortest_edge, a processor type other than
 * Donut, std 0, wrong types, non-positive sizes.  "random_padding" is
 * ignored: HF's preprocess() only takes it as an argument (default False). */
int preproc_config_load(const char *path, PreprocConfig *cfg, DmErr *err);
/* The same from JSON text; `name` is used in error messages. */
int preproc_config_parse(const char *json_text, const char *name, PreprocConfig *cfg, DmErr *err);

/* Sizes after each step for an in_w x in_h input. */
typedef struct PreprocGeometry {
    int in_w, in_h;
    int rotated; /* step 1 rotated the image */
    int aligned_w, aligned_h;
    int resized_w, resized_h; /* after step 2 (= aligned if no resize) */
    int thumb_w, thumb_h;     /* after step 3 (= resized if it fits) */
    int pad_top, pad_bottom, pad_left, pad_right;
    int out_w, out_h; /* pixel_values is [3, out_h, out_w] */
} PreprocGeometry;

/* Fails (naming the step) where HF would fail: an edge that would become 0
 * pixels, or padding to a size smaller than the image (do_pad without
 * do_thumbnail). */
int preproc_geometry(const PreprocConfig *cfg, int in_w, int in_h, PreprocGeometry *g, DmErr *err);

/* Run the processor: pixel_values must hold 3 * out_h * out_w floats (with
 * do_pad that is 3 * cfg->height * cfg->width). */
int preproc_run(const PreprocConfig *cfg, const DmImage *img, float *pixel_values, DmErr *err);

/* Intermediates for tests and debugging (HWC uint8 copies). */
typedef struct PreprocTrace {
    PreprocGeometry geom;
    DmImage aligned;   /* after step 1 */
    DmImage resized;   /* after step 2 (HF's resized_u8) */
    DmImage thumbnail; /* after step 3 (HF's thumbnail_u8) */
} PreprocTrace;

/* preproc_run that also fills *trace (freed with preproc_trace_free, also
 * after a failure). */
int preproc_run_trace(const PreprocConfig *cfg, const DmImage *img, float *pixel_values,
                      PreprocTrace *trace, DmErr *err);
void preproc_trace_free(PreprocTrace *trace);

/* PIL's Image.resize((out_w, out_h), resample=filter, reducing_gap=gap) on
 * an RGB image; reducing_gap <= 0 means None.  Exposed for tests. */
int preproc_pil_resize(const DmImage *in, int out_w, int out_h, int filter, double reducing_gap,
                       DmImage *out, DmErr *err);

/* PIL's Image.reduce((fx, fy), box=(x0, y0, x1, y1)): box averages of
 * fx x fy pixels (smaller blocks at the right/bottom edge), output
 * ceil((x1-x0)/fx) x ceil((y1-y0)/fy).  Exposed for tests. */
int preproc_pil_reduce(const DmImage *in, int fx, int fy, const int box[4], DmImage *out,
                       DmErr *err);

#endif
