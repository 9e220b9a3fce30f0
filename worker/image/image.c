/* image.c - load page images with libvips and convert them to 8-bit RGB the
 * way PIL's Image.convert("RGB") does (see image.h for the rules). */
#include "worker/image/image.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <vips/vips.h>

#include "common/dm_fs.h"

/* Refuse pages above this many pixels: a 600 dpi A0 poster is ~ 6.7e8, a
 * scanned page ~ 1e7; anything larger is almost certainly a bad dpi or a
 * hostile file, and the RGB buffer alone would be gigabytes. */
#define S_MAX_PIXELS IMAGE_MAX_PIXELS_CAP /* buffers; pages are checked against the limit */
#define S_MAX_DPI 2400

static pthread_once_t s_once = PTHREAD_ONCE_INIT;

static void s_drop_log(const gchar *domain, GLogLevelFlags level, const gchar *msg, gpointer data)
{
    (void)domain;
    (void)level;
    (void)msg;
    (void)data;
}
static int s_init_rc = -1;
static char s_init_msg[256];

static void s_init(void)
{
    if (VIPS_INIT("docmint")) {
        snprintf(s_init_msg, sizeof s_init_msg, "%s", vips_error_buffer());
        vips_error_clear();
        return;
    }
    /* One worker thread: ranks share nodes and already split the work.  No
     * operation cache: a worker sees every page once, so caching decoded
     * images (and keeping their files open) only costs memory. */
    vips_concurrency_set(1);
    vips_cache_set_max(0);
    vips_cache_set_max_mem(0);
    vips_cache_set_max_files(0);
    /* libvips prints loader warnings (libtiff's "Bogus StripByteCounts",
     * libjpeg's "premature end") on stderr from every rank; a page that
     * really cannot be read is reported through DmErr instead.
     * DOCMINT_VIPS_WARNINGS=1 shows them again. */
    const char *show = getenv("DOCMINT_VIPS_WARNINGS");
    if (!show || !*show || !strcmp(show, "0"))
        g_log_set_handler("VIPS", G_LOG_LEVEL_WARNING, s_drop_log, NULL);
    s_init_rc = 0;
}

int image_vips_init(DmErr *err)
{
    pthread_once(&s_once, s_init);
    if (s_init_rc)
        return dm_err(err, "libvips: initialisation failed: %s", s_init_msg);
    return 0;
}

const char *image_vips_error(char *buf, size_t n)
{
    const char *s = vips_error_buffer();
    size_t i = 0;
    while (s[i] && s[i] != '\n' && i + 1 < n) {
        buf[i] = s[i];
        i++;
    }
    buf[i] = '\0';
    vips_error_clear();
    return buf;
}

static const char *s_vips_msg(char *buf, size_t n)
{
    if (!image_vips_error(buf, n)[0])
        snprintf(buf, n, "unknown libvips error");
    return buf;
}

int image_alloc(DmImage *img, int w, int h, DmErr *err)
{
    img->w = img->h = 0;
    img->rgb = NULL;
    if (w <= 0 || h <= 0 || (int64_t)w * h > S_MAX_PIXELS)
        return dm_err(err, "image: bad size %dx%d", w, h);
    img->rgb = calloc((size_t)w * (size_t)h, 3);
    if (!img->rgb)
        return dm_err(err, "image: out of memory for %dx%d pixels", w, h);
    img->w = w;
    img->h = h;
    return 0;
}

void image_free(DmImage *img)
{
    if (!img)
        return;
    free(img->rgb);
    img->rgb = NULL;
    img->w = img->h = 0;
}

static _Atomic int64_t s_max_pixels; /* 0: not set, the environment or default decides */

void image_set_max_pixels(int64_t n)
{
    s_max_pixels = n <= 0 ? 0 : n > IMAGE_MAX_PIXELS_CAP ? IMAGE_MAX_PIXELS_CAP : n;
}

int64_t image_max_pixels_checked(DmErr *err)
{
    int64_t set = s_max_pixels;
    if (set > 0)
        return set;
    const char *v = getenv(IMAGE_MAX_PIXELS_ENV);
    if (!v || !*v)
        return IMAGE_MAX_PIXELS_DEFAULT;
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || *end || n < 1 || n > IMAGE_MAX_PIXELS_CAP) {
        dm_err(err, "%s=%s: expected a number of pixels from 1 to %lld", IMAGE_MAX_PIXELS_ENV, v,
               (long long)IMAGE_MAX_PIXELS_CAP);
        return -1;
    }
    return n;
}

int64_t image_max_pixels(void)
{
    int64_t n = image_max_pixels_checked(NULL);
    return n < 0 ? IMAGE_MAX_PIXELS_DEFAULT : n;
}

/* The size check on the header (libvips loaders are lazy: width and
 * height are known, nothing is decoded yet; pdfload gives the page's size
 * at the dpi it was opened with, without rendering it). */
static int s_check_size(const char *path, int page, int dpi, VipsImage *img, DmErr *err)
{
    int64_t w = vips_image_get_width(img), h = vips_image_get_height(img);
    int64_t lim = image_max_pixels_checked(err);
    if (lim < 0)
        return -1;
    if (w > 0 && h > 0 && w * h <= lim)
        return 0;
    const char *loader = NULL;
    int is_pdf = vips_image_get_typeof(img, VIPS_META_LOADER) &&
                 !vips_image_get_string(img, VIPS_META_LOADER, &loader) && loader && strstr(loader, "pdf");
    if (w <= 0 || h <= 0)
        return dm_err(err, "%s: page %d: image size %" PRId64 "x%" PRId64 " is empty", path, page, w, h);
    char how[256];
    if (w * h <= IMAGE_MAX_PIXELS_CAP)
        snprintf(how, sizeof how,
                 "; to allow it, set max_page_pixels (job corpus key), --max-pixels or the environment "
                 "variable %s to %" PRId64 " or more (%" PRId64 " MB of pixels)",
                 IMAGE_MAX_PIXELS_ENV, w * h, w * h * 3 >> 20);
    else
        snprintf(how, sizeof how, "; no setting allows more than %lld", (long long)IMAGE_MAX_PIXELS_CAP);
    if (is_pdf)
        return dm_err(err, "%s: PDF page %d at %d dpi is %" PRId64 "x%" PRId64 " = %" PRId64 " pixels (%.1f x "
                           "%.1f inches), more than the limit of %" PRId64 " (a lower pdf_dpi renders it "
                           "smaller)%s",
                      path, page, dpi, w, h, w * h, (double)w / dpi, (double)h / dpi, lim, how);
    return dm_err(err, "%s: page %d is %" PRId64 "x%" PRId64 " = %" PRId64 " pixels, more than the limit of "
                       "%" PRId64 "%s",
                  path, page, w, h, w * h, lim, how);
}

int image_pdf_supported(void)
{
    if (image_vips_init(NULL))
        return 0;
    return vips_type_find("VipsOperation", "pdfload") != 0;
}

/* Missing, unreadable, directory, empty and not regular files (a FIFO,
 * a device) get their own message
 * before libvips sees them (its messages for these are vaguer). */
static int s_check_file(const char *path, DmErr *err)
{
    struct stat st;
    if (!path || !*path)
        return dm_err(err, "image: empty file name");
    if (stat(path, &st))
        return dm_err_errno(err, "%s", path);
    if (S_ISDIR(st.st_mode))
        return dm_err(err, "%s: is a directory, not an image", path);
    /* a FIFO or device would block libvips' read (or never end) */
    if (dm_check_regular(path, err))
        return -1;
    if (st.st_size == 0)
        return dm_err(err, "%s: empty file", path);
    return 0;
}

static int s_has_arg(VipsOperation *op, const char *name)
{
    return g_object_class_find_property(G_OBJECT_GET_CLASS(op), name) != NULL;
}

/* Open `path` with the loader libvips picks for it.  page < 0 means "header
 * only, default page".  Loader options are set only when the loader has
 * them (pngload has no "page", only pdfload has "dpi"). */
static int s_open(const char *path, int page, int dpi, VipsImage **out, DmErr *err)
{
    char vm[512];
    *out = NULL;
    if (s_check_file(path, err))
        return -1;
    if (image_vips_init(err))
        return -1;
    const char *loader = vips_foreign_find_load(path);
    if (!loader) {
        vips_error_clear();
        return dm_err(
            err, "%s: not a recognised image or PDF file (unknown format or corrupt header)", path);
    }
    VipsOperation *op = vips_operation_new(loader);
    if (!op)
        return dm_err(err, "%s: libvips loader %s: %s", path, loader, s_vips_msg(vm, sizeof vm));
    g_object_set(op, "filename", path, NULL);
    if (s_has_arg(op, "access"))
        g_object_set(op, "access", VIPS_ACCESS_SEQUENTIAL, NULL);
    /* Stop on truncated data instead of returning a partly grey page, as PIL
     * raises "image file is truncated". */
    if (s_has_arg(op, "fail_on"))
        g_object_set(op, "fail_on", VIPS_FAIL_ON_TRUNCATED, NULL);
    if (page > 0) {
        if (!s_has_arg(op, "page")) {
            g_object_unref(op);
            return dm_err(err, "%s: page %d out of range (the file has 1 page)", path, page);
        }
        g_object_set(op, "page", page, NULL);
    }
    if (s_has_arg(op, "dpi"))
        g_object_set(op, "dpi", (double)dpi, NULL);
    if (vips_cache_operation_buildp(&op)) {
        s_vips_msg(vm, sizeof vm);
        vips_object_unref_outputs(VIPS_OBJECT(op));
        g_object_unref(op);
        return dm_err(err, "%s: cannot read image: %s", path, vm);
    }
    VipsImage *img = NULL;
    g_object_get(op, "out", &img, NULL);
    vips_object_unref_outputs(VIPS_OBJECT(op));
    g_object_unref(op);
    if (!img)
        return dm_err(err, "%s: libvips loader returned no image", path);
    *out = img;
    return 0;
}

int image_count_pages(const char *path, int *npages, DmErr *err)
{
    VipsImage *img;
    *npages = 0;
    if (s_open(path, -1, IMAGE_PDF_DPI_DEFAULT, &img, err))
        return -1;
    int n = vips_image_get_n_pages(img);
    g_object_unref(img);
    *npages = n > 0 ? n : 1;
    return 0;
}

/* PIL's CMYK -> RGB: v = (255 - K) - C * (255 - K) / 255 with its rounded
 * integer division by 255 ((t >> 8) + t) >> 8, t = a * b + 128. */
static inline uint8_t s_cmyk1(int c, int nk)
{
    int t = c * nk + 128;
    int v = nk - (((t >> 8) + t) >> 8);
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static int s_is_other_colourspace(VipsInterpretation in)
{
    switch (in) {
    case VIPS_INTERPRETATION_LAB:
    case VIPS_INTERPRETATION_LABQ:
    case VIPS_INTERPRETATION_LABS:
    case VIPS_INTERPRETATION_LCH:
    case VIPS_INTERPRETATION_CMC:
    case VIPS_INTERPRETATION_XYZ:
    case VIPS_INTERPRETATION_YXY:
    case VIPS_INTERPRETATION_HSV:
    case VIPS_INTERPRETATION_scRGB: return 1;
    default: return 0;
    }
}

/* Decode `in` (takes the reference) and convert it to 8-bit RGB. */
static int s_to_rgb8(const char *path, VipsImage *in, DmImage *out, DmErr *err)
{
    char vm[512];
    VipsImage *t = in, *t2 = NULL;
    VipsInterpretation interp = vips_image_get_interpretation(t);
    int w = vips_image_get_width(t), h = vips_image_get_height(t);
    if (w <= 0 || h <= 0 || (int64_t)w * h > S_MAX_PIXELS) {
        g_object_unref(t);
        return dm_err(err, "%s: image size %dx%d is empty or too large", path, w, h);
    }
    if (s_is_other_colourspace(interp)) {
        if (vips_colourspace(t, &t2, VIPS_INTERPRETATION_sRGB, NULL))
            goto vips_fail;
        g_object_unref(t);
        t = t2;
        interp = VIPS_INTERPRETATION_sRGB;
    }
    VipsBandFormat fmt = vips_image_get_format(t);
    int shift16 = fmt == VIPS_FORMAT_USHORT;
    if (!shift16 && fmt != VIPS_FORMAT_UCHAR) {
        if (vips_cast(t, &t2, VIPS_FORMAT_UCHAR, NULL))
            goto vips_fail;
        g_object_unref(t);
        t = t2;
    }
    int bands = vips_image_get_bands(t);
    int cmyk = interp == VIPS_INTERPRETATION_CMYK && bands >= 4;
    size_t size = 0;
    /* This is where the pixels are decoded, so corrupt data fails here. */
    void *mem = vips_image_write_to_memory(t, &size);
    g_object_unref(t);
    t = NULL;
    if (!mem)
        return dm_err(err, "%s: cannot decode image: %s", path, s_vips_msg(vm, sizeof vm));
    size_t np = (size_t)w * (size_t)h;
    if (size != np * (size_t)bands * (shift16 ? 2 : 1)) {
        g_free(mem);
        return dm_err(err, "%s: libvips returned %zu bytes for %dx%dx%d", path, size, w, h, bands);
    }
    if (image_alloc(out, w, h, err)) {
        g_free(mem);
        return dm_err_prefix(err, "%s", path);
    }
    const uint8_t *s8 = mem;
    const uint16_t *s16 = mem;
    uint8_t *d = out->rgb;
    for (size_t i = 0; i < np; i++, d += 3) {
        int v[4];
        int nb = bands < 4 ? bands : 4;
        for (int b = 0; b < nb; b++)
            v[b] = shift16 ? s16[i * bands + b] >> 8 : s8[i * bands + b];
        if (cmyk) {
            int nk = 255 - v[3];
            d[0] = s_cmyk1(v[0], nk);
            d[1] = s_cmyk1(v[1], nk);
            d[2] = s_cmyk1(v[2], nk);
        } else if (bands < 3) { /* grey or grey + alpha */
            d[0] = d[1] = d[2] = (uint8_t)v[0];
        } else { /* RGB, alpha dropped */
            d[0] = (uint8_t)v[0];
            d[1] = (uint8_t)v[1];
            d[2] = (uint8_t)v[2];
        }
    }
    g_free(mem);
    return 0;

vips_fail:
    g_object_unref(t);
    return dm_err(err, "%s: cannot convert image to RGB: %s", path, s_vips_msg(vm, sizeof vm));
}

int image_load_page(const char *path, int page, int pdf_dpi, DmImage *out, DmErr *err)
{
    int npages;
    out->w = out->h = 0;
    out->rgb = NULL;
    if (page < 0)
        return dm_err(err, "%s: page %d out of range (pages count from 0)", path ? path : "", page);
    if (pdf_dpi < 1 || pdf_dpi > S_MAX_DPI)
        return dm_err(err, "%s: dpi %d out of range 1..%d", path ? path : "", pdf_dpi, S_MAX_DPI);
    /* Count first: libvips' own message for a page past the end varies by
     * loader, and a header read is cheap (decoding is lazy). */
    if (image_count_pages(path, &npages, err))
        return -1;
    if (page >= npages)
        return dm_err(err, "%s: page %d out of range (the file has %d page%s)", path, page, npages,
                      npages == 1 ? "" : "s");
    VipsImage *img;
    if (s_open(path, page, pdf_dpi, &img, err))
        return -1;
    if (s_check_size(path, page, pdf_dpi, img, err)) {
        g_object_unref(img);
        return -1;
    }
    return s_to_rgb8(path, img, out, err);
}
