/* test_image.c - page loading (every format, every page, bad input) and
 * the Donut image processor against Pillow 9.4.0 / transformers 4.30:
 * the golden tiny-a images, and data/images/pil_ref.safetensors made by
 * data/images/gen_pil_ref.py (resize with every filter, reduce, reducing
 * gap, whole-processor runs with other configs, PIL's convert("RGB")).
 * Everything is compared bit for bit; the max differences are printed. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vips/vips.h>

#include "coordinator/cli/commands.h"
#include "worker/image/image.h"
#include "worker/image/preprocess.h"
#include "tutil.h"

#define S_IMG "data/images"
#define S_REF S_IMG "/pil_ref.safetensors"

/* ---------------------------------------------------------------- */
/* helpers */

static TensorFile *s_open_ref(const char *path)
{
    TensorFile *tf = NULL;
    DmErr err = {{0}};
    if (tensorfile_open(path, &tf, &err)) {
        fprintf(stderr, "\n  %s\n", err.msg);
        return NULL;
    }
    return tf;
}

/* A uint8 [h, w, 3] reference tensor as an image view (not owned). */
static int s_ref_image(const TensorFile *tf, const char *name, DmImage *view)
{
    const DmTensor *t = tensorfile_find(tf, name);
    view->w = view->h = 0;
    view->rgb = NULL;
    if (!t || t->dtype != DM_U8 || t->ndim != 3 || t->shape[2] != 3) {
        fprintf(stderr, "\n  reference tensor %s missing or not uint8 [h, w, 3]\n", name);
        return -1;
    }
    view->h = (int)t->shape[0];
    view->w = (int)t->shape[1];
    view->rgb = (uint8_t *)t->data;
    return 0;
}

/* Max |a - b| over two images of the same size, or -1 if sizes differ. */
static int s_img_maxdiff(const DmImage *a, const DmImage *b)
{
    if (a->w != b->w || a->h != b->h) {
        fprintf(stderr, "\n  size %dx%d, expected %dx%d\n", a->w, a->h, b->w, b->h);
        return -1;
    }
    int m = 0;
    for (size_t i = 0; i < (size_t)a->w * a->h * 3; i++) {
        int d = abs((int)a->rgb[i] - (int)b->rgb[i]);
        if (d > m)
            m = d;
    }
    return m;
}

static char *s_tmpdir(void)
{
    char tmpl[] = "/tmp/docmint-image-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

static void s_rmdir(char *dir)
{
    char cmd[600];
    if (!dir)
        return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "\n  could not remove %s\n", dir);
    free(dir);
}

static int s_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = n ? fwrite(data, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static void *s_read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(len > 0 ? (size_t)len : 1);
    *n = fread(p, 1, (size_t)len, f);
    fclose(f);
    return p;
}

/* ---------------------------------------------------------------- */
/* loading: formats and modes against PIL's convert("RGB") */

static void test_load_formats(void)
{
    static const char *files[] = {"rgb.png",  "grey.png", "rgba.png",  "la.png",
                                  "pal.png",  "bw.png",   "rgb.jpg",   "grey.jpg",
                                  "cmyk.jpg", "cmyk.tif", "grey16.png"};
    TensorFile *ref = s_open_ref(S_REF);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
    int worst = 0;
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char path[256], name[128];
        snprintf(path, sizeof path, S_IMG "/%s", files[i]);
        snprintf(name, sizeof name, "load.%s", files[i]);
        DmErr err = {{0}};
        DmImage img, want;
        int np = 0;
        CU_ASSERT_EQUAL(image_count_pages(path, &np, &err), 0);
        CU_ASSERT_EQUAL(np, 1);
        if (image_load_page(path, 0, IMAGE_PDF_DPI_DEFAULT, &img, &err)) {
            fprintf(stderr, "\n  %s\n", err.msg);
            CU_FAIL("image_load_page");
            continue;
        }
        CU_ASSERT_EQUAL_FATAL(s_ref_image(ref, name, &want), 0);
        int d = s_img_maxdiff(&img, &want);
        if (d != 0)
            fprintf(stderr, "\n  %s: max |diff| %d vs PIL convert(\"RGB\")\n", files[i], d);
        CU_ASSERT_EQUAL(d, 0);
        if (d > worst)
            worst = d;
        image_free(&img);
    }
    printf("\n    loader vs PIL convert(\"RGB\"), %zu files: max |diff| %d ",
           sizeof files / sizeof *files, worst);
    tensorfile_close(&ref);
}

static void test_load_multipage_tiff(void)
{
    const char *path = S_IMG "/multi.tif";
    TensorFile *ref = s_open_ref(S_REF);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
    DmErr err = {{0}};
    int np = 0;
    CU_ASSERT_EQUAL_FATAL(image_count_pages(path, &np, &err), 0);
    CU_ASSERT_EQUAL(np, 3);
    for (int p = 0; p < np; p++) {
        char name[64];
        snprintf(name, sizeof name, "load.multi.tif.p%d", p);
        DmImage img, want;
        CU_ASSERT_EQUAL_FATAL(image_load_page(path, p, IMAGE_PDF_DPI_DEFAULT, &img, &err), 0);
        CU_ASSERT_EQUAL_FATAL(s_ref_image(ref, name, &want), 0);
        CU_ASSERT_EQUAL(s_img_maxdiff(&img, &want), 0);
        image_free(&img);
    }
    DmImage img;
    CU_ASSERT_EQUAL(image_load_page(path, 3, IMAGE_PDF_DPI_DEFAULT, &img, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "out of range"));
    CU_ASSERT_PTR_NULL(img.rgb);
    tensorfile_close(&ref);
}

/* 16-bit RGB (PIL cannot write it): written with libvips here; expected
 * is the high byte of every sample. */
static void test_load_rgb16(void)
{
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(image_vips_init(&err), 0);
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    enum { W = 13, H = 7 };
    static uint16_t px[H * W * 3];
    uint32_t seed = 12345;
    for (int i = 0; i < H * W * 3; i++) {
        seed = seed * 1103515245u + 12345u;
        px[i] = (uint16_t)(seed >> 8);
    }
    VipsImage *v = vips_image_new_from_memory(px, sizeof px, W, H, 3, VIPS_FORMAT_USHORT);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    v->Type = VIPS_INTERPRETATION_RGB16;
    char path[600];
    snprintf(path, sizeof path, "%s/rgb16.png", dir);
    CU_ASSERT_EQUAL_FATAL(vips_pngsave(v, path, "bitdepth", 16, NULL), 0);
    g_object_unref(v);
    DmImage img;
    CU_ASSERT_EQUAL_FATAL(image_load_page(path, 0, IMAGE_PDF_DPI_DEFAULT, &img, &err), 0);
    CU_ASSERT_EQUAL(img.w, W);
    CU_ASSERT_EQUAL(img.h, H);
    int bad = 0;
    for (int i = 0; i < H * W * 3; i++)
        bad += img.rgb[i] != (px[i] >> 8);
    CU_ASSERT_EQUAL(bad, 0);
    image_free(&img);
    s_rmdir(dir);
}

/* A hand-written PDF: page 0 is 72x36 pt (1 x 0.5 inch), left half red,
 * right half blue; page 1 is 36x72 pt, all green.  Returns 0 on success. */
static int s_write_pdf(const char *path)
{
    static const char *content[2] = {"1 0 0 rg 0 0 36 36 re f 0 0 1 rg 36 0 36 36 re f\n",
                                     "0 1 0 rg 0 0 36 72 re f\n"};
    char buf[4096];
    long off[8];
    int n = 0;
    n += snprintf(buf + n, sizeof buf - n, "%%PDF-1.4\n");
    off[1] = n;
    n += snprintf(buf + n, sizeof buf - n, "1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n");
    off[2] = n;
    n += snprintf(buf + n, sizeof buf - n,
                  "2 0 obj\n<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>\nendobj\n");
    off[3] = n;
    n += snprintf(buf + n, sizeof buf - n,
                  "3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 72 36] /Contents 5 0 R "
                  "/Resources << >> >>\nendobj\n");
    off[4] = n;
    n += snprintf(buf + n, sizeof buf - n,
                  "4 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 36 72] /Contents 6 0 R "
                  "/Resources << >> >>\nendobj\n");
    for (int i = 0; i < 2; i++) {
        off[5 + i] = n;
        n += snprintf(buf + n, sizeof buf - n,
                      "%d 0 obj\n<< /Length %zu >>\nstream\n%sendstream\nendobj\n", 5 + i,
                      strlen(content[i]), content[i]);
    }
    long xref = n;
    n += snprintf(buf + n, sizeof buf - n, "xref\n0 7\n0000000000 65535 f \n");
    for (int i = 1; i <= 6; i++)
        n += snprintf(buf + n, sizeof buf - n, "%010ld 00000 n \n", off[i]);
    n += snprintf(buf + n, sizeof buf - n,
                  "trailer\n<< /Size 7 /Root 1 0 R >>\nstartxref\n%ld\n%%%%EOF\n", xref);
    return s_write_file(path, buf, (size_t)n);
}

static int s_near(const uint8_t *p, int r, int g, int b, int tol)
{
    return abs(p[0] - r) <= tol && abs(p[1] - g) <= tol && abs(p[2] - b) <= tol;
}

static void test_load_pdf(void)
{
    if (!image_pdf_supported()) {
        printf("\n    SKIPPED: this libvips has no pdfload (on Debian it comes with libvips42's "
               "poppler module, needs libpoppler-glib8) ");
        return;
    }
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    char path[600];
    snprintf(path, sizeof path, "%s/two.pdf", dir);
    CU_ASSERT_EQUAL_FATAL(s_write_pdf(path), 0);
    DmErr err = {{0}};
    int np = 0;
    CU_ASSERT_EQUAL_FATAL(image_count_pages(path, &np, &err), 0);
    CU_ASSERT_EQUAL(np, 2);
    DmImage img;
    /* 1 x 0.5 inch at 200 dpi (the default) and at 100 dpi. */
    CU_ASSERT_EQUAL_FATAL(image_load_page(path, 0, IMAGE_PDF_DPI_DEFAULT, &img, &err), 0);
    CU_ASSERT_EQUAL(img.w, 200);
    CU_ASSERT_EQUAL(img.h, 100);
    CU_ASSERT(s_near(img.rgb + ((size_t)50 * img.w + 50) * 3, 255, 0, 0, 2));
    CU_ASSERT(s_near(img.rgb + ((size_t)50 * img.w + 150) * 3, 0, 0, 255, 2));
    image_free(&img);
    CU_ASSERT_EQUAL_FATAL(image_load_page(path, 1, 100, &img, &err), 0);
    CU_ASSERT_EQUAL(img.w, 50);
    CU_ASSERT_EQUAL(img.h, 100);
    CU_ASSERT(s_near(img.rgb + ((size_t)50 * img.w + 25) * 3, 0, 255, 0, 2));
    image_free(&img);
    CU_ASSERT_EQUAL(image_load_page(path, 2, 100, &img, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "2 pages"));
    CU_ASSERT_EQUAL(image_load_page(path, 0, 0, &img, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "dpi"));
    s_rmdir(dir);
}

/* Every failure names the file, in one line. */
static void s_expect_fail(const char *path, int page, const char *what)
{
    DmErr err = {{0}};
    DmImage img = {1, 1, (uint8_t *)"x"};
    int rc = image_load_page(path, page, IMAGE_PDF_DPI_DEFAULT, &img, &err);
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_PTR_NULL(img.rgb);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
    CU_ASSERT_PTR_NULL(strchr(err.msg, '\n'));
    if (what && !strstr(err.msg, what)) {
        fprintf(stderr, "\n  expected '%s' in: %s\n", what, err.msg);
        CU_FAIL("error text");
    }
    if (rc == 0)
        image_free(&img);
}

static void test_load_bad_input(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    char p[600];

    snprintf(p, sizeof p, "%s/missing.png", dir);
    s_expect_fail(p, 0, "No such file");
    int np = 7;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(image_count_pages(p, &np, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, p));

    snprintf(p, sizeof p, "%s/empty.png", dir);
    CU_ASSERT_EQUAL_FATAL(s_write_file(p, "", 0), 0);
    s_expect_fail(p, 0, "empty");

    snprintf(p, sizeof p, "%s/garbage.png", dir);
    CU_ASSERT_EQUAL_FATAL(s_write_file(p, "this is not an image at all\n", 28), 0);
    s_expect_fail(p, 0, NULL);

    /* A named pipe with no writer and a device: refused by name, never
     * read (a read of the pipe would block for ever; the alarm turns a
     * regression into a failure instead of a hang). */
    snprintf(p, sizeof p, "%s/pipe.png", dir);
    CU_ASSERT_EQUAL_FATAL(mkfifo(p, 0600), 0);
    alarm(60);
    s_expect_fail(p, 0, "named pipe");
    CU_ASSERT_EQUAL(image_count_pages(p, &np, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a regular file"));
    s_expect_fail("/dev/zero", 0, "character device");
    alarm(0);
    unlink(p);

    /* A real PNG and JPEG cut in half: the header parses, the pixels do not. */
    static const char *whole[] = {S_IMG "/rgb.png", S_IMG "/rgb.jpg", S_IMG "/multi.tif"};
    static const char *cut[] = {"cut.png", "cut.jpg", "cut.tif"};
    for (int i = 0; i < 3; i++) {
        size_t n = 0;
        void *data = s_read_file(whole[i], &n);
        CU_ASSERT_PTR_NOT_NULL_FATAL(data);
        snprintf(p, sizeof p, "%s/%s", dir, cut[i]);
        CU_ASSERT_EQUAL_FATAL(s_write_file(p, data, n / 2), 0);
        free(data);
        s_expect_fail(p, 0, NULL);
    }

    /* A PNG whose signature is right and the rest garbage. */
    snprintf(p, sizeof p, "%s/badbody.png", dir);
    static const unsigned char sig[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 1, 2, 3, 4, 5};
    CU_ASSERT_EQUAL_FATAL(s_write_file(p, sig, sizeof sig), 0);
    s_expect_fail(p, 0, NULL);

    s_expect_fail(S_IMG "/rgb.png", 1, "out of range");
    s_expect_fail(S_IMG "/rgb.png", -1, "out of range");
    s_expect_fail(dir, 0, "directory");
    s_rmdir(dir);
}

/* ---------------------------------------------------------------- */
/* the processor against the golden tiny-a data (transformers 4.30) */

static json_t *s_golden_geometry(int k)
{
    json_error_t je;
    json_t *root = json_load_file(TU_TINY "/cases.json", 0, &je);
    if (!root)
        return NULL;
    json_t *img =
        json_array_get(json_object_get(json_object_get(root, "preprocess"), "images"), (size_t)k);
    if (img)
        json_incref(img);
    json_decref(root);
    return img;
}

static int s_jint(json_t *o, const char *key)
{
    return (int)json_integer_value(json_object_get(o, key));
}

static int s_jint2(json_t *o, const char *key, int i)
{
    return (int)json_integer_value(json_array_get(json_object_get(o, key), (size_t)i));
}

/* Tensor data may sit at any offset in the file: copy before reading floats. */
static double s_f32_maxdiff(const float *a, const DmTensor *t, size_t n)
{
    if (!t || t->dtype != DM_F32 || (size_t)dm_tensor_numel(t) != n)
        return INFINITY;
    float *b = malloc(n * sizeof *b);
    memcpy(b, t->data, n * sizeof *b);
    double d = tu_maxdiff(a, b, n);
    free(b);
    return d;
}

/* Decompression bombs (tests/data/bombs, sizes from their headers): refused
 * before decoding, the message naming the file, the size and the limit;
 * under a higher limit (or a lower dpi) the same page loads. */
static void test_bombs(void)
{
    DmErr err = {{0}};
    DmImage img = {0, 0, NULL};
    CU_ASSERT_EQUAL(image_max_pixels(), IMAGE_MAX_PIXELS_DEFAULT);
    const char *wide = "data/bombs/wide.png", *small = "data/bombs/4mp.png", *pdf = "data/bombs/huge_page.pdf";
    CU_ASSERT_EQUAL(image_load_page(wide, 0, IMAGE_PDF_DPI_DEFAULT, &img, &err), -1);
    CU_ASSERT_PTR_NULL(img.rgb);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, wide));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "12000x12000 = 144000000 pixels"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "limit of 50000000"));
    /* 2000 x 2000: loads under the default, refused under 1,000,000 */
    CU_ASSERT_EQUAL_FATAL(image_load_page(small, 0, IMAGE_PDF_DPI_DEFAULT, &img, &err), 0);
    CU_ASSERT(img.w == 2000 && img.h == 2000 && img.rgb[0] == 0);
    image_free(&img);
    image_set_max_pixels(1000000);
    CU_ASSERT_EQUAL(image_load_page(small, 0, IMAGE_PDF_DPI_DEFAULT, &img, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "2000x2000 = 4000000 pixels"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "limit of 1000000"));
    image_set_max_pixels(0);
    CU_ASSERT_EQUAL(image_max_pixels(), IMAGE_MAX_PIXELS_DEFAULT);
    if (image_pdf_supported()) {
        /* 14400 pt = 200 in: 40000 px at 200 dpi, 2000 px at 10 dpi */
        CU_ASSERT_EQUAL(image_load_page(pdf, 0, 200, &img, &err), -1);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, pdf));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "at 200 dpi is 40000x40000 = 1600000000 pixels"));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "200.0 x 200.0 inches"));
        CU_ASSERT_EQUAL(image_load_page(pdf, 0, 10, &img, &err), 0);
        CU_ASSERT(img.w == 2000 && img.h == 2000);
        image_free(&img);
    }
}

static void test_golden_tiny_a(void)
{
    PreprocConfig cfg;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(preproc_config_load(TU_TINY "/preprocessor_config.json", &cfg, &err), 0);
    CU_ASSERT_EQUAL(cfg.height, 232);
    CU_ASSERT_EQUAL(cfg.width, 200);
    CU_ASSERT_EQUAL(cfg.resample, PREPROC_BILINEAR);
    TensorFile *gold = s_open_ref(TU_TINY "/preprocess.safetensors");
    CU_ASSERT_PTR_NOT_NULL_FATAL(gold);
    int worst_u8 = 0;
    double worst_pv = 0;
    for (int k = 0; k < 3; k++) {
        json_t *geo = s_golden_geometry(k);
        CU_ASSERT_PTR_NOT_NULL_FATAL(geo);
        char path[256], name[64];
        snprintf(path, sizeof path, TU_TINY "/img%d.png", k);
        DmImage img;
        CU_ASSERT_EQUAL_FATAL(image_load_page(path, 0, IMAGE_PDF_DPI_DEFAULT, &img, &err), 0);
        CU_ASSERT_EQUAL(img.w, s_jint(geo, "width"));
        CU_ASSERT_EQUAL(img.h, s_jint(geo, "height"));

        PreprocGeometry g;
        CU_ASSERT_EQUAL_FATAL(preproc_geometry(&cfg, img.w, img.h, &g, &err), 0);
        CU_ASSERT_EQUAL(g.resized_h, s_jint2(geo, "resized_hw", 0));
        CU_ASSERT_EQUAL(g.resized_w, s_jint2(geo, "resized_hw", 1));
        CU_ASSERT_EQUAL(g.thumb_h, s_jint2(geo, "thumbnail_hw", 0));
        CU_ASSERT_EQUAL(g.thumb_w, s_jint2(geo, "thumbnail_hw", 1));
        CU_ASSERT_EQUAL(g.pad_top, s_jint(geo, "pad_top"));
        CU_ASSERT_EQUAL(g.pad_bottom, s_jint(geo, "pad_bottom"));
        CU_ASSERT_EQUAL(g.pad_left, s_jint(geo, "pad_left"));
        CU_ASSERT_EQUAL(g.pad_right, s_jint(geo, "pad_right"));
        CU_ASSERT_EQUAL(g.out_h, 232);
        CU_ASSERT_EQUAL(g.out_w, 200);
        json_decref(geo);

        size_t n = (size_t)3 * g.out_h * g.out_w;
        float *pv = malloc(n * sizeof *pv);
        PreprocTrace tr;
        CU_ASSERT_EQUAL_FATAL(preproc_run_trace(&cfg, &img, pv, &tr, &err), 0);
        DmImage want;
        snprintf(name, sizeof name, "img%d.resized_u8", k);
        CU_ASSERT_EQUAL_FATAL(s_ref_image(gold, name, &want), 0);
        int dr = s_img_maxdiff(&tr.resized, &want);
        snprintf(name, sizeof name, "img%d.thumbnail_u8", k);
        CU_ASSERT_EQUAL_FATAL(s_ref_image(gold, name, &want), 0);
        int dt = s_img_maxdiff(&tr.thumbnail, &want);
        snprintf(name, sizeof name, "img%d.pixel_values", k);
        double dp = s_f32_maxdiff(pv, tensorfile_find(gold, name), n);
        printf("\n    img%d: resized_u8 max |diff| %d, thumbnail_u8 %d, pixel_values %.3g ", k, dr,
               dt, dp);
        CU_ASSERT_EQUAL(dr, 0);
        CU_ASSERT_EQUAL(dt, 0);
        CU_ASSERT_EQUAL(dp, 0.0);
        /* preproc_run gives the same floats as the traced run. */
        float *pv2 = malloc(n * sizeof *pv2);
        CU_ASSERT_EQUAL(preproc_run(&cfg, &img, pv2, &err), 0);
        CU_ASSERT_EQUAL(memcmp(pv, pv2, n * sizeof *pv), 0);
        if (dr > worst_u8 || dt > worst_u8)
            worst_u8 = dr > dt ? dr : dt;
        if (dp > worst_pv)
            worst_pv = dp;
        free(pv2);
        free(pv);
        preproc_trace_free(&tr);
        image_free(&img);
    }
    printf("\n    tiny-a: worst uint8 |diff| %d, worst pixel_values |diff| %.3g ", worst_u8,
           worst_pv);
    tensorfile_close(&gold);
}

/* ---------------------------------------------------------------- */
/* resampling primitives against Pillow 9.4.0 */

/* Copy an int32 parameter tensor of n values into dst (at most 8). */
static const int32_t *s_params(const TensorFile *tf, const char *name, int n, int32_t dst[8])
{
    const DmTensor *t = tensorfile_find(tf, name);
    if (!t || t->dtype != DM_I32 || dm_tensor_numel(t) != n || n > 8)
        return NULL;
    memcpy(dst, t->data, (size_t)n * sizeof *dst);
    return dst;
}

static void test_pil_resize(void)
{
    TensorFile *ref = s_open_ref(S_REF);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
    int ncase = 0, worst = 0;
    for (int k = 0;; k++) {
        char name[64];
        snprintf(name, sizeof name, "rs%d.params", k);
        int32_t pb[8];
        const int32_t *p = s_params(ref, name, 5, pb);
        if (!p)
            break;
        DmImage src, want, out;
        snprintf(name, sizeof name, "src%d", p[0]);
        CU_ASSERT_EQUAL_FATAL(s_ref_image(ref, name, &src), 0);
        snprintf(name, sizeof name, "rs%d.out", k);
        CU_ASSERT_EQUAL_FATAL(s_ref_image(ref, name, &want), 0);
        DmErr err = {{0}};
        CU_ASSERT_EQUAL_FATAL(preproc_pil_resize(&src, p[1], p[2], p[3], p[4] / 10.0, &out, &err),
                              0);
        int d = s_img_maxdiff(&out, &want);
        if (d != 0)
            fprintf(stderr, "\n  rs%d: %dx%d -> %dx%d filter %d gap %.1f: max |diff| %d\n", k,
                    src.w, src.h, p[1], p[2], p[3], p[4] / 10.0, d);
        CU_ASSERT_EQUAL(d, 0);
        if (d > worst || d < 0)
            worst = d < 0 ? 999 : d;
        image_free(&out);
        ncase++;
    }
    CU_ASSERT(ncase >= 30);
    for (int k = 0;; k++) {
        char name[64];
        snprintf(name, sizeof name, "rd%d.params", k);
        int32_t pb[8];
        const int32_t *p = s_params(ref, name, 7, pb);
        if (!p)
            break;
        DmImage src, want, out;
        snprintf(name, sizeof name, "src%d", p[0]);
        CU_ASSERT_EQUAL_FATAL(s_ref_image(ref, name, &src), 0);
        snprintf(name, sizeof name, "rd%d.out", k);
        CU_ASSERT_EQUAL_FATAL(s_ref_image(ref, name, &want), 0);
        DmErr err = {{0}};
        int box[4] = {p[3], p[4], p[5], p[6]};
        CU_ASSERT_EQUAL_FATAL(preproc_pil_reduce(&src, p[1], p[2], box, &out, &err), 0);
        int d = s_img_maxdiff(&out, &want);
        if (d != 0)
            fprintf(stderr, "\n  rd%d: reduce %dx%d: max |diff| %d\n", k, p[1], p[2], d);
        CU_ASSERT_EQUAL(d, 0);
        if (d > worst || d < 0)
            worst = d < 0 ? 999 : d;
        image_free(&out);
        ncase++;
    }
    printf("\n    %d resize/reduce cases vs Pillow 9.4.0: max |diff| %d ", ncase, worst);
    /* Unsupported filter and empty sizes are errors. */
    DmImage src, out;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(s_ref_image(ref, "src0", &src), 0);
    CU_ASSERT_EQUAL(preproc_pil_resize(&src, 10, 10, PREPROC_NEAREST, 0, &out, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "NEAREST"));
    CU_ASSERT_EQUAL(preproc_pil_resize(&src, 0, 10, PREPROC_BILINEAR, 0, &out, &err), -1);
    tensorfile_close(&ref);
}

/* Whole-processor runs with other configs (data/images/pipeK.json). */
static void test_pipelines(void)
{
    TensorFile *ref = s_open_ref(S_REF);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
    int n = 0, worst_u8 = 0;
    double worst_pv = 0;
    for (int k = 0;; k++) {
        char name[64], path[128];
        snprintf(path, sizeof path, S_IMG "/pipe%d.json", k);
        if (access(path, R_OK))
            break;
        PreprocConfig cfg;
        DmErr err = {{0}};
        CU_ASSERT_EQUAL_FATAL(preproc_config_load(path, &cfg, &err), 0);
        DmImage in, want_r, want_t;
        snprintf(name, sizeof name, "pipe%d.input", k);
        CU_ASSERT_EQUAL_FATAL(s_ref_image(ref, name, &in), 0);
        snprintf(name, sizeof name, "pipe%d.resized_u8", k);
        CU_ASSERT_EQUAL_FATAL(s_ref_image(ref, name, &want_r), 0);
        snprintf(name, sizeof name, "pipe%d.thumbnail_u8", k);
        CU_ASSERT_EQUAL_FATAL(s_ref_image(ref, name, &want_t), 0);
        snprintf(name, sizeof name, "pipe%d.pixel_values", k);
        const DmTensor *tpv = tensorfile_find(ref, name);
        CU_ASSERT_PTR_NOT_NULL_FATAL(tpv);
        PreprocGeometry g;
        CU_ASSERT_EQUAL_FATAL(preproc_geometry(&cfg, in.w, in.h, &g, &err), 0);
        CU_ASSERT_EQUAL(tpv->shape[2], g.out_h);
        CU_ASSERT_EQUAL(tpv->shape[3], g.out_w);
        size_t np = (size_t)3 * g.out_h * g.out_w;
        float *pv = malloc(np * sizeof *pv);
        PreprocTrace tr;
        if (preproc_run_trace(&cfg, &in, pv, &tr, &err)) {
            fprintf(stderr, "\n  pipe%d: %s\n", k, err.msg);
            CU_FAIL("preproc_run_trace");
        } else {
            int dr = s_img_maxdiff(&tr.resized, &want_r);
            int dt = s_img_maxdiff(&tr.thumbnail, &want_t);
            double dp = s_f32_maxdiff(pv, tpv, np);
            if (dr || dt || dp != 0.0)
                fprintf(stderr, "\n  pipe%d: resized %d thumbnail %d pixel_values %g\n", k, dr, dt,
                        dp);
            CU_ASSERT_EQUAL(dr, 0);
            CU_ASSERT_EQUAL(dt, 0);
            CU_ASSERT_EQUAL(dp, 0.0);
            worst_u8 = dr > worst_u8 ? dr : worst_u8;
            worst_u8 = dt > worst_u8 ? dt : worst_u8;
            worst_pv = dp > worst_pv ? dp : worst_pv;
        }
        preproc_trace_free(&tr);
        free(pv);
        n++;
    }
    CU_ASSERT(n >= 7);
    printf("\n    %d processor configs vs transformers/Pillow recipe: worst uint8 |diff| %d, "
           "pixel_values %.3g ",
           n, worst_u8, worst_pv);
    tensorfile_close(&ref);
}

/* ---------------------------------------------------------------- */
/* config parsing */

static void s_expect_cfg_error(const char *json, const char *what)
{
    PreprocConfig cfg;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(preproc_config_parse(json, "cfg.json", &cfg, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "cfg.json"));
    if (!strstr(err.msg, what)) {
        fprintf(stderr, "\n  expected '%s' in: %s\n", what, err.msg);
        CU_FAIL("config error text");
    }
}

static void test_config(void)
{
    PreprocConfig cfg;
    DmErr err = {{0}};
    /* Defaults: DonutImageProcessor() */
    CU_ASSERT_EQUAL_FATAL(preproc_config_parse("{}", "cfg.json", &cfg, &err), 0);
    CU_ASSERT_EQUAL(cfg.height, 2560);
    CU_ASSERT_EQUAL(cfg.width, 1920);
    CU_ASSERT_EQUAL(cfg.resample, PREPROC_BILINEAR);
    CU_ASSERT(cfg.do_resize && cfg.do_thumbnail && cfg.do_pad && cfg.do_rescale &&
              cfg.do_normalize);
    CU_ASSERT(!cfg.do_align_long_axis);
    CU_ASSERT_EQUAL(cfg.rescale_factor, 1.0 / 255.0);
    CU_ASSERT_EQUAL(cfg.image_mean[1], 0.5);
    CU_ASSERT_EQUAL(cfg.image_std[2], 0.5);
    /* The real hub file's legacy form: [width, height]. */
    CU_ASSERT_EQUAL_FATAL(
        preproc_config_parse("{\"feature_extractor_type\": \"DonutFeatureExtractor\", "
                             "\"size\": [1920, 2560], \"do_align_long_axis\": false, "
                             "\"image_mean\": 0.25, \"random_padding\": true, \"foo\": 1}",
                             "cfg.json", &cfg, &err),
        0);
    CU_ASSERT_EQUAL(cfg.width, 1920);
    CU_ASSERT_EQUAL(cfg.height, 2560);
    CU_ASSERT_EQUAL(cfg.image_mean[0], 0.25);
    CU_ASSERT_EQUAL(cfg.image_mean[2], 0.25);
    CU_ASSERT_EQUAL_FATAL(
        preproc_config_parse("{\"size\": 300, \"resample\": 3}", "cfg.json", &cfg, &err), 0);
    CU_ASSERT_EQUAL(cfg.width, 300);
    CU_ASSERT_EQUAL(cfg.height, 300);
    CU_ASSERT_EQUAL(cfg.resample, PREPROC_BICUBIC);

    s_expect_cfg_error("{\"resample\": 0}", "NEAREST");
    s_expect_cfg_error("{\"resample\": 7}", "resample");
    s_expect_cfg_error("{\"resample\": \"bilinear\"}", "resample");
    s_expect_cfg_error("{\"size\": {\"shortest_edge\": 224}}", "shortest_edge");
    s_expect_cfg_error("{\"size\": {\"height\": 0, \"width\": 5}}", "size");
    s_expect_cfg_error("{\"size\": [1, 2, 3]}", "size");
    s_expect_cfg_error("{\"image_processor_type\": \"CLIPImageProcessor\"}", "CLIPImageProcessor");
    s_expect_cfg_error("{\"image_std\": [0.5, 0, 0.5]}", "std");
    s_expect_cfg_error("{\"image_mean\": [0.5, 0.5]}", "image_mean");
    s_expect_cfg_error("{\"do_pad\": \"yes\"}", "do_pad");
    s_expect_cfg_error("{\"rescale_factor\": \"1/255\"}", "rescale_factor");
    s_expect_cfg_error("{\"size\": ", "invalid JSON");
    s_expect_cfg_error("[]", "object");

    CU_ASSERT_EQUAL(preproc_config_load("data/images/no-such-config.json", &cfg, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "no-such-config.json"));

    /* Geometry failures HF also has: padding an image larger than the
     * target, and an edge rounded down to 0 pixels. */
    PreprocGeometry g;
    preproc_config_default(&cfg);
    cfg.height = 100;
    cfg.width = 80;
    cfg.do_thumbnail = 0;
    CU_ASSERT_EQUAL(preproc_geometry(&cfg, 50, 200, &g, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "pad"));
    cfg.do_thumbnail = 1;
    CU_ASSERT_EQUAL(preproc_geometry(&cfg, 1, 20000, &g, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "0 pixels"));
    /* align_long_axis: a landscape page for a portrait target is turned. */
    cfg.do_align_long_axis = 1;
    CU_ASSERT_EQUAL(preproc_geometry(&cfg, 300, 200, &g, &err), 0);
    CU_ASSERT(g.rotated);
    CU_ASSERT_EQUAL(g.aligned_w, 200);
    CU_ASSERT_EQUAL(g.aligned_h, 300);
}

/* ---------------------------------------------------------------- */
/* the command */

static void test_cmd_preprocess(void)
{
    char *dir = s_tmpdir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    char out[600];
    snprintf(out, sizeof out, "%s/pv.safetensors", dir);
    char *argv1[] = {"preprocess", TU_TINY, TU_TINY "/img1.png", "-o", out, "--trace", NULL};
    CU_ASSERT_EQUAL_FATAL(cmd_preprocess(6, argv1), 0);
    TensorFile *tf = s_open_ref(out), *gold = s_open_ref(TU_TINY "/preprocess.safetensors");
    CU_ASSERT_PTR_NOT_NULL_FATAL(tf);
    CU_ASSERT_PTR_NOT_NULL_FATAL(gold);
    const DmTensor *a = tensorfile_find(tf, "pixel_values");
    const DmTensor *b = tensorfile_find(gold, "img1.pixel_values");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(a->dtype, DM_F32);
    CU_ASSERT_EQUAL(a->ndim, 4);
    CU_ASSERT_EQUAL(memcmp(a->shape, b->shape, sizeof a->shape), 0);
    CU_ASSERT_EQUAL(a->nbytes, b->nbytes);
    CU_ASSERT_EQUAL(memcmp(a->data, b->data, b->nbytes), 0);
    const DmTensor *t = tensorfile_find(tf, "thumbnail_u8");
    const DmTensor *tg = tensorfile_find(gold, "img1.thumbnail_u8");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(t->nbytes, tg->nbytes);
    CU_ASSERT_EQUAL(memcmp(t->data, tg->data, tg->nbytes), 0);
    tensorfile_close(&tf);
    tensorfile_close(&gold);

    /* Usage errors exit 2, runtime errors 1. */
    char *argv2[] = {"preprocess", TU_TINY, NULL};
    CU_ASSERT_EQUAL(cmd_preprocess(2, argv2), 2);
    char *argv3[] = {"preprocess", TU_TINY, TU_TINY "/img1.png", "-o", out, "--page", "x", NULL};
    CU_ASSERT_EQUAL(cmd_preprocess(7, argv3), 2);
    char *argv4[] = {"preprocess", TU_TINY, TU_TINY "/img1.png", "-o", out, "--page", "1", NULL};
    CU_ASSERT_EQUAL(cmd_preprocess(7, argv4), 1);
    char *argv5[] = {"preprocess", dir, TU_TINY "/img1.png", "-o", out, NULL};
    CU_ASSERT_EQUAL(cmd_preprocess(5, argv5), 1);
    char *argv6[] = {"preprocess", TU_TINY, TU_TINY "/img1.png", "-o", out, "--bogus", NULL};
    CU_ASSERT_EQUAL(cmd_preprocess(6, argv6), 2);
    s_rmdir(dir);
}

void tests_image(void)
{
    TU_SUITE("image_load", {"formats and modes vs PIL", test_load_formats},
             {"decompression bombs: refused from the header", test_bombs},
             {"multi-page TIFF", test_load_multipage_tiff}, {"16-bit RGB PNG", test_load_rgb16},
             {"PDF pages", test_load_pdf}, {"bad input", test_load_bad_input});
    TU_SUITE("preprocess", {"golden tiny-a", test_golden_tiny_a},
             {"PIL resize/reduce", test_pil_resize}, {"processor configs", test_pipelines},
             {"config parsing", test_config}, {"cmd_preprocess", test_cmd_preprocess});
}
