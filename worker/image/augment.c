/* augment.c - seeded page augmentation with libvips (see augment.h). */
#include "worker/image/augment.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vips/vips.h>

static uint64_t s_mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double s_unit(uint64_t *s)
{
    return (double)(s_mix(s) >> 11) * (1.0 / 9007199254740992.0);
}

int image_augment_active(const ImageAugment *a)
{
    return a->rotate > 0 || a->scale > 0 || a->blur > 0 || a->jpeg > 0;
}

int image_augment_parse(const char *spec, ImageAugment *a, DmErr *err)
{
    memset(a, 0, sizeof *a);
    if (!strcmp(spec, "none"))
        return 0;
    if (!strcmp(spec, "default")) {
        *a = (ImageAugment){1.5, 0.04, 0.8, 50};
        return 0;
    }
    char buf[256];
    if (strlen(spec) >= sizeof buf || !*spec)
        return dm_err(err, "augment \"%s\": expected default, none or rotate=,scale=,blur=,jpeg=", spec);
    strcpy(buf, spec);
    for (char *save = NULL, *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '='), *end;
        if (!eq)
            return dm_err(err, "augment: \"%s\": expected NAME=VALUE", item);
        *eq = '\0';
        double v = strtod(eq + 1, &end);
        if (end == eq + 1 || *end || !isfinite(v) || v < 0)
            return dm_err(err, "augment: %s=%s: expected a non-negative number", item, eq + 1);
        if (!strcmp(item, "rotate") && v <= 45)
            a->rotate = v;
        else if (!strcmp(item, "scale") && v <= 0.5)
            a->scale = v;
        else if (!strcmp(item, "blur") && v <= 10)
            a->blur = v;
        else if (!strcmp(item, "jpeg") && v <= 95 && v == floor(v))
            a->jpeg = (int)v;
        else if (!strcmp(item, "rotate") || !strcmp(item, "scale") || !strcmp(item, "blur") ||
                 !strcmp(item, "jpeg"))
            return dm_err(err, "augment: %s=%s out of range (rotate 0..45, scale 0..0.5, blur 0..10, "
                               "jpeg an integer 0..95)", item, eq + 1);
        else
            return dm_err(err, "augment: unknown item \"%s\" (rotate, scale, blur, jpeg)", item);
    }
    return 0;
}

void image_augment_draw(const ImageAugment *a, uint64_t seed, ImageAugmentDraw *d)
{
    uint64_t s = seed ^ 0x6a09e667f3bcc909ULL;
    s_mix(&s);
    /* four draws always, so each parameter depends on the seed alone */
    double u0 = s_unit(&s), u1 = s_unit(&s), u2 = s_unit(&s), u3 = s_unit(&s);
    d->angle = a->rotate * (2 * u0 - 1);
    d->scale = 1 + a->scale * (2 * u1 - 1);
    d->sigma = a->blur * u2;
    if (d->sigma < 0.3)
        d->sigma = 0;
    d->quality = a->jpeg > 0 ? a->jpeg + (int)floor(u3 * (96 - a->jpeg)) : 0;
    if (d->quality > 95)
        d->quality = 95;
}

static int s_fail(DmErr *err, const char *what)
{
    const char *m = vips_error_buffer();
    char line[300];
    size_t i = 0;
    while (m[i] && m[i] != '\n' && i + 1 < sizeof line) {
        line[i] = m[i];
        i++;
    }
    line[i] = '\0';
    vips_error_clear();
    return dm_err(err, "augment: %s: %s", what, line[0] ? line : "libvips failed");
}

/* Replace *img by out (taking it over). */
static void s_swap(VipsImage **img, VipsImage *out)
{
    g_object_unref(*img);
    *img = out;
}

int image_augment_vips(void *vin, const ImageAugment *a, uint64_t seed, void **vout, DmErr *err)
{
    VipsImage *img = vin, *t = NULL;
    *vout = NULL;
    ImageAugmentDraw d;
    image_augment_draw(a, seed, &d);
    g_object_ref(img);
    int W = vips_image_get_width(img), H = vips_image_get_height(img);
    int bands = vips_image_get_bands(img);
    if (d.angle != 0 || d.scale != 1) {
        /* Output pixel (X, Y) = M (x - cx, y - cy) + (cx, cy): rotation
         * and scaling about the centre, white where the page was not. */
        double r = d.angle * M_PI / 180, c = cos(r) * d.scale, s = sin(r) * d.scale;
        double cx = W / 2.0, cy = H / 2.0;
        double white[3] = {255, 255, 255};
        VipsArrayDouble *bg = vips_array_double_new(white, bands);
        VipsArrayInt *area = vips_array_int_newv(4, 0, 0, W, H);
        VipsInterpolate *bil = vips_interpolate_new("bilinear");
        int rc = vips_affine(img, &t, c, -s, s, c, "oarea", area, "idx", -cx, "idy", -cy, "odx", cx,
                             "ody", cy, "background", bg, "extend", VIPS_EXTEND_BACKGROUND,
                             "interpolate", bil, NULL);
        vips_area_unref(VIPS_AREA(bg));
        vips_area_unref(VIPS_AREA(area));
        g_object_unref(bil);
        if (rc) {
            g_object_unref(img);
            return s_fail(err, "rotate");
        }
        s_swap(&img, t);
        if (vips_cast(img, &t, VIPS_FORMAT_UCHAR, NULL)) {
            g_object_unref(img);
            return s_fail(err, "cast");
        }
        s_swap(&img, t);
    }
    if (d.sigma > 0) {
        if (vips_gaussblur(img, &t, d.sigma, "precision", VIPS_PRECISION_INTEGER, NULL)) {
            g_object_unref(img);
            return s_fail(err, "blur");
        }
        s_swap(&img, t);
    }
    if (d.quality > 0) {
        void *buf = NULL;
        size_t len = 0;
        if (vips_jpegsave_buffer(img, &buf, &len, "Q", d.quality, "strip", TRUE, NULL)) {
            g_object_unref(img);
            return s_fail(err, "jpeg");
        }
        g_object_unref(img);
        img = NULL;
        VipsImage *j = NULL;
        int rc = vips_jpegload_buffer(buf, len, &j, NULL);
        if (!rc) { /* decode now, so the buffer can go */
            rc = (img = vips_image_copy_memory(j)) == NULL;
            g_object_unref(j);
        }
        g_free(buf);
        if (rc)
            return s_fail(err, "jpeg");
    }
    *vout = img;
    return 0;
}

int image_augment(DmImage *im, const ImageAugment *a, uint64_t seed, DmErr *err)
{
    if (!image_augment_active(a))
        return 0;
    if (image_vips_init(err))
        return -1;
    VipsImage *in = vips_image_new_from_memory(im->rgb, (size_t)im->w * im->h * 3, im->w, im->h, 3,
                                               VIPS_FORMAT_UCHAR);
    if (!in)
        return s_fail(err, "wrap");
    void *vout = NULL;
    int rc = image_augment_vips(in, a, seed, &vout, err);
    g_object_unref(in);
    if (rc)
        return -1;
    VipsImage *out = vout;
    size_t len = 0;
    void *mem = vips_image_write_to_memory(out, &len);
    g_object_unref(out);
    if (!mem)
        return s_fail(err, "write");
    if (len != (size_t)im->w * im->h * 3) {
        g_free(mem);
        return dm_err(err, "augment: the page changed size");
    }
    memcpy(im->rgb, mem, len);
    g_free(mem);
    return 0;
}
