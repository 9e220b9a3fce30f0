/* augment.c - seeded page augmentation with libvips (see augment.h). */
#include "worker/image/augment.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vips/vips.h>

#include "worker/image/image.h"

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
    char line[300];
    image_vips_error(line, sizeof line);
    return dm_err(err, "augment: %s: %s", what, line[0] ? line : "libvips failed");
}

static inline uint8_t s_u8(double v)
{
    return (uint8_t)(v <= 0 ? 0 : v >= 255 ? 255 : (int)(v + 0.5));
}

/* Rotation and scaling about the centre, bilinear, white outside: output
 * pixel centre (X, Y) takes the input at M^-1 ((X, Y) - c) + c, M = scale
 * times the rotation by angle. */
static void s_affine(const uint8_t *in, uint8_t *out, int w, int h, int nb, double angle, double scale)
{
    double r = angle * M_PI / 180, c = cos(r) / scale, s = sin(r) / scale;
    double cx = w / 2.0, cy = h / 2.0;
    for (int Y = 0; Y < h; Y++) {
        double dy = Y + 0.5 - cy, dx = 0.5 - cx;
        double ix = cx + c * dx + s * dy - 0.5, iy = cy - s * dx + c * dy - 0.5;
        uint8_t *o = out + (size_t)Y * w * nb;
        for (int X = 0; X < w; X++, ix += c, iy -= s, o += nb) {
            int x0 = (int)floor(ix), y0 = (int)floor(iy);
            double fx = ix - x0, fy = iy - y0;
            double w00 = (1 - fx) * (1 - fy), w01 = fx * (1 - fy), w10 = (1 - fx) * fy, w11 = fx * fy;
            if (x0 >= 0 && y0 >= 0 && x0 + 1 < w && y0 + 1 < h) {
                const uint8_t *p = in + ((size_t)y0 * w + x0) * nb, *q = p + (size_t)w * nb;
                for (int b = 0; b < nb; b++)
                    o[b] = s_u8(w00 * p[b] + w01 * p[nb + b] + w10 * q[b] + w11 * q[nb + b]);
                continue;
            }
            for (int b = 0; b < nb; b++) { /* at the edge: white outside */
                double v = 0;
                for (int k = 0; k < 4; k++) {
                    int x = x0 + (k & 1), y = y0 + (k >> 1);
                    double wk = k == 0 ? w00 : k == 1 ? w01 : k == 2 ? w10 : w11;
                    v += wk * (x >= 0 && x < w && y >= 0 && y < h ? in[((size_t)y * w + x) * nb + b] : 255.0);
                }
                o[b] = s_u8(v);
            }
        }
    }
}

/* Separable Gaussian blur, edges clamped. */
static int s_blur(uint8_t *px, int w, int h, int nb, double sigma)
{
    int rad = (int)ceil(3 * sigma);
    if (rad > 31)
        rad = 31;
    float k[64];
    double sum = 0;
    for (int i = -rad; i <= rad; i++)
        sum += exp(-0.5 * i * i / (sigma * sigma));
    for (int i = -rad; i <= rad; i++)
        k[i + rad] = (float)(exp(-0.5 * i * i / (sigma * sigma)) / sum);
    size_t row = (size_t)w * nb;
    float *tmp = malloc(row * h * sizeof *tmp);
    if (!tmp)
        return -1;
    for (int y = 0; y < h; y++) { /* along rows */
        const uint8_t *src = px + y * row;
        float *dst = tmp + y * row;
        for (int x = 0; x < w; x++)
            for (int b = 0; b < nb; b++) {
                float v = 0;
                if (x >= rad && x + rad < w) {
                    const uint8_t *p = src + (size_t)(x - rad) * nb + b;
                    for (int i = 0; i <= 2 * rad; i++)
                        v += k[i] * p[(size_t)i * nb];
                } else {
                    for (int i = -rad; i <= rad; i++) {
                        int xx = x + i < 0 ? 0 : x + i >= w ? w - 1 : x + i;
                        v += k[i + rad] * src[(size_t)xx * nb + b];
                    }
                }
                dst[(size_t)x * nb + b] = v;
            }
    }
    for (int y = 0; y < h; y++) { /* along columns, a row at a time */
        uint8_t *dst = px + y * row;
        for (size_t j = 0; j < row; j++) {
            float v = 0;
            for (int i = -rad; i <= rad; i++) {
                int yy = y + i < 0 ? 0 : y + i >= h ? h - 1 : y + i;
                v += k[i + rad] * tmp[yy * row + j];
            }
            dst[j] = s_u8(v);
        }
    }
    free(tmp);
    return 0;
}

/* JPEG compression and back, through libvips. */
static int s_jpeg(uint8_t *px, int w, int h, int nb, int quality, DmErr *err)
{
    if (image_vips_init(err))
        return -1;
    size_t n = (size_t)w * h * nb;
    VipsImage *in = vips_image_new_from_memory(px, n, w, h, nb, VIPS_FORMAT_UCHAR);
    if (!in)
        return s_fail(err, "jpeg");
    void *buf = NULL;
    size_t len = 0;
    int rc = vips_jpegsave_buffer(in, &buf, &len, "Q", quality, "strip", TRUE, NULL);
    g_object_unref(in);
    if (rc)
        return s_fail(err, "jpeg");
    VipsImage *j = NULL;
    rc = vips_jpegload_buffer(buf, len, &j, NULL);
    void *mem = NULL;
    size_t got = 0;
    if (!rc) {
        mem = vips_image_write_to_memory(j, &got);
        g_object_unref(j);
    }
    g_free(buf);
    if (rc || !mem)
        return s_fail(err, "jpeg");
    if (got != n) {
        g_free(mem);
        return dm_err(err, "augment: jpeg: the page came back in another shape");
    }
    memcpy(px, mem, n);
    g_free(mem);
    return 0;
}

int image_augment_pixels(uint8_t *px, int w, int h, int bands, const ImageAugment *a, uint64_t seed, DmErr *err)
{
    if (w < 1 || h < 1 || (bands != 1 && bands != 3))
        return dm_err(err, "augment: a %dx%d page of %d bands (expected 1 or 3)", w, h, bands);
    ImageAugmentDraw d;
    image_augment_draw(a, seed, &d);
    size_t n = (size_t)w * h * bands;
    if (d.angle != 0 || d.scale != 1) {
        uint8_t *in = malloc(n);
        if (!in)
            return dm_err(err, "augment: out of memory");
        memcpy(in, px, n);
        s_affine(in, px, w, h, bands, d.angle, d.scale);
        free(in);
    }
    if (d.sigma > 0 && s_blur(px, w, h, bands, d.sigma))
        return dm_err(err, "augment: out of memory");
    if (d.quality > 0 && s_jpeg(px, w, h, bands, d.quality, err))
        return -1;
    return 0;
}

int image_augment(DmImage *im, const ImageAugment *a, uint64_t seed, DmErr *err)
{
    if (!image_augment_active(a))
        return 0;
    return image_augment_pixels(im->rgb, im->w, im->h, 3, a, seed, err);
}
