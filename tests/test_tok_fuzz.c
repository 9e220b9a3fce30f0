/* test_tok_fuzz.c - the tokenizer never hangs or crashes on damaged
 * input: a seeded corpus of tokenizer.json files whose
 * precompiled_charsmap is damaged (bytes of the trie or of the
 * replacement pool changed, leaves pointed at random pool bytes, inside
 * characters too, the blob cut short), each loaded and asked to encode
 * texts with tabs, accents, combining marks, wide and invisible characters
 * and random code points, in a child process with a time limit: a load may
 * fail (with a message naming the file), an encode may fail, but nothing
 * may run past the limit or die of a signal.  Then random text (valid
 * UTF-8 and random bytes) through the genuine tokenizer.  The case that
 * used to spin (the tab's leaf pointed inside a character) is refused at
 * load with a message. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "worker/text/tok_internal.h"
#include "worker/text/tokenizer.h"
#include "tutil.h"

#define FUZZ_CASES 48
#define FUZZ_SECONDS 20 /* per case; a healthy case takes well under a second */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static unsigned char *s_b64_dec(const char *s, size_t *n)
{
    size_t len = strlen(s);
    unsigned char *o = malloc(len / 4 * 3 + 3);
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len && s[i] != '='; i++) {
        const char *p = strchr(B64, s[i]);
        acc = acc << 6 | (uint32_t)(p - B64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (unsigned char)(acc >> bits);
        }
    }
    *n = k;
    return o;
}

static char *s_b64_enc(const unsigned char *b, size_t n)
{
    char *o = malloc(n / 3 * 4 + 8);
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16 | (i + 1 < n ? (uint32_t)b[i + 1] << 8 : 0) |
                     (i + 2 < n ? b[i + 2] : 0);
        o[k++] = B64[v >> 18 & 63];
        o[k++] = B64[v >> 12 & 63];
        o[k++] = i + 1 < n ? B64[v >> 6 & 63] : '=';
        o[k++] = i + 2 < n ? B64[v & 63] : '=';
    }
    o[k] = '\0';
    return o;
}

static uint64_t s_rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* The charsmap of a tokenizer.json document (its first Precompiled step). */
static json_t *s_charsmap_node(json_t *doc)
{
    json_t *n = json_object_get(doc, "normalizer");
    json_t *list = json_object_get(n, "normalizers");
    size_t i;
    json_t *step;
    json_array_foreach(list, i, step) if (json_object_get(step, "precompiled_charsmap")) return step;
    return json_object_get(n, "precompiled_charsmap") ? n : NULL;
}

/* Append one code point as UTF-8. */
static size_t s_put_cp(char *o, uint32_t c)
{
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xC0 | c >> 6);
        o[1] = (char)(0x80 | (c & 63));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | c >> 12);
        o[1] = (char)(0x80 | (c >> 6 & 63));
        o[2] = (char)(0x80 | (c & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | c >> 18);
    o[1] = (char)(0x80 | (c >> 12 & 63));
    o[2] = (char)(0x80 | (c >> 6 & 63));
    o[3] = (char)(0x80 | (c & 63));
    return 4;
}

/* Random text: mostly code points a charsmap maps (tabs, accents,
 * combining marks, compatibility forms, wide and invisible characters),
 * some random ones; raw != 0 adds random bytes (often not UTF-8). */
static void s_random_text(uint64_t *rs, char *out, size_t cap, int raw)
{
    static const uint32_t pick[] = {'\t', ' ', 'a', 'Z', '1', 0xA0, 0xE9, 0xC9, 0x301, 0x308, 0x3000,
                                    0xFB01, 0xFF21, 0x2028, 0x200B, 0xFEFF, 0x1E9E, 0x4E2D, 0x1F600,
                                    0x0D, 0x85, 0x2126, 0x212B, 0xAC00};
    size_t n = 0, len = 1 + s_rng(rs) % 40;
    for (size_t i = 0; i < len && n + 5 < cap; i++) {
        uint64_t r = s_rng(rs) % 10;
        uint32_t c;
        if (raw && r == 0) {
            out[n++] = (char)(1 + s_rng(rs) % 255);
            continue;
        }
        if (r < 7) {
            c = pick[s_rng(rs) % (sizeof pick / sizeof *pick)];
        } else {
            c = (uint32_t)(s_rng(rs) % 0x10FFFF);
            if (c == 0 || (c >= 0xD800 && c <= 0xDFFF))
                c = 'x';
        }
        n += s_put_cp(out + n, c);
    }
    out[n] = '\0';
}

/* In a child: load path and encode texts; exit 0 (whatever the results). */
static void s_child(const char *path, uint64_t seed, int raw)
{
    alarm(FUZZ_SECONDS);
    DmErr err = {{0}};
    Tokenizer *t = NULL;
    if (tokenizer_load(path, &t, &err) < 0)
        _exit(strstr(err.msg, path) ? 3 : 4); /* a refusal must name the file */
    static const char *const fixed[] = {"a\tb", "caf\xc3\xa9", "e\xcc\x81 x", "\xc3\x89" "COLE 1998",
                                        "\xef\xac\x81 ligature", "\xe3\x80\x80wide\xc2\xa0nbsp", "\t\t\t",
                                        "x\xe2\x80\x8by"};
    uint64_t rs = seed | 1;
    char text[256];
    for (int i = 0; i < 60; i++) {
        const char *s = text;
        if (i < 8)
            s = fixed[i];
        else
            s_random_text(&rs, text, sizeof text, raw);
        int32_t *ids = NULL;
        int n = 0;
        if (tokenizer_encode(t, s, 1, &ids, &n, &err) == 0)
            free(ids);
    }
    tokenizer_free(&t);
    _exit(0);
}

/* Run one case; returns the child's status. */
static int s_run_case(const char *path, uint64_t seed, int raw)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        s_child(path, seed, raw);
    int st = 0;
    waitpid(pid, &st, 0);
    return st;
}

static char s_dir[] = "/tmp/docmint-tokfuzz-XXXXXX";

static int s_write_doc(json_t *doc, const char *path)
{
    return json_dump_file(doc, path, JSON_COMPACT);
}

/* The case that used to spin: the tab's leaf pointed at a continuation
 * byte of the pool.  Refused at load, naming the file. */
static void test_tab_leaf(void)
{
    DmErr err = {{0}};
    json_t *doc = json_load_file(TU_TOK "/tokenizer.json", 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    json_t *node = s_charsmap_node(doc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(node);
    size_t n;
    unsigned char *b = s_b64_dec(json_string_value(json_object_get(node, "precompiled_charsmap")), &n);
    TokCharsmap cm;
    CU_ASSERT_EQUAL_FATAL(tok_charsmap_load(&cm, json_string_value(json_object_get(node, "precompiled_charsmap")),
                                            strlen(json_string_value(json_object_get(node, "precompiled_charsmap"))),
                                            "genuine", &err), 0);
    const char *rep;
    size_t rl;
    CU_ASSERT_EQUAL_FATAL(tok_charsmap_lookup(&cm, (const uint8_t *)"\t", 1, &rep, &rl), 1);
    CU_ASSERT_EQUAL(rl, 1);
    CU_ASSERT_EQUAL(rep[0], ' '); /* the tab becomes a space */
    /* point every leaf naming rep (the tab's, among others) at the first
     * continuation byte of the pool */
    size_t off = (size_t)(rep - cm.pool), cont = 0;
    while (cont < cm.pool_len && ((unsigned char)cm.pool[cont] & 0xC0) != 0x80)
        cont++;
    CU_ASSERT_FATAL(cont < cm.pool_len);
    uint32_t tsize = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    int changed = 0;
    for (size_t i = 0; i < cm.nunits; i++) {
        uint32_t u = cm.units[i];
        if ((u >> 31) && (u & 0x7FFFFFFFu) == off) {
            uint32_t nu = 0x80000000u | (uint32_t)cont;
            memcpy(b + 4 + 4 * i, &nu, 4);
            changed++;
        }
    }
    tok_charsmap_free(&cm);
    CU_ASSERT_FATAL(changed && tsize > 0);
    char *enc = s_b64_enc(b, n);
    json_object_set_new(node, "precompiled_charsmap", json_string(enc));
    char path[128];
    snprintf(path, sizeof path, "%s/tab.json", s_dir);
    CU_ASSERT_EQUAL_FATAL(s_write_doc(doc, path), 0);
    Tokenizer *t = NULL;
    CU_ASSERT_EQUAL(tokenizer_load(path, &t, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "inside a character"));
    tokenizer_free(&t);
    /* and in a child with the time limit: refused, not hung */
    int st = s_run_case(path, 1, 0);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 3);
    free(enc);
    free(b);
    json_decref(doc);
}

/* Walking text that is not UTF-8 always advances. */
static void test_utf8_step(void)
{
    int32_t cp;
    CU_ASSERT_EQUAL(tok_utf8_step((const uint8_t *)"\xa9x", 2, &cp), 1);
    CU_ASSERT_EQUAL(cp, 0xFFFD);
    CU_ASSERT_EQUAL(tok_utf8_step((const uint8_t *)"\xc3", 1, &cp), 1); /* cut short */
    CU_ASSERT_EQUAL(cp, 0xFFFD);
    CU_ASSERT_EQUAL(tok_utf8_step((const uint8_t *)"\xc3\xa9", 2, &cp), 2);
    CU_ASSERT_EQUAL(cp, 0xE9);
    CU_ASSERT_EQUAL(tok_utf8_step((const uint8_t *)"", 0, &cp), 0);
}

static void test_fuzz(void)
{
    json_t *doc = json_load_file(TU_TOK "/tokenizer.json", 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    json_t *node = s_charsmap_node(doc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(node);
    size_t n;
    unsigned char *orig = s_b64_dec(json_string_value(json_object_get(node, "precompiled_charsmap")), &n);
    uint32_t tsize = (uint32_t)orig[0] | (uint32_t)orig[1] << 8 | (uint32_t)orig[2] << 16 |
                     (uint32_t)orig[3] << 24;
    CU_ASSERT_FATAL(tsize + 4 < n);
    unsigned char *b = malloc(n);
    uint64_t rs = 0x5eed2026u;
    int loaded = 0, refused = 0, hung = 0, crashed = 0;
    char path[128];
    snprintf(path, sizeof path, "%s/fuzz.json", s_dir);
    for (int c = 0; c < FUZZ_CASES; c++) {
        memcpy(b, orig, n);
        size_t len = n;
        int kind = c % 4;
        int edits = 1 + (int)(s_rng(&rs) % 16);
        for (int e = 0; e < edits; e++) {
            if (kind == 0) { /* bytes of the trie */
                b[4 + s_rng(&rs) % tsize] = (unsigned char)s_rng(&rs);
            } else if (kind == 1) { /* bytes of the pool: an ASCII byte (NUL too) */
                size_t p = 4 + tsize + s_rng(&rs) % (n - 4 - tsize);
                if (b[p] < 0x80)
                    b[p] = (unsigned char)(s_rng(&rs) % 0x80);
                else if (e == 0)
                    b[p] = (unsigned char)s_rng(&rs);
            } else if (kind == 2) { /* a leaf pointed at another pool byte */
                size_t u = s_rng(&rs) % (tsize / 4);
                uint32_t v;
                memcpy(&v, b + 4 + 4 * u, 4);
                if (v >> 31) {
                    uint32_t p = (uint32_t)(s_rng(&rs) % (n - 4 - tsize + 8));
                    /* mostly the start of a character, sometimes anywhere */
                    while (e % 4 && p < n - 4 - tsize && (b[4 + tsize + p] & 0xC0) == 0x80)
                        p--;
                    v = 0x80000000u | p;
                    memcpy(b + 4 + 4 * u, &v, 4);
                }
            }
        }
        if (kind == 3) /* cut short, maybe inside the trie */
            len = s_rng(&rs) % n;
        char *enc = s_b64_enc(b, len);
        json_object_set_new(node, "precompiled_charsmap", json_string(enc));
        free(enc);
        CU_ASSERT_EQUAL_FATAL(s_write_doc(doc, path), 0);
        int st = s_run_case(path, s_rng(&rs), 0);
        if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) {
            hung++;
            printf("\n    case %d (kind %d): still running after %d s", c, kind, FUZZ_SECONDS);
        } else if (WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) == 4)) {
            crashed++;
            printf("\n    case %d (kind %d): status %d", c, kind, st);
        } else if (WEXITSTATUS(st) == 3) {
            refused++;
        } else {
            loaded++;
        }
    }
    printf("\n    %d damaged charsmaps: %d loaded and encoded 60 texts, %d refused at load, %d hung, "
           "%d crashed", FUZZ_CASES, loaded, refused, hung, crashed);
    CU_ASSERT_EQUAL(hung, 0);
    CU_ASSERT_EQUAL(crashed, 0);
    CU_ASSERT(loaded > 0 && refused > 0); /* both paths were exercised */
    /* random text, valid UTF-8 and random bytes, through the genuine one */
    int st = s_run_case(TU_TOK "/tokenizer.json", 77, 1);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    free(b);
    free(orig);
    json_decref(doc);
}

static void test_cleanup(void)
{
    char p[128];
    snprintf(p, sizeof p, "%s/tab.json", s_dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/fuzz.json", s_dir);
    unlink(p);
    rmdir(s_dir);
}

void tests_tok_fuzz(void)
{
    if (!mkdtemp(s_dir))
        return;
    TU_SUITE("tokenizer fuzz", {"tok_utf8_step always advances", test_utf8_step},
             {"the tab's leaf inside a character: refused at load", test_tab_leaf},
             {"damaged charsmaps and random text: no hang, no crash", test_fuzz},
             {"cleanup", test_cleanup});
}
