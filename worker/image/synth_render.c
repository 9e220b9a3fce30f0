/* synth_render.c - synthetic pages drawn with libvips' text operation:
 * fonts from Debian packages, blocks placed top to bottom, optional
 * augmentation (see synth.h). */
#include "worker/image/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <vips/vips.h>

#include "worker/image/augment.h"
#include "worker/image/image.h"

#define S_FONT_DIR "/usr/share/fonts/truetype"

static void s_font_path(const SynthOptions *o, int f, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s", o->font_dir ? o->font_dir : S_FONT_DIR, synth_fonts[f].file);
}

/* present[f]: whether font f's file is there. */
static void s_fonts_present(const SynthOptions *o, int *present)
{
    char path[1024];
    for (int f = 0; f < synth_nfonts; f++) {
        s_font_path(o, f, path, sizeof path);
        present[f] = access(path, R_OK) == 0;
    }
}

/* The font drawn in place of f: f, else the first present one of its
 * kind, else any present one, else -1. */
static int s_font_use(const int *present, int f)
{
    if (present[f])
        return f;
    for (int g = 0; g < synth_nfonts; g++)
        if (present[g] && synth_fonts[g].mono == synth_fonts[f].mono)
            return g;
    for (int g = 0; g < synth_nfonts; g++)
        if (present[g])
            return g;
    return -1;
}

int synth_fonts_check(const SynthOptions *o, char *note, int cap)
{
    int present[64], missing = 0;
    s_fonts_present(o, present);
    if (cap > 0)
        note[0] = '\0';
    size_t n = 0;
    for (int f = 0; f < synth_nfonts; f++) {
        if (present[f])
            continue;
        char path[1024];
        s_font_path(o, f, path, sizeof path);
        if (cap > 0 && n < (size_t)cap)
            n += (size_t)snprintf(note + n, (size_t)cap - n, "%s%s (%s, Debian package %s)",
                                  missing ? "; " : "font missing: ", synth_fonts[f].family, path,
                                  synth_fonts[f].package);
        missing++;
    }
    if (missing && cap > 0 && n < (size_t)cap) {
        int any = 0;
        for (int f = 0; f < synth_nfonts; f++)
            any |= present[f];
        snprintf(note + n, (size_t)cap - n, any ? "; drawn in another font instead (install them with "
                                                  "deploy/install-deps.sh)"
                                                : "; no font left to draw with (install them with "
                                                  "deploy/install-deps.sh)");
    }
    return missing;
}

/* Font files outside fontconfig's folders are handed to libvips once each
 * per process, before any text uses them: libvips 8.14 keeps the name it
 * was given in its table of added files without a copy of its own, so the
 * same file named again would be looked up against freed memory. */
static GMutex s_fonts_mu;

/* vips_text is not safe to call from several threads at once in libvips
 * 8.14 (shared Pango and cairo state: rare crashes in cairo_show_glyphs
 * with two rendering threads), so every text image is made under this
 * lock.  It draws its pixels while it is built; reading them out and the
 * rest of a page run in parallel. */
static GMutex s_text_mu;
static char *s_fonts_added[256];
static int s_nfonts_added;

static int s_fonts_register(const SynthOptions *o, const int *present, DmErr *err);

static int s_vips_fail(DmErr *err, const char *what)
{
    char line[300];
    image_vips_error(line, sizeof line);
    return dm_err(err, "%s: %s", what, line[0] ? line : "libvips failed");
}

static int s_fonts_register(const SynthOptions *o, const int *present, DmErr *err)
{
    int rc = 0;
    g_mutex_lock(&s_fonts_mu);
    for (int f = 0; f < synth_nfonts && !rc; f++) {
        char file[1024];
        s_font_path(o, f, file, sizeof file);
        int known = !present[f];
        for (int i = 0; i < s_nfonts_added && !known; i++)
            known = !strcmp(s_fonts_added[i], file);
        if (known || s_nfonts_added == (int)(sizeof s_fonts_added / sizeof *s_fonts_added))
            continue;
        VipsImage *t = NULL;
        g_mutex_lock(&s_text_mu);
        int bad = vips_text(&t, "x", "fontfile", file, NULL);
        if (!bad)
            g_object_unref(t);
        g_mutex_unlock(&s_text_mu);
        if (bad) {
            rc = s_vips_fail(err, file);
            break;
        }
        if (!(s_fonts_added[s_nfonts_added] = strdup(file)))
            rc = dm_err(err, "synth: out of memory");
        else
            s_nfonts_added++;
    }
    g_mutex_unlock(&s_fonts_mu);
    return rc;
}

/* The Pango markup of one block. */
static char *s_markup(const SynthPage *p, const SynthBlock *b)
{
    GString *g = g_string_new(NULL);
    for (int i = 0; i < b->n; i++) {
        const char *line = p->lines[b->first + i];
        const char *colon = strchr(line, ':');
        int bold = b->bold == 1 || (b->bold == 2 && i == 0);
        if (i)
            g_string_append_c(g, '\n');
        if (b->bold == 3 && colon) {
            gchar *k = g_markup_escape_text(line, colon - line + 1);
            gchar *v = g_markup_escape_text(colon + 1, -1);
            g_string_append_printf(g, "<b>%s</b>%s", k, v);
            g_free(k);
            g_free(v);
        } else {
            gchar *t = g_markup_escape_text(line, -1);
            g_string_append_printf(g, bold ? "<b>%s</b>" : "%s", t);
            g_free(t);
        }
    }
    return g_string_free(g, FALSE);
}

/* Render to a one-band uchar image, white page, black text. */
static int s_render(const SynthOptions *o, const SynthPage *p, uint64_t aug_key, VipsImage **out, DmErr *err)
{
    *out = NULL;
    if (image_vips_init(err))
        return -1;
    int W = o->width, H = o->height;
    if (W < 64 || H < 64 || W > 20000 || H > 20000)
        return dm_err(err, "synth: page size %dx%d out of range 64..20000", W, H);
    int present[64];
    s_fonts_present(o, present);
    if (o->font_dir && s_fonts_register(o, present, err))
        return -1;
    double scale = fmin((double)W / SYNTH_WIDTH_DEFAULT, (double)H / SYNTH_HEIGHT_DEFAULT);
    /* Font sizes are designed at 72 dpi on the default page; smaller or
     * larger pages scale through the rendering resolution. */
    int dpi = (int)floor(72.0 * scale);
    if (dpi < 4)
        dpi = 4;
    int margin_x = W / 24, margin_y = H / 20;
    /* Ink is drawn into a plain buffer (blocks never overlap) and turned
     * into black on white at the end: cheaper than a chain of inserts. */
    uint8_t *ink = calloc((size_t)W * H, 1);
    if (!ink)
        return dm_err(err, "synth: out of memory for a %dx%d page", W, H);
    int cursor = margin_y, row_y = margin_y, prev_right = 0;
    for (int i = 0; i < p->nblocks; i++) {
        const SynthBlock *b = &p->blocks[i];
        int f = b->font >= 0 && b->font < synth_nfonts ? s_font_use(present, b->font) : -1;
        if (f < 0) {
            char note[2048];
            synth_fonts_check(o, note, sizeof note);
            free(ink);
            return dm_err(err, "synth: %s", note);
        }
        char font[96];
        snprintf(font, sizeof font, "%s %d", synth_fonts[f].family, b->size_pt);
        char *markup = s_markup(p, b);
        VipsImage *t = NULL;
        int align = b->align_right ? VIPS_ALIGN_HIGH : VIPS_ALIGN_LOW;
        g_mutex_lock(&s_text_mu);
        int rc = vips_text(&t, markup, "font", font, "dpi", dpi, "align", align, NULL);
        g_mutex_unlock(&s_text_mu);
        g_free(markup);
        if (rc) {
            free(ink);
            return s_vips_fail(err, "synth: text");
        }
        int tw = vips_image_get_width(t), th = vips_image_get_height(t);
        int x = (int)((int64_t)b->x_permille * W / 1000);
        if (b->align_right)
            x -= tw;
        int y = b->same_row ? row_y : cursor;
        const char *why = NULL;
        if (b->same_row && x < prev_right + margin_x / 4)
            why = "overlaps the text beside it";
        else if (x + tw > W - margin_x / 2 || x < margin_x / 2)
            why = "is too wide";
        else if (y + th > H - margin_y / 2)
            why = "does not fit";
        if (why) {
            g_object_unref(t);
            free(ink);
            return dm_err(err, "synth: page %dx%d too small: \"%s\" %s", W, H, p->lines[b->first], why);
        }
        size_t len = 0;
        uint8_t *px = vips_image_get_format(t) == VIPS_FORMAT_UCHAR && vips_image_get_bands(t) == 1
                          ? vips_image_write_to_memory(t, &len)
                          : NULL;
        g_object_unref(t);
        if (!px || len != (size_t)tw * th) {
            g_free(px);
            free(ink);
            return px ? dm_err(err, "synth: text image of an unexpected format") : s_vips_fail(err, "synth: text");
        }
        for (int r = 0; r < th; r++) {
            uint8_t *dst = ink + (size_t)(y + r) * W + x;
            const uint8_t *src = px + (size_t)r * tw;
            for (int c = 0; c < tw; c++)
                dst[c] = src[c] > dst[c] ? src[c] : dst[c];
        }
        g_free(px);
        if (!b->same_row)
            row_y = y;
        prev_right = x + tw;
        int gap = (int)lround(b->size_pt * scale * 0.9);
        if (y + th + gap > cursor)
            cursor = y + th + gap;
    }
    for (size_t k = 0; k < (size_t)W * H; k++)
        ink[k] = (uint8_t)(255 - ink[k]);
    if (image_augment_active(&o->augment)) {
        uint64_t seed = o->seed * 0xd6e8feb86659fd93ULL ^ aug_key * 0x9e3779b97f4a7c15ULL;
        if (image_augment_pixels(ink, W, H, 1, &o->augment, seed, err)) {
            free(ink);
            return -1;
        }
    }
    VipsImage *u8 = vips_image_new_from_memory_copy(ink, (size_t)W * H, W, H, 1, VIPS_FORMAT_UCHAR);
    free(ink);
    if (!u8)
        return s_vips_fail(err, "synth: page");
    *out = u8;
    return 0;
}

uint64_t synth_aug_key(int index, int page)
{
    return ((uint64_t)index << 20) + (uint64_t)page;
}

int synth_page_save(const SynthOptions *o, const SynthPage *page, uint64_t aug_key, const char *path,
                    DmErr *err)
{
    VipsImage *img;
    if (s_render(o, page, aug_key, &img, err))
        return -1;
    /* PNG at zlib level 1: a few percent larger than the default 6 and
     * several times faster to write (text on white compresses well). */
    size_t n = strlen(path);
    int rc = n > 4 && !strcasecmp(path + n - 4, ".png")
                 ? vips_pngsave(img, path, "compression", 1, NULL)
                 : vips_image_write_to_file(img, path, NULL);
    g_object_unref(img);
    if (rc)
        return s_vips_fail(err, path);
    return 0;
}

int synth_doc_save_tiff(const SynthOptions *o, const SynthDoc *doc, const char *path, DmErr *err)
{
    if (doc->npages < 1)
        return dm_err(err, "%s: document has no pages", path);
    VipsImage **pages = calloc((size_t)doc->npages, sizeof *pages);
    if (!pages)
        return dm_err(err, "%s: out of memory", path);
    int rc = 0;
    for (int i = 0; i < doc->npages && !rc; i++)
        rc = s_render(o, &doc->pages[i], synth_aug_key(doc->index, i), &pages[i], err);
    VipsImage *joined = NULL, *tall = NULL;
    if (!rc && vips_arrayjoin(pages, &joined, doc->npages, "across", 1, NULL))
        rc = s_vips_fail(err, path);
    for (int i = 0; i < doc->npages; i++)
        if (pages[i])
            g_object_unref(pages[i]);
    free(pages);
    /* A tall image with page-height set is saved as one TIFF directory
     * per page. */
    if (!rc && vips_copy(joined, &tall, NULL))
        rc = s_vips_fail(err, path);
    if (joined)
        g_object_unref(joined);
    if (rc)
        return -1;
    vips_image_set_int(tall, VIPS_META_PAGE_HEIGHT, o->height);
    if (vips_tiffsave(tall, path, "compression", VIPS_FOREIGN_TIFF_COMPRESSION_DEFLATE, NULL))
        rc = s_vips_fail(err, path);
    g_object_unref(tall);
    return rc;
}
