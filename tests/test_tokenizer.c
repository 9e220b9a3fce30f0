/* test_tokenizer.c - the tokenizer against the Rust `tokenizers` golden data
 * (both serialisations), the synthetic tokenizer, bad input, the CLI. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker/text/tok_internal.h"
#include "worker/text/tokenizer.h"
#include "tutil.h"

#define TT_SHOW 5 /* mismatches printed in detail per test */

static const char *const s_files[] = {TU_TOK, TU_TOK "/tokenizer.modern.json"};

static Tokenizer *s_load(const char *path)
{
    DmErr err = {{0}};
    Tokenizer *t = NULL;
    if (tokenizer_load(path, &t, &err) < 0)
        fprintf(stderr, "\n  load %s: %s\n", path, err.msg);
    return t;
}

static int s_ids_equal(json_t *want, const int32_t *ids, int n)
{
    if (!json_is_array(want) || json_array_size(want) != (size_t)n)
        return 0;
    for (int i = 0; i < n; i++)
        if (json_integer_value(json_array_get(want, (size_t)i)) != ids[i])
            return 0;
    return 1;
}

static int s_pieces_equal(const Tokenizer *t, json_t *want, const int32_t *ids, int n)
{
    if (!json_is_array(want) || json_array_size(want) != (size_t)n)
        return 0;
    for (int i = 0; i < n; i++) {
        const char *p = tokenizer_id_to_piece(t, ids[i]);
        const char *w = json_string_value(json_array_get(want, (size_t)i));
        if (!p || !w || strcmp(p, w))
            return 0;
    }
    return 1;
}

static void s_print_ids(const char *label, const int32_t *ids, int n)
{
    fprintf(stderr, "      %s [", label);
    for (int i = 0; i < n; i++)
        fprintf(stderr, "%s%d", i ? "," : "", ids[i]);
    fprintf(stderr, "]\n");
}

static json_t **s_read_jsonl(const char *path, int *n)
{
    FILE *f = fopen(path, "r");
    *n = 0;
    if (!f) {
        fprintf(stderr, "\n  cannot open %s\n", path);
        return NULL;
    }
    json_t **v = NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        json_error_t je;
        json_t *j = json_loadb(line, (size_t)len, JSON_ALLOW_NUL, &je);
        if (!j) {
            fprintf(stderr, "\n  %s: %s\n", path, je.text);
            continue;
        }
        v = realloc(v, sizeof *v * (size_t)(*n + 1));
        v[(*n)++] = j;
    }
    free(line);
    fclose(f);
    return v;
}

static void s_free_jsonl(json_t **v, int n)
{
    for (int i = 0; i < n; i++)
        json_decref(v[i]);
    free(v);
}

/* Decode ids four ways and compare with the case's fields. */
static int s_check_decodes(const Tokenizer *t, json_t *c, const int32_t *ids, int n, int shown,
                           const char *what)
{
    static const struct {
        const char *field;
        int skip, cleanup;
    } ways[] = {{"decoded_raw", 1, 0}, {"decoded_keep_special_raw", 0, 0}, {"decoded", 1, 1},
                {"decoded_keep_special", 0, 1}};
    int bad = 0;
    for (size_t w = 0; w < sizeof ways / sizeof *ways; w++) {
        DmErr err = {{0}};
        char *text = NULL;
        const char *want = json_string_value(json_object_get(c, ways[w].field));
        if (!want)
            continue;
        if (tokenizer_decode(t, ids, n, ways[w].skip, ways[w].cleanup, &text, &err) < 0 ||
            strcmp(text, want)) {
            if (!bad && shown < TT_SHOW)
                fprintf(stderr, "\n    %s %s: got \"%s\" want \"%s\" %s\n", what, ways[w].field,
                        text ? text : "(error)", want, err.msg);
            bad = 1;
        }
        free(text);
    }
    return bad;
}

static void s_cases_for(const char *file)
{
    Tokenizer *t = s_load(file);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    int ncases;
    json_t **cases = s_read_jsonl(TU_TOK "/cases.jsonl", &ncases);
    CU_ASSERT_EQUAL(ncases, 463);
    int bad_ids = 0, bad_pieces = 0, bad_dec = 0, bad_norm = 0, bad_pre = 0, shown = 0;
    for (int i = 0; i < ncases; i++) {
        json_t *c = cases[i];
        json_t *jt = json_object_get(c, "text");
        const char *text = json_string_value(jt);
        size_t tlen = json_string_length(jt);
        int case_bad = 0;
        for (int sp = 1; sp >= 0; sp--) {
            DmErr err = {{0}};
            int32_t *ids = NULL;
            int n = 0;
            json_t *want = json_object_get(c, sp ? "ids" : "ids_no_special");
            json_t *wantp = json_object_get(c, sp ? "pieces" : "pieces_no_special");
            if (tokenizer_encode_n(t, text, tlen, sp, &ids, &n, &err) < 0 || !s_ids_equal(want, ids, n)) {
                if (shown < TT_SHOW) {
                    char *w = json_dumps(want, JSON_COMPACT);
                    char *tj = json_dumps(jt, JSON_ENCODE_ANY);
                    fprintf(stderr, "\n    %s case %d (%s) %s:\n", file, i,
                            json_string_value(json_object_get(c, "cat")), sp ? "ids" : "ids_no_special");
                    fprintf(stderr, "      text %s %s\n      want %s\n", tj, err.msg, w);
                    s_print_ids("got ", ids, n);
                    free(tj);
                    free(w);
                }
                bad_ids++;
                case_bad = 1;
            } else if (!s_pieces_equal(t, wantp, ids, n)) {
                bad_pieces++;
                case_bad = 1;
            }
            if (sp && s_check_decodes(t, c, ids, n, shown, file)) {
                bad_dec++;
                case_bad = 1;
            }
            free(ids);
        }
        json_t *jn = json_object_get(c, "normalized");
        if (json_is_string(jn)) {
            char *norm = NULL;
            size_t nlen = 0;
            DmErr err = {{0}};
            if (tokenizer_normalize(t, text, tlen, &norm, &nlen, &err) < 0 ||
                nlen != json_string_length(jn) || memcmp(norm, json_string_value(jn), nlen)) {
                if (shown < TT_SHOW)
                    fprintf(stderr, "\n    %s case %d normalized: got \"%s\" want \"%s\"\n", file, i,
                            norm ? norm : err.msg, json_string_value(jn));
                bad_norm++;
                case_bad = 1;
            }
            /* the pre-tokenizer's words for the whole normalized text */
            json_t *jp = json_object_get(c, "pre_tokens");
            if (norm && json_is_array(jp)) {
                TokBuf work = {0};
                size_t *spans = NULL;
                int nw = 0;
                int ok = tok_pre_tokenize(t, norm, nlen, NULL, &work, &spans, &nw, &err) == 0 &&
                         (size_t)nw == json_array_size(jp);
                for (int k = 0; ok && k < nw; k++) {
                    json_t *w = json_array_get(jp, (size_t)k);
                    size_t wl = spans[2 * k + 1] - spans[2 * k];
                    ok = json_string_length(w) == wl && !memcmp(work.p + spans[2 * k], json_string_value(w), wl);
                }
                if (!ok) {
                    if (shown < TT_SHOW) {
                        char *w = json_dumps(jp, JSON_COMPACT);
                        fprintf(stderr, "\n    %s case %d pre_tokens: want %s, got", file, i, w);
                        for (int k = 0; k < nw; k++)
                            fprintf(stderr, " \"%.*s\"", (int)(spans[2 * k + 1] - spans[2 * k]),
                                    work.p + spans[2 * k]);
                        fprintf(stderr, "\n");
                        free(w);
                    }
                    bad_pre++;
                    case_bad = 1;
                }
                free(spans);
                free(work.p);
            }
            free(norm);
        }
        shown += case_bad;
    }
    fprintf(stderr, "\n    %s: %d cases, mismatches: ids %d, pieces %d, decodes %d, normalized %d, "
                    "pre_tokens %d ",
            file, ncases, bad_ids, bad_pieces, bad_dec, bad_norm, bad_pre);
    CU_ASSERT_EQUAL(bad_ids, 0);
    CU_ASSERT_EQUAL(bad_pieces, 0);
    CU_ASSERT_EQUAL(bad_dec, 0);
    CU_ASSERT_EQUAL(bad_norm, 0);
    CU_ASSERT_EQUAL(bad_pre, 0);
    s_free_jsonl(cases, ncases);
    tokenizer_free(&t);
}

static void test_cases_legacy(void) { s_cases_for(s_files[0]); }
static void test_cases_modern(void) { s_cases_for(s_files[1]); }

static void test_pairs(void)
{
    for (int f = 0; f < 2; f++) {
        Tokenizer *t = s_load(s_files[f]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        int n;
        json_t **cases = s_read_jsonl(TU_TOK "/cases_pairs.jsonl", &n);
        CU_ASSERT_EQUAL(n, 8);
        int bad = 0;
        for (int i = 0; i < n; i++) {
            json_t *c = cases[i];
            json_t *a = json_object_get(c, "text"), *b = json_object_get(c, "text_pair");
            for (int sp = 1; sp >= 0; sp--) {
                DmErr err = {{0}};
                int32_t *ids = NULL;
                int m = 0;
                int e = tokenizer_encode_pair_n(t, json_string_value(a), json_string_length(a),
                                                json_string_value(b), json_string_length(b), sp,
                                                &ids, &m, &err);
                int ok = e == 0 && s_ids_equal(json_object_get(c, sp ? "ids" : "ids_no_special"), ids, m);
                if (ok && sp) {
                    ok = s_pieces_equal(t, json_object_get(c, "pieces"), ids, m) &&
                         json_array_size(json_object_get(c, "type_ids")) == (size_t)m &&
                         !s_check_decodes(t, c, ids, m, bad, s_files[f]);
                }
                if (!ok) {
                    if (bad < TT_SHOW) {
                        fprintf(stderr, "\n    %s pair %d (%s | %s) add_special=%d %s\n", s_files[f], i,
                                json_string_value(a), json_string_value(b), sp, err.msg);
                        s_print_ids("got ", ids, m);
                    }
                    bad++;
                }
                free(ids);
            }
        }
        fprintf(stderr, "\n    %s: %d pairs, mismatches %d ", s_files[f], n, bad);
        CU_ASSERT_EQUAL(bad, 0);
        s_free_jsonl(cases, n);
        tokenizer_free(&t);
    }
}

static void test_lookups(void)
{
    Tokenizer *t = s_load(TU_TOK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(tokenizer_vocab_size(t), 3012);
    CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "<s_docvqa>"), 3011);
    CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "<mask>"), 3001);
    CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "</s>"), 2);
    CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "\xE2\x96\x81"), 4);
    CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "no such piece"), -1);
    CU_ASSERT_STRING_EQUAL(tokenizer_id_to_piece(t, 3009), "<s_question>");
    CU_ASSERT_STRING_EQUAL(tokenizer_id_to_piece(t, 4), "\xE2\x96\x81");
    CU_ASSERT_PTR_NULL(tokenizer_id_to_piece(t, 3012));
    CU_ASSERT_PTR_NULL(tokenizer_id_to_piece(t, -1));
    CU_ASSERT(tokenizer_is_special(t, 3) && tokenizer_is_special(t, 3011) && !tokenizer_is_special(t, 4));
    CU_ASSERT_EQUAL(tokenizer_default_cleanup(t), 1);
    char fp[17];
    snprintf(fp, sizeof fp, "%s", tokenizer_fingerprint(t));
    CU_ASSERT_EQUAL(strlen(tokenizer_fingerprint(t)), 16);
    CU_ASSERT_EQUAL(strspn(fp, "0123456789abcdef"), 16);
    /* decode drops unknown ids like tokenizers, refuses negative ones */
    int32_t ids[] = {0, 45, 99999, 2};
    char *text = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(tokenizer_decode(t, ids, 4, 1, 1, &text, &err), 0);
    CU_ASSERT_STRING_EQUAL(text ? text : "", "What");
    free(text);
    int32_t neg[] = {5, -1};
    CU_ASSERT_EQUAL(tokenizer_decode(t, neg, 2, 1, 1, &text, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "negative"));
    /* invalid UTF-8 is refused */
    int32_t *out = NULL;
    int n = 0;
    CU_ASSERT_EQUAL(tokenizer_encode(t, "ab\xC3", 1, &out, &n, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "UTF-8"));
    free(out);
    tokenizer_free(&t);
    CU_ASSERT_PTR_NULL(t);

    /* the same bytes give the same fingerprint; the two files differ */
    Tokenizer *a = s_load(TU_TOK "/tokenizer.json"), *b = s_load(s_files[1]);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_STRING_EQUAL(tokenizer_fingerprint(a), fp);
    CU_ASSERT_STRING_NOT_EQUAL(tokenizer_fingerprint(a), tokenizer_fingerprint(b));
    tokenizer_free(&a);
    tokenizer_free(&b);
}

static void test_load_speed(void)
{
    double t0 = dm_now();
    Tokenizer *t = s_load(TU_TOK);
    double t1 = dm_now();
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    /* a long text: encoding must not be quadratic in the vocabulary */
    size_t len = 200000;
    char *text = malloc(len + 1);
    const char *chunk = "Invoice 4711 dated March 3, 1987: total amount due $12,345.67. ";
    size_t cl = strlen(chunk);
    for (size_t i = 0; i < len; i++)
        text[i] = chunk[i % cl];
    text[len] = '\0';
    int32_t *ids = NULL;
    int n = 0;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(tokenizer_encode(t, text, 1, &ids, &n, &err), 0);
    double t2 = dm_now();
    fprintf(stderr, "\n    load %.1f ms, encode 200 KB %.1f ms (%d ids) ", 1e3 * (t1 - t0), 1e3 * (t2 - t1), n);
    free(ids);
    free(text);
    tokenizer_free(&t);
}

/* ---- synthetic tokenizer ---- */

static char s_tmp[64];

static const char *s_tmpdir(void)
{
    if (!s_tmp[0]) {
        snprintf(s_tmp, sizeof s_tmp, "/tmp/docmint-tok-XXXXXX");
        if (!mkdtemp(s_tmp))
            s_tmp[0] = '\0';
    }
    return s_tmp;
}

static void s_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_synthetic(void)
{
    char dir[128];
    DmErr err = {{0}};
    static const int sizes[] = {128, 1000, 57525};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        int vs = sizes[s];
        snprintf(dir, sizeof dir, "%s/synth%d", s_tmpdir(), vs);
        CU_ASSERT_EQUAL_FATAL(tokenizer_write_synthetic(dir, vs, 7, &err), 0);
        Tokenizer *t = s_load(dir);
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        CU_ASSERT_EQUAL(tokenizer_vocab_size(t), vs);
        CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "<s>"), 0);
        CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "<pad>"), 1);
        CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "</s>"), 2);
        CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "<unk>"), 3);
        for (int i = 0; i < TOKENIZER_SYNTH_NSPECIAL; i++) {
            int32_t id = vs - TOKENIZER_SYNTH_NSPECIAL + i;
            CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, tokenizer_synth_specials[i]), id);
            CU_ASSERT(tokenizer_is_special(t, id));
        }
        CU_ASSERT_STRING_EQUAL(tokenizer_synth_specials[0], "<s_docvqa>");
        static const char *const texts[] = {
            "What is the total amount due on 03/14/2021?",
            "Hello, World! {x: [1, 2]} ~ `quote` \"double\" 'single' #hash @at 100%",
            "ACME Corp. Invoice No. 4711 - Department of Research & Development",
            "a",
        };
        for (size_t k = 0; k < sizeof texts / sizeof *texts; k++) {
            int32_t *ids = NULL;
            int n = 0;
            char *back = NULL;
            CU_ASSERT_EQUAL(tokenizer_encode(t, texts[k], 1, &ids, &n, &err), 0);
            CU_ASSERT(n >= 3 && ids[0] == 0 && ids[n - 1] == 2);
            for (int i = 0; i < n; i++)
                CU_ASSERT(ids[i] != 3); /* no <unk> for ASCII */
            CU_ASSERT_EQUAL(tokenizer_decode(t, ids, n, 1, 0, &back, &err), 0);
            CU_ASSERT_STRING_EQUAL(back ? back : "", texts[k]);
            free(back);
            free(ids);
        }
        /* task tokens are split out and come back when kept */
        int32_t *ids = NULL;
        int n = 0;
        char *back = NULL;
        CU_ASSERT_EQUAL(tokenizer_encode(t, "<s_docvqa><s_question>Who?</s_question><s_answer>", 0,
                                         &ids, &n, &err), 0);
        CU_ASSERT(n >= 4 && ids[0] == vs - 8 && ids[1] == vs - 7 && ids[n - 2] == vs - 6 &&
                  ids[n - 1] == vs - 5);
        CU_ASSERT_EQUAL(tokenizer_decode(t, ids, n, 0, 0, &back, &err), 0);
        CU_ASSERT_STRING_EQUAL(back ? back : "", "<s_docvqa><s_question> Who?</s_question><s_answer>");
        free(back);
        free(ids);
        tokenizer_free(&t);
    }
    /* deterministic from the seed */
    char d2[128], d3[128];
    snprintf(d2, sizeof d2, "%s/synth-again", s_tmpdir());
    snprintf(d3, sizeof d3, "%s/synth-seed8", s_tmpdir());
    snprintf(dir, sizeof dir, "%s/synth1000", s_tmpdir());
    CU_ASSERT_EQUAL(tokenizer_write_synthetic(d2, 1000, 7, &err), 0);
    CU_ASSERT_EQUAL(tokenizer_write_synthetic(d3, 1000, 8, &err), 0);
    Tokenizer *a = s_load(dir), *b = s_load(d2), *c = s_load(d3);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_STRING_EQUAL(tokenizer_fingerprint(a), tokenizer_fingerprint(b));
    CU_ASSERT_STRING_NOT_EQUAL(tokenizer_fingerprint(a), tokenizer_fingerprint(c));
    tokenizer_free(&a);
    tokenizer_free(&b);
    tokenizer_free(&c);
    /* too small */
    snprintf(dir, sizeof dir, "%s/small", s_tmpdir());
    CU_ASSERT_EQUAL(tokenizer_write_synthetic(dir, 100, 1, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "vocab_size 100"));
}

/* ---- bad input ---- */

static void s_expect_load_error(const char *path, const char *needle)
{
    DmErr err = {{0}};
    Tokenizer *t = NULL;
    CU_ASSERT_EQUAL(tokenizer_load(path, &t, &err), -1);
    CU_ASSERT_PTR_NULL(t);
    CU_ASSERT_PTR_NULL(strchr(err.msg, '\n'));
    if (!strstr(err.msg, path) || (needle && !strstr(err.msg, needle))) {
        fprintf(stderr, "\n    error for %s lacks \"%s\": %s\n", path, needle ? needle : path, err.msg);
        CU_FAIL("error message");
    }
    tokenizer_free(&t);
}

static void test_bad_input(void)
{
    char p[256];
    const char *d = s_tmpdir();
    snprintf(p, sizeof p, "%s/none", d);
    s_expect_load_error(p, "none/tokenizer.json");
    snprintf(p, sizeof p, "%s/missing.json", d);
    s_expect_load_error(p, "cannot open");
    snprintf(p, sizeof p, "%s/malformed.json", d);
    s_write_text(p, "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", -1.0]],}\n");
    s_expect_load_error(p, "malformed JSON");
    snprintf(p, sizeof p, "%s/bpe.json", d);
    s_write_text(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}");
    s_expect_load_error(p, "BPE");
    snprintf(p, sizeof p, "%s/regex.json", d);
    s_write_text(p, "{\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \"[ab]+\"}, "
                    "\"content\": \" \"}, \"model\": {\"type\": \"Unigram\", \"unk_id\": 0, "
                    "\"vocab\": [[\"<unk>\", 0.0]]}}");
    s_expect_load_error(p, "[ab]+");
    snprintf(p, sizeof p, "%s/vocab.json", d);
    s_write_text(p, "{\"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": [[\"<unk>\"]]}}");
    s_expect_load_error(p, "vocab[0]");
    snprintf(p, sizeof p, "%s/charsmap.json", d);
    s_write_text(p, "{\"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAAA!\"}, "
                    "\"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": [[\"<unk>\", 0.0]]}}");
    s_expect_load_error(p, "base64");
}

/* The loader cuts the charsmap's base64 out of the text before JSON
 * parsing; a value with JSON escapes ("\/") must take the plain path and
 * give the same tokenizer. */
static void test_escaped_charsmap(void)
{
    FILE *f = fopen(TU_TOK "/tokenizer.json", "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char *buf = malloc(1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char path[256];
    snprintf(path, sizeof path, "%s/escaped.json", s_tmpdir());
    FILE *o = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    char *v = strstr(buf, "\"precompiled_charsmap\"");
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    v = strchr(v + 22, '"') + 1;
    char *e = strchr(v, '"');
    int escaped = 0;
    fwrite(buf, 1, (size_t)(v - buf), o);
    for (char *p = v; p < e; p++) {
        if (*p == '/')
            fputc('\\', o), escaped++;
        fputc(*p, o);
    }
    fputs(e, o);
    fclose(o);
    free(buf);
    CU_ASSERT(escaped > 0);
    Tokenizer *a = s_load(TU_TOK), *b = s_load(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *text = "\xEF\xBD\x86\xC3\xBC\n\xEF\xAC\x81" "9 ::  \xE3\x8D\xBB \xEF\xBD\xB6\xEF\xBE\x9E";
    int32_t *x = NULL, *y = NULL;
    int nx = 0, ny = 0;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(tokenizer_encode(a, text, 1, &x, &nx, &err), 0);
    CU_ASSERT_EQUAL(tokenizer_encode(b, text, 1, &y, &ny, &err), 0);
    CU_ASSERT(nx == ny && nx > 0 && !memcmp(x, y, sizeof *x * (size_t)nx));
    free(x);
    free(y);
    tokenizer_free(&a);
    tokenizer_free(&b);
}

/* A minimal tokenizer.json exercising the parts Donut does not use. */
static void test_other_pipelines(void)
{
    char p[256];
    snprintf(p, sizeof p, "%s/other.json", s_tmpdir());
    s_write_text(p,
                 "{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true},"
                 " {\"id\": 9, \"content\": \"[X]\", \"special\": false, \"rstrip\": true, \"normalized\": true},"
                 " {\"id\": 10, \"content\": \"y x\", \"special\": false, \"normalized\": true},"
                 " {\"id\": 50, \"content\": \"zz\", \"special\": true, \"normalized\": false}],"
                 " \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Strip\","
                 " \"strip_left\": true, \"strip_right\": true}, {\"type\": \"Replace\", \"pattern\":"
                 " {\"String\": \"x\"}, \"content\": \"X\"}]},"
                 " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\":"
                 " \"WhitespaceSplit\"}, {\"type\": \"Metaspace\", \"replacement\": \"_\", \"prepend_scheme\":"
                 " \"first\", \"split\": true}]},"
                 " \"post_processor\": {\"type\": \"RobertaProcessing\", \"sep\": [\"</s>\", 2], \"cls\":"
                 " [\"<s>\", 1], \"trim_offsets\": true, \"add_prefix_space\": true},"
                 " \"decoder\": null,"
                 " \"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"byte_fallback\": true, \"vocab\":"
                 " [[\"<unk>\", 0.0], [\"<s>\", 0.0], [\"</s>\", 0.0], [\"_a\", -1.0], [\"a\", -2.0],"
                 " [\"X\", -2.0], [\"<0xC3>\", -5.0], [\"<0xA9>\", -5.0], [\"b\", -3.0]]}}");
    Tokenizer *t = s_load(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    DmErr err = {{0}};
    int32_t *ids = NULL;
    int n = 0;
    /* strip, x->X, whitespace split; no "_" even before the first word, as
     * stripping moved it off text offset 0 (prepend_scheme "first");
     * "[X]" found in the normalized text with its right spaces;
     * é by byte fallback, q unknown.  Checked against tokenizers 0.23.2. */
    CU_ASSERT_EQUAL(tokenizer_encode(t, "  a x[X]  a\xC3\xA9 q ", 1, &ids, &n, &err), 0);
    int32_t want[] = {1, 4, 5, 9, 4, 6, 7, 0, 2};
    CU_ASSERT_EQUAL(n, 9);
    for (int i = 0; i < n && i < 9; i++)
        CU_ASSERT_EQUAL(ids[i], want[i]);
    if (n != 9 || memcmp(ids, want, sizeof want))
        s_print_ids("other pipeline got", ids, n);
    free(ids);
    CU_ASSERT_EQUAL(tokenizer_encode_pair(t, "a", "a", 1, &ids, &n, &err), 0);
    int32_t wantp[] = {1, 3, 2, 2, 3, 2};
    CU_ASSERT(n == 6 && !memcmp(ids, wantp, sizeof wantp));
    char *text = NULL;
    /* no decoder: tokens joined with spaces */
    CU_ASSERT_EQUAL(tokenizer_decode(t, ids, n, 0, 0, &text, &err), 0);
    CU_ASSERT_STRING_EQUAL(text ? text : "", "<s> _a </s> </s> _a </s>");
    free(text);
    free(ids);
    /* tokenizers re-derives added-token ids (the file's 50 becomes 11) and
     * reports a normalized added token by its normalized content */
    CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "zz"), 11);
    CU_ASSERT_EQUAL(tokenizer_vocab_size(t), 12);
    CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "y x"), 10);
    CU_ASSERT_EQUAL(tokenizer_piece_to_id(t, "y X"), -1);
    CU_ASSERT_STRING_EQUAL(tokenizer_id_to_piece(t, 10), "y X");
    CU_ASSERT_PTR_NULL(tokenizer_id_to_piece(t, 50));
    tokenizer_free(&t);
}

/* ---- command line ---- */

static int s_run(const char *cmd, char *out, size_t cap)
{
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void)
{
    const char *bin = getenv("DOCMINT");
    if (!bin || access(bin, X_OK) != 0) {
        fprintf(stderr, "\n    DOCMINT not set or not executable, CLI not tested ");
        return;
    }
    char cmd[1024], out[8192];
    snprintf(cmd, sizeof cmd,
             "printf '%%s\\n' '{\"text\": \"What is the date?\"}' '' '{\"text\": \"<s_answer>x\"}' | "
             "%s tokenize " TU_TOK " 2>&1", bin);
    CU_ASSERT_EQUAL(s_run(cmd, out, sizeof out), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "{\"ids\":[0,45,18,20,203,9,2],\"pieces\":[\"<s>\",\"\xE2\x96\x81What\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "[0,3008,"));
    snprintf(cmd, sizeof cmd, "printf '%%s\\n' '{\"text\": \"a\"}' '{\"text\": ' | %s tokenize "
             TU_TOK " --no-special 2>&1", bin);
    CU_ASSERT_EQUAL(s_run(cmd, out, sizeof out), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "line 2"));
    snprintf(cmd, sizeof cmd, "printf '%%s\\n' '{\"ids\": [0,45,18,20,203,9,2]}' | %s detokenize "
             TU_TOK " 2>&1", bin);
    CU_ASSERT_EQUAL(s_run(cmd, out, sizeof out), 0);
    CU_ASSERT_STRING_EQUAL(out, "{\"text\":\"<s> What is the date?</s>\"}\n");
    snprintf(cmd, sizeof cmd, "printf '%%s\\n' '{\"ids\": [0,45,18,20,203,9,2]}' | %s detokenize "
             TU_TOK " --skip-special --no-cleanup 2>&1", bin);
    CU_ASSERT_EQUAL(s_run(cmd, out, sizeof out), 0);
    CU_ASSERT_STRING_EQUAL(out, "{\"text\":\"What is the date?\"}\n");
    snprintf(cmd, sizeof cmd, "%s detokenize --help", bin);
    CU_ASSERT_EQUAL(s_run(cmd, out, sizeof out), 0);
    CU_ASSERT(strstr(out, "--skip-special") && strstr(out, "--no-cleanup") && strstr(out, "default"));
    snprintf(cmd, sizeof cmd, "%s tokenize --help", bin);
    CU_ASSERT_EQUAL(s_run(cmd, out, sizeof out), 0);
    CU_ASSERT(strstr(out, "--no-special") && strstr(out, "default"));
    snprintf(cmd, sizeof cmd, "%s tokenize /nonexistent-dir < /dev/null 2>&1", bin);
    CU_ASSERT_EQUAL(s_run(cmd, out, sizeof out), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "/nonexistent-dir/tokenizer.json"));
}

static void s_cleanup_tmp(void)
{
    if (s_tmp[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", s_tmp);
    }
}

static void test_zz_cleanup(void) { s_cleanup_tmp(); }

void tests_tokenizer(void)
{
    TU_SUITE("tokenizer", {"golden cases, tokenizer.json (legacy)", test_cases_legacy},
             {"golden cases, tokenizer.modern.json", test_cases_modern}, {"golden pairs", test_pairs},
             {"lookups, fingerprint, decode edges", test_lookups}, {"load, and encode a 200 KB text", test_load_speed},
             {"synthetic tokenizer", test_synthetic}, {"bad input", test_bad_input},
             {"other pipeline parts", test_other_pipelines},
             {"charsmap with JSON escapes", test_escaped_charsmap}, {"command line", test_cli},
             {"remove temporary files", test_zz_cleanup});
}
