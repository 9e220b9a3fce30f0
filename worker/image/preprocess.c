/* preprocess.c - the Donut image processor, bit-exact with Pillow 9.4.0 and
 * numpy (see preprocess.h for the steps).
 *
 * The resampler follows the arithmetic of Pillow's ImagingResample for
 * 8-bit images: per output pixel a window of filter taps (widened by the
 * scale factor when shrinking, which is Pillow's antialiasing), normalised
 * to sum 1, converted to 22-bit fixed point; horizontal pass first (only
 * over the rows the vertical pass will read), its result rounded and
 * clipped to uint8, then the vertical pass.  Any deviation in the order of
 * operations changes some pixels by one level, so the floating-point
 * expressions below are written in exactly Pillow's evaluation order. */

/* Pillow is compiled without fused multiply-add; GNU C would otherwise
 * contract a * b + c into an FMA under -march=native and change the
 * filter coefficients in their last bit. */
#pragma GCC optimize("fp-contract=off")

#include "worker/image/preprocess.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Filters: PIL's kernels and their supports (radius in input pixels at
 * scale 1). */

typedef struct SFilter {
    double (*fn)(double x);
    double support;
} SFilter;

static double s_box(double x)
{
    if (x > -0.5 && x <= 0.5)
        return 1.0;
    return 0.0;
}

static double s_bilinear(double x)
{
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return 1.0 - x;
    return 0.0;
}

static double s_hamming(double x)
{
    if (x < 0.0)
        x = -x;
    if (x == 0.0)
        return 1.0;
    if (x >= 1.0)
        return 0.0;
    x = x * M_PI;
    /* Pillow writes these two constants as float literals. */
    return sin(x) / x * ((double)0.54f + (double)0.46f * cos(x));
}

/* Keys' cubic convolution with a = -0.5. */
static double s_bicubic(double x)
{
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double s_sinc(double x)
{
    if (x == 0.0)
        return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double s_lanczos(double x)
{
    if (-3.0 <= x && x < 3.0)
        return s_sinc(x) * s_sinc(x / 3);
    return 0.0;
}

static const SFilter *s_filter(int resample)
{
    static const SFilter box = {s_box, 0.5}, bilinear = {s_bilinear, 1.0},
                         hamming = {s_hamming, 1.0}, bicubic = {s_bicubic, 2.0},
                         lanczos = {s_lanczos, 3.0};
    switch (resample) {
    case PREPROC_BOX: return &box;
    case PREPROC_BILINEAR: return &bilinear;
    case PREPROC_HAMMING: return &hamming;
    case PREPROC_BICUBIC: return &bicubic;
    case PREPROC_LANCZOS: return &lanczos;
    default: return NULL;
    }
}

static const char *s_filter_name(int resample)
{
    static const char *names[] = {"NEAREST", "LANCZOS", "BILINEAR", "BICUBIC", "BOX", "HAMMING"};
    return resample >= 0 && resample <= 5 ? names[resample] : "unknown";
}

/* ------------------------------------------------------------------ */
/* Coefficients. */

/* 8 bits of pixel, 2 bits of headroom for coefficient sums above 1. */
#define S_PRECISION_BITS (32 - 8 - 2)

typedef struct SCoeffs {
    int ksize;   /* taps per output pixel (max) */
    int *bounds; /* [out][2]: first input index, number of taps */
    int32_t *k;  /* [out][ksize] fixed-point taps */
} SCoeffs;

static void s_coeffs_free(SCoeffs *c)
{
    free(c->bounds);
    free(c->k);
    c->bounds = NULL;
    c->k = NULL;
}

/* Taps mapping input [in0, in1) (a float box, as Pillow passes it) onto
 * out_size pixels.  Same expressions, same evaluation order as Pillow's
 * precompute_coeffs + normalize_coeffs_8bpc. */
static int s_coeffs(int in_size, float in0, float in1, int out_size, const SFilter *f, SCoeffs *c,
                    DmErr *err)
{
    double support, scale, filterscale;
    c->bounds = NULL;
    c->k = NULL;
    /* in1 - in0 is a float subtraction in Pillow. */
    float span = in1 - in0;
    filterscale = scale = (double)span / out_size;
    if (filterscale < 1.0)
        filterscale = 1.0;
    support = f->support * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    if (ksize <= 0 || out_size > INT_MAX / (ksize * (int)sizeof(double)))
        return dm_err(err, "resample: %d output pixels with %d taps is too large", out_size, ksize);
    double *kk = malloc((size_t)out_size * (size_t)ksize * sizeof *kk);
    c->bounds = malloc((size_t)out_size * 2 * sizeof *c->bounds);
    c->k = malloc((size_t)out_size * (size_t)ksize * sizeof *c->k);
    if (!kk || !c->bounds || !c->k) {
        free(kk);
        s_coeffs_free(c);
        return dm_err(err, "resample: out of memory");
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        double ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5); /* round half up, as Pillow */
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        double *k = &kk[(size_t)xx * ksize];
        int x;
        for (x = 0; x < xmax; x++) {
            double w = f->fn((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0)
                k[x] /= ww;
        for (; x < ksize; x++)
            k[x] = 0;
        c->bounds[xx * 2 + 0] = xmin;
        c->bounds[xx * 2 + 1] = xmax;
    }
    /* Fixed point, rounding half away from zero. */
    for (size_t i = 0; i < (size_t)out_size * (size_t)ksize; i++) {
        if (kk[i] < 0)
            c->k[i] = (int32_t)(-0.5 + kk[i] * (1 << S_PRECISION_BITS));
        else
            c->k[i] = (int32_t)(0.5 + kk[i] * (1 << S_PRECISION_BITS));
    }
    free(kk);
    c->ksize = ksize;
    return 0;
}

/* Round the fixed-point sum (it started at one half) and clip to 0..255.
 * Pillow uses a lookup table over -640..639, equivalent for any sum a
 * real filter can produce. */
static inline uint8_t s_clip8(int ss)
{
    int v = ss >> S_PRECISION_BITS; /* arithmetic shift, as Pillow */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Horizontal pass: out rows 0..out->h-1 from input rows offset.. */
static void s_pass_h(const DmImage *in, DmImage *out, int offset, const SCoeffs *c)
{
    for (int yy = 0; yy < out->h; yy++) {
        const uint8_t *src = in->rgb + (size_t)(yy + offset) * in->w * 3;
        uint8_t *dst = out->rgb + (size_t)yy * out->w * 3;
        for (int xx = 0; xx < out->w; xx++) {
            int xmin = c->bounds[xx * 2], xmax = c->bounds[xx * 2 + 1];
            const int32_t *k = &c->k[(size_t)xx * c->ksize];
            int ss0 = 1 << (S_PRECISION_BITS - 1), ss1 = ss0, ss2 = ss0;
            for (int x = 0; x < xmax; x++) {
                const uint8_t *p = src + (size_t)(x + xmin) * 3;
                ss0 += p[0] * k[x];
                ss1 += p[1] * k[x];
                ss2 += p[2] * k[x];
            }
            dst[xx * 3 + 0] = s_clip8(ss0);
            dst[xx * 3 + 1] = s_clip8(ss1);
            dst[xx * 3 + 2] = s_clip8(ss2);
        }
    }
}

/* Vertical pass: bounds index rows of `in`. */
static void s_pass_v(const DmImage *in, DmImage *out, const SCoeffs *c)
{
    size_t stride = (size_t)in->w * 3;
    for (int yy = 0; yy < out->h; yy++) {
        int ymin = c->bounds[yy * 2], ymax = c->bounds[yy * 2 + 1];
        const int32_t *k = &c->k[(size_t)yy * c->ksize];
        uint8_t *dst = out->rgb + (size_t)yy * out->w * 3;
        for (int xx = 0; xx < out->w; xx++) {
            int ss0 = 1 << (S_PRECISION_BITS - 1), ss1 = ss0, ss2 = ss0;
            const uint8_t *p = in->rgb + (size_t)ymin * stride + (size_t)xx * 3;
            for (int y = 0; y < ymax; y++, p += stride) {
                ss0 += p[0] * k[y];
                ss1 += p[1] * k[y];
                ss2 += p[2] * k[y];
            }
            dst[xx * 3 + 0] = s_clip8(ss0);
            dst[xx * 3 + 1] = s_clip8(ss1);
            dst[xx * 3 + 2] = s_clip8(ss2);
        }
    }
}

static int s_copy(const DmImage *in, DmImage *out, DmErr *err)
{
    if (image_alloc(out, in->w, in->h, err))
        return -1;
    memcpy(out->rgb, in->rgb, (size_t)in->w * in->h * 3);
    return 0;
}

/* Integer crop [x0, x0+w) x [y0, y0+h). */
static int s_crop(const DmImage *in, int x0, int y0, int w, int h, DmImage *out, DmErr *err)
{
    if (image_alloc(out, w, h, err))
        return -1;
    for (int y = 0; y < h; y++)
        memcpy(out->rgb + (size_t)y * w * 3, in->rgb + ((size_t)(y0 + y) * in->w + x0) * 3,
               (size_t)w * 3);
    return 0;
}

/* Pillow's ImagingResample(imIn, xsize, ysize, filter, box) with the
 * checks and the integer-box crop shortcut of its Python binding. */
static int s_resample(const DmImage *in, int xsize, int ysize, const SFilter *f, const float box[4],
                      DmImage *out, DmErr *err)
{
    out->rgb = NULL;
    out->w = out->h = 0;
    if (xsize < 1 || ysize < 1)
        return dm_err(err, "resize: height and width must be > 0 (asked %dx%d)", xsize, ysize);
    if (box[0] < 0 || box[1] < 0 || box[2] > in->w || box[3] > in->h || box[2] - box[0] < 0 ||
        box[3] - box[1] < 0)
        return dm_err(err, "resize: bad source box");
    if (box[0] - (int)box[0] == 0 && box[2] - box[0] == xsize && box[1] - (int)box[1] == 0 &&
        box[3] - box[1] == ysize)
        return s_crop(in, (int)box[0], (int)box[1], xsize, ysize, out, err);

    int need_h = xsize != in->w || box[0] != 0 || box[2] != xsize;
    int need_v = ysize != in->h || box[1] != 0 || box[3] != ysize;
    SCoeffs cv, ch;
    if (s_coeffs(in->h, box[1], box[3], ysize, f, &cv, err))
        return -1;
    /* The rows of the input that the vertical pass reads. */
    int ybox_first = cv.bounds[0];
    int ybox_last = cv.bounds[ysize * 2 - 2] + cv.bounds[ysize * 2 - 1];
    DmImage tmp = {0, 0, NULL};
    const DmImage *cur = in;
    if (need_h) {
        if (s_coeffs(in->w, box[0], box[2], xsize, f, &ch, err)) {
            s_coeffs_free(&cv);
            return -1;
        }
        for (int i = 0; i < ysize; i++)
            cv.bounds[i * 2] -= ybox_first;
        if (image_alloc(&tmp, xsize, ybox_last - ybox_first, err)) {
            s_coeffs_free(&cv);
            s_coeffs_free(&ch);
            return -1;
        }
        s_pass_h(in, &tmp, ybox_first, &ch);
        s_coeffs_free(&ch);
        cur = &tmp;
    }
    int rc = 0;
    if (need_v) {
        rc = image_alloc(out, cur->w, ysize, err);
        if (!rc)
            s_pass_v(cur, out, &cv);
        image_free(&tmp);
    } else if (need_h) {
        *out = tmp; /* hand over the horizontal result */
    } else {
        rc = s_copy(in, out, err);
    }
    s_coeffs_free(&cv);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Reduce (PIL Image.reduce). */

/* Pillow's 2^32 / (256 * n) computed in float and truncated: the
 * multiplier that turns a sum of n pixels (plus n/2) into their rounded
 * mean with ">> 24". */
static uint32_t s_reduce_mult(uint32_t n)
{
    float max_int = 4294967296.0f;
    float div = (float)(256u * n);
    return (uint32_t)(max_int / div);
}

int preproc_pil_reduce(const DmImage *in, int fx, int fy, const int box_in[4], DmImage *out,
                       DmErr *err)
{
    int box[4] = {0, 0, in->w, in->h};
    out->rgb = NULL;
    out->w = out->h = 0;
    if (box_in)
        memcpy(box, box_in, sizeof box);
    if (fx < 1 || fy < 1)
        return dm_err(err, "reduce: scale must be > 0 (got %dx%d)", fx, fy);
    if (box[0] < 0 || box[1] < 0 || box[2] > in->w || box[3] > in->h || box[2] <= box[0] ||
        box[3] <= box[1])
        return dm_err(err, "reduce: bad box (%d,%d,%d,%d) for a %dx%d image", box[0], box[1],
                      box[2], box[3], in->w, in->h);
    int bw = box[2] - box[0], bh = box[3] - box[1];
    if (fx == 1 && fy == 1)
        return s_crop(in, box[0], box[1], bw, bh, out, err);
    int ow = (bw + fx - 1) / fx, oh = (bh + fy - 1) / fy;
    if (image_alloc(out, ow, oh, err))
        return -1;
    for (int y = 0; y < oh; y++) {
        int y0 = box[1] + y * fy;
        int y1 = y0 + fy < box[3] ? y0 + fy : box[3];
        for (int x = 0; x < ow; x++) {
            int x0 = box[0] + x * fx;
            int x1 = x0 + fx < box[2] ? x0 + fx : box[2];
            /* Edge blocks average fewer pixels (Pillow's "corners"), with
             * the multiplier for their own count. */
            uint32_t n = (uint32_t)((x1 - x0) * (y1 - y0));
            uint32_t mult = s_reduce_mult(n), amend = n / 2;
            uint32_t s0 = amend, s1 = amend, s2 = amend;
            for (int yy = y0; yy < y1; yy++) {
                const uint8_t *p = in->rgb + ((size_t)yy * in->w + x0) * 3;
                for (int xx = x0; xx < x1; xx++, p += 3) {
                    s0 += p[0];
                    s1 += p[1];
                    s2 += p[2];
                }
            }
            uint8_t *d = out->rgb + ((size_t)y * ow + x) * 3;
            d[0] = (uint8_t)((s0 * mult) >> 24);
            d[1] = (uint8_t)((s1 * mult) >> 24);
            d[2] = (uint8_t)((s2 * mult) >> 24);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Resize (PIL Image.resize). */

int preproc_pil_resize(const DmImage *in, int out_w, int out_h, int filter, double reducing_gap,
                       DmImage *out, DmErr *err)
{
    out->rgb = NULL;
    out->w = out->h = 0;
    const SFilter *f = s_filter(filter);
    if (!f)
        return dm_err(err, "resize: resample %d (%s) is not supported", filter,
                      s_filter_name(filter));
    if (out_w < 1 || out_h < 1)
        return dm_err(err, "resize: height and width must be > 0 (asked %dx%d)", out_w, out_h);
    if (out_w == in->w && out_h == in->h)
        return s_copy(in, out, err);
    /* The source box, in Python floats (doubles) until Pillow's binding
     * converts it to C floats. */
    double box[4] = {0, 0, in->w, in->h};
    DmImage red = {0, 0, NULL};
    const DmImage *src = in;
    if (reducing_gap > 0) {
        int fx = (int)((box[2] - box[0]) / out_w / reducing_gap);
        int fy = (int)((box[3] - box[1]) / out_h / reducing_gap);
        if (fx < 1)
            fx = 1;
        if (fy < 1)
            fy = 1;
        if (fx > 1 || fy > 1) {
            /* Image._get_safe_box: widen the box by the filter's reach so
             * the reduced image still holds every pixel the filter uses. */
            double fs = f->support - 0.5;
            double sx = fs * ((box[2] - box[0]) / out_w);
            double sy = fs * ((box[3] - box[1]) / out_h);
            int rb[4];
            double v;
            v = box[0] - sx;
            rb[0] = (int)v > 0 ? (int)v : 0; /* int() truncates, then max(0, .) */
            v = box[1] - sy;
            rb[1] = (int)v > 0 ? (int)v : 0;
            v = ceil(box[2] + sx);
            rb[2] = v < in->w ? (int)v : in->w;
            v = ceil(box[3] + sy);
            rb[3] = v < in->h ? (int)v : in->h;
            if (preproc_pil_reduce(in, fx, fy, rb, &red, err))
                return dm_err_prefix(err, "resize");
            src = &red;
            box[0] = (box[0] - rb[0]) / fx;
            box[1] = (box[1] - rb[1]) / fy;
            box[2] = (box[2] - rb[0]) / fx;
            box[3] = (box[3] - rb[1]) / fy;
        }
    }
    float fbox[4] = {(float)box[0], (float)box[1], (float)box[2], (float)box[3]};
    int rc = s_resample(src, out_w, out_h, f, fbox, out, err);
    image_free(&red);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Config. */

void preproc_config_default(PreprocConfig *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->height = 2560;
    cfg->width = 1920;
    cfg->do_resize = 1;
    cfg->resample = PREPROC_BILINEAR;
    cfg->do_thumbnail = 1;
    cfg->do_align_long_axis = 0;
    cfg->do_pad = 1;
    cfg->do_rescale = 1;
    cfg->rescale_factor = 1.0 / 255.0;
    cfg->do_normalize = 1;
    for (int c = 0; c < 3; c++) {
        cfg->image_mean[c] = 0.5; /* IMAGENET_STANDARD_MEAN */
        cfg->image_std[c] = 0.5;
    }
}

static int s_json_flag(json_t *root, const char *key, int *dst, const char *name, DmErr *err)
{
    json_t *v = json_object_get(root, key);
    if (!v)
        return 0;
    if (json_is_boolean(v))
        *dst = json_is_true(v);
    else if (json_is_integer(v))
        *dst = json_integer_value(v) != 0;
    else
        return dm_err(err, "%s: \"%s\" must be true or false", name, key);
    return 0;
}

static int s_json_int_size(json_t *v, int *dst)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    if (x < 1 || x > 65535)
        return -1;
    *dst = (int)x;
    return 0;
}

/* A number or a list of 3 numbers. */
static int s_json_triple(json_t *root, const char *key, double dst[3], const char *name, DmErr *err)
{
    json_t *v = json_object_get(root, key);
    if (!v)
        return 0;
    if (json_is_number(v)) {
        dst[0] = dst[1] = dst[2] = json_number_value(v);
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) != 3)
        return dm_err(err,
                      "%s: \"%s\" must be a number or a list of 3 numbers (one per RGB channel)",
                      name, key);
    for (int c = 0; c < 3; c++) {
        json_t *e = json_array_get(v, (size_t)c);
        if (!json_is_number(e))
            return dm_err(err, "%s: \"%s\"[%d] is not a number", name, key, c);
        dst[c] = json_number_value(e);
    }
    return 0;
}

static int s_config_from_json(json_t *root, const char *name, PreprocConfig *cfg, DmErr *err)
{
    preproc_config_default(cfg);
    if (!json_is_object(root))
        return dm_err(err, "%s: expected a JSON object", name);

    /* The processor type, when given, must be Donut's: another processor
     * (e.g. Nougat's or a CLIP one) does different steps. */
    static const char *type_keys[] = {"image_processor_type", "feature_extractor_type"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, type_keys[i]);
        if (v && !json_is_null(v)) {
            const char *s = json_string_value(v);
            if (!s || (strcmp(s, "DonutImageProcessor") && strcmp(s, "DonutFeatureExtractor")))
                return dm_err(err, "%s: \"%s\" is %s; only DonutImageProcessor is supported", name,
                              type_keys[i], s ? s : "not a string");
        }
    }

    if (s_json_flag(root, "do_resize", &cfg->do_resize, name, err) ||
        s_json_flag(root, "do_thumbnail", &cfg->do_thumbnail, name, err) ||
        s_json_flag(root, "do_align_long_axis", &cfg->do_align_long_axis, name, err) ||
        s_json_flag(root, "do_pad", &cfg->do_pad, name, err) ||
        s_json_flag(root, "do_rescale", &cfg->do_rescale, name, err) ||
        s_json_flag(root, "do_normalize", &cfg->do_normalize, name, err))
        return -1;

    json_t *v = json_object_get(root, "size");
    if (v) {
        if (json_is_object(v)) {
            json_t *hh = json_object_get(v, "height"), *ww = json_object_get(v, "width");
            if (json_object_get(v, "shortest_edge") || json_object_get(v, "longest_edge"))
                return dm_err(err,
                              "%s: \"size\" as shortest_edge/longest_edge is not supported by "
                              "the Donut processor (it needs height and width)",
                              name);
            if (!hh || !ww || s_json_int_size(hh, &cfg->height) || s_json_int_size(ww, &cfg->width))
                return dm_err(err,
                              "%s: \"size\" must have integer \"height\" and \"width\" in 1..65535",
                              name);
        } else if (json_is_array(v)) {
            /* The old feature extractor's (width, height) list. */
            if (json_array_size(v) != 2 || s_json_int_size(json_array_get(v, 0), &cfg->width) ||
                s_json_int_size(json_array_get(v, 1), &cfg->height))
                return dm_err(
                    err, "%s: \"size\" list must be [width, height], integers in 1..65535", name);
        } else if (json_is_integer(v)) {
            if (s_json_int_size(v, &cfg->height))
                return dm_err(err, "%s: \"size\" must be in 1..65535", name);
            cfg->width = cfg->height;
        } else {
            return dm_err(err,
                          "%s: \"size\" must be {\"height\", \"width\"}, [width, height] or an "
                          "integer",
                          name);
        }
    }

    v = json_object_get(root, "resample");
    if (v) {
        if (!json_is_integer(v))
            return dm_err(err, "%s: \"resample\" must be an integer PIL filter number", name);
        json_int_t r = json_integer_value(v);
        if (r == PREPROC_NEAREST)
            return dm_err(err, "%s: \"resample\" 0 (NEAREST) is not supported", name);
        if (r < 1 || r > 5)
            return dm_err(err,
                          "%s: \"resample\" %lld is not a PIL filter (1..5: LANCZOS, BILINEAR, "
                          "BICUBIC, BOX, HAMMING)",
                          name, (long long)r);
        cfg->resample = (int)r;
    }

    v = json_object_get(root, "rescale_factor");
    if (v) {
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return dm_err(err, "%s: \"rescale_factor\" must be a number", name);
        cfg->rescale_factor = json_number_value(v);
    }
    if (s_json_triple(root, "image_mean", cfg->image_mean, name, err) ||
        s_json_triple(root, "image_std", cfg->image_std, name, err))
        return -1;
    for (int c = 0; c < 3; c++) {
        if (!isfinite(cfg->image_mean[c]) || !isfinite(cfg->image_std[c]) ||
            (float)cfg->image_std[c] == 0.0f)
            return dm_err(err, "%s: image_mean/image_std must be finite and std non-zero", name);
    }
    return 0;
}

int preproc_config_parse(const char *json_text, const char *name, PreprocConfig *cfg, DmErr *err)
{
    json_error_t je;
    json_t *root = json_loads(json_text, 0, &je);
    if (!root)
        return dm_err(err, "%s: invalid JSON at line %d: %s", name, je.line, je.text);
    int rc = s_config_from_json(root, name, cfg, err);
    json_decref(root);
    return rc;
}

int preproc_config_load(const char *path, PreprocConfig *cfg, DmErr *err)
{
    json_error_t je;
    FILE *f = fopen(path, "rb");
    if (!f)
        return dm_err_errno(err, "%s", path);
    json_t *root = json_loadf(f, 0, &je);
    fclose(f);
    if (!root)
        return dm_err(err, "%s: invalid JSON at line %d: %s", path, je.line, je.text);
    int rc = s_config_from_json(root, path, cfg, err);
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Geometry. */

/* int(a * b / c) as Python computes it: exact integer product, correctly
 * rounded true division, truncation. */
static int s_scale_int(int a, int b, int c)
{
    double q = (double)((int64_t)a * b) / (double)c;
    return q >= (double)INT_MAX ? INT_MAX : (int)q;
}

int preproc_geometry(const PreprocConfig *cfg, int in_w, int in_h, PreprocGeometry *g, DmErr *err)
{
    memset(g, 0, sizeof *g);
    if (in_w < 1 || in_h < 1)
        return dm_err(err, "preprocess: empty input image (%dx%d)", in_w, in_h);
    if (cfg->height < 1 || cfg->width < 1)
        return dm_err(err, "preprocess: bad target size %dx%d", cfg->width, cfg->height);
    int H = cfg->height, W = cfg->width;
    g->in_w = in_w;
    g->in_h = in_h;

    int w = in_w, h = in_h;
    if (cfg->do_align_long_axis && ((W < H && w > h) || (W > H && w < h))) {
        g->rotated = 1;
        w = in_h;
        h = in_w;
    }
    g->aligned_w = w;
    g->aligned_h = h;

    if (cfg->do_resize) {
        int s = H < W ? H : W;
        if (w <= h) { /* width is the short edge */
            h = s_scale_int(s, h, w);
            w = s;
        } else {
            w = s_scale_int(s, w, h);
            h = s;
        }
    }
    g->resized_w = w;
    g->resized_h = h;

    if (cfg->do_thumbnail) {
        int th = h < H ? h : H, tw = w < W ? w : W;
        if (!(th == h && tw == w)) {
            if (h > w)
                tw = s_scale_int(w, th, h);
            else if (w > h)
                th = s_scale_int(h, tw, w);
        }
        w = tw;
        h = th;
    }
    g->thumb_w = w;
    g->thumb_h = h;
    if (w < 1 || h < 1)
        return dm_err(err, "preprocess: a %dx%d image becomes %dx%d (an edge of 0 pixels)", in_w,
                      in_h, w, h);

    if (cfg->do_pad) {
        if (w > W || h > H)
            return dm_err(err,
                          "preprocess: cannot pad a %dx%d image to %dx%d: it is larger "
                          "(HF fails here too; do_thumbnail keeps it inside)",
                          w, h, W, H);
        g->pad_top = (H - h) / 2;
        g->pad_bottom = H - h - g->pad_top;
        g->pad_left = (W - w) / 2;
        g->pad_right = W - w - g->pad_left;
        g->out_w = W;
        g->out_h = H;
    } else {
        g->out_w = w;
        g->out_h = h;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* The pipeline. */

/* numpy.rot90(image, 3, axes=(0, 1)) on HWC: 90 degrees clockwise,
 * out[i][j] = in[h - 1 - j][i]. */
static int s_rot90_cw(const DmImage *in, DmImage *out, DmErr *err)
{
    if (image_alloc(out, in->h, in->w, err))
        return -1;
    for (int i = 0; i < out->h; i++)
        for (int j = 0; j < out->w; j++)
            memcpy(out->rgb + ((size_t)i * out->w + j) * 3,
                   in->rgb + ((size_t)(in->h - 1 - j) * in->w + i) * 3, 3);
    return 0;
}

void preproc_trace_free(PreprocTrace *t)
{
    if (!t)
        return;
    image_free(&t->aligned);
    image_free(&t->resized);
    image_free(&t->thumbnail);
}

int preproc_run_trace(const PreprocConfig *cfg, const DmImage *img, float *pixel_values,
                      PreprocTrace *trace, DmErr *err)
{
    PreprocGeometry g;
    if (trace)
        memset(trace, 0, sizeof *trace);
    if (!img || !img->rgb)
        return dm_err(err, "preprocess: no image");
    if (preproc_geometry(cfg, img->w, img->h, &g, err))
        return -1;
    if (trace)
        trace->geom = g;

    /* Each stage owns its image; `cur` points at the latest. */
    DmImage st[3] = {{0, 0, NULL}, {0, 0, NULL}, {0, 0, NULL}};
    const DmImage *cur = img;
    int rc = -1;
    if (g.rotated) {
        if (s_rot90_cw(cur, &st[0], err))
            goto done;
        cur = &st[0];
    }
    if (cfg->do_resize) {
        if (preproc_pil_resize(cur, g.resized_w, g.resized_h, cfg->resample, 0.0, &st[1], err))
            goto fail_step;
        cur = &st[1];
    }
    if (cfg->do_thumbnail && !(g.thumb_w == cur->w && g.thumb_h == cur->h)) {
        /* HF's thumbnail(): BICUBIC with reducing_gap 2.0, whatever the
         * configured resample. */
        if (preproc_pil_resize(cur, g.thumb_w, g.thumb_h, PREPROC_BICUBIC, 2.0, &st[2], err))
            goto fail_step;
        cur = &st[2];
    }

    /* Pad, rescale, normalize, HWC -> CHW.  Padding pixels are uint8 0 and
     * go through the same arithmetic (with mean = std = 0.5 they become
     * -1.0). */
    {
        float lut[3][256];
        for (int c = 0; c < 3; c++) {
            float mean = (float)cfg->image_mean[c], std = (float)cfg->image_std[c];
            for (int v = 0; v < 256; v++) {
                float x = cfg->do_rescale ? (float)((double)v * cfg->rescale_factor) : (float)v;
                if (cfg->do_normalize)
                    x = (x - mean) / std;
                lut[c][v] = x;
            }
        }
        size_t plane = (size_t)g.out_h * g.out_w;
        for (int c = 0; c < 3; c++) {
            float *dst = pixel_values + c * plane;
            for (int y = 0; y < g.out_h; y++) {
                int sy = y - g.pad_top;
                for (int x = 0; x < g.out_w; x++) {
                    int sx = x - g.pad_left;
                    uint8_t v = 0;
                    if (sy >= 0 && sy < cur->h && sx >= 0 && sx < cur->w)
                        v = cur->rgb[((size_t)sy * cur->w + sx) * 3 + c];
                    dst[(size_t)y * g.out_w + x] = lut[c][v];
                }
            }
        }
    }
    rc = 0;
    if (trace) {
        /* Record every stage (a skipped stage repeats its input). */
        const DmImage *a = g.rotated ? &st[0] : img;
        const DmImage *r = cfg->do_resize ? &st[1] : a;
        const DmImage *t = st[2].rgb ? &st[2] : r;
        if (s_copy(a, &trace->aligned, err) || s_copy(r, &trace->resized, err) ||
            s_copy(t, &trace->thumbnail, err))
            rc = -1;
    }
    goto done;

fail_step:
    dm_err_prefix(err, "preprocess");
done:
    for (int i = 0; i < 3; i++)
        image_free(&st[i]);
    return rc;
}

int preproc_run(const PreprocConfig *cfg, const DmImage *img, float *pixel_values, DmErr *err)
{
    return preproc_run_trace(cfg, img, pixel_values, NULL, err);
}
