/* jsonschema.c - the subset of JSON Schema docmint's schemas use (see
 * jsonschema.h).  Validation walks the schema and the document together,
 * carrying the key path for the error message, and stops at the first
 * problem: a user fixes one line at a time, and the first error is the one
 * that explains the rest. */
#include "common/jsonschema.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define S_PATH_MAX 512

static const char *const s_keywords[] = {
    "type",      "properties", "required",         "additionalProperties", "items",
    "enum",      "const",      "minimum",          "maximum",              "exclusiveMinimum",
    "exclusiveMaximum",        "minLength",        "maxLength",            "minItems",
    "maxItems",  "oneOf",      "default",          "$schema",              "$id",
    "title",     "description", "examples",
};

static const char *s_shown(const char *path)
{
    return *path ? path : "(top level)";
}

const char *jsonschema_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    default: return "null";
    }
}

/* A short rendering of a value for messages: scalars in full (strings cut
 * at 40 characters), containers by type only. */
static void s_show_value(const json_t *v, char *buf, size_t n)
{
    if (json_is_object(v) || json_is_array(v)) {
        snprintf(buf, n, "%s", jsonschema_type_name(v));
        return;
    }
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (!s) {
        snprintf(buf, n, "%s", jsonschema_type_name(v));
        return;
    }
    if (strlen(s) > 42)
        strcpy(s + 38, "...\"");
    if (json_is_string(v))
        snprintf(buf, n, "string %s", s);
    else if (json_is_boolean(v) || json_is_null(v))
        snprintf(buf, n, "%s", s);
    else
        snprintf(buf, n, "%s %s", jsonschema_type_name(v), s);
    free(s);
}

static int s_is_integral(const json_t *v)
{
    if (json_is_integer(v))
        return 1;
    if (!json_is_real(v))
        return 0;
    double d = json_real_value(v);
    return isfinite(d) && d == floor(d) && fabs(d) < 9007199254740992.0;
}

static int s_type_matches(const char *t, const json_t *v)
{
    if (!strcmp(t, "object")) return json_is_object(v);
    if (!strcmp(t, "array")) return json_is_array(v);
    if (!strcmp(t, "string")) return json_is_string(v);
    if (!strcmp(t, "integer")) return s_is_integral(v);
    if (!strcmp(t, "number")) return json_is_number(v);
    if (!strcmp(t, "boolean")) return json_is_boolean(v);
    if (!strcmp(t, "null")) return json_is_null(v);
    return -1;
}

/* "string", "string or null", "integer, number or null" */
static void s_type_list(const json_t *type, char *buf, size_t n)
{
    buf[0] = '\0';
    if (json_is_string(type)) {
        snprintf(buf, n, "%s", json_string_value(type));
        return;
    }
    size_t k = json_array_size(type), used = 0;
    for (size_t i = 0; i < k && used < n; i++) {
        const char *sep = i == 0 ? "" : i + 1 == k ? " or " : ", ";
        used += (size_t)snprintf(buf + used, n - used, "%s%s", sep,
                                 json_string_value(json_array_get(type, i)));
    }
}

static void s_join(char *out, const char *path, const char *key)
{
    if (*path)
        snprintf(out, S_PATH_MAX, "%s.%s", path, key);
    else
        snprintf(out, S_PATH_MAX, "%s", key);
}

/* Levenshtein distance, capped: only used to suggest a misspelt key. */
static int s_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 99;
    int row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static int s_unknown_key(const char *kpath, const char *key, const json_t *props, DmErr *err)
{
    char allowed[400] = "";
    size_t used = 0;
    const char *name, *best = NULL;
    const json_t *sub;
    int bestd = 3;
    if (!props || !json_object_size(props))
        return dm_err(err, "%s: unknown key (no keys allowed here)", kpath);
    json_object_foreach((json_t *)props, name, sub) {
        if (used < sizeof allowed)
            used += (size_t)snprintf(allowed + used, sizeof allowed - used, "%s%s", used ? ", " : "", name);
        int d = s_distance(key, name);
        if (d < bestd && d < (int)strlen(name)) {
            bestd = d;
            best = name;
        }
    }
    if (best)
        return dm_err(err, "%s: unknown key (did you mean \"%s\"?)", kpath, best);
    return dm_err(err, "%s: unknown key (allowed: %s)", kpath, allowed);
}

static int s_validate(const json_t *schema, json_t *doc, const char *path, int fill, DmErr *err);

static int s_check_schema(const json_t *schema, const char *path, DmErr *err)
{
    if (!json_is_object(schema))
        return dm_err(err, "schema for %s: not an object", s_shown(path));
    const char *kw;
    json_t *v;
    json_object_foreach((json_t *)schema, kw, v) {
        size_t i, n = sizeof s_keywords / sizeof *s_keywords;
        for (i = 0; i < n && strcmp(kw, s_keywords[i]); i++)
            ;
        if (i == n)
            return dm_err(err, "schema for %s: unsupported keyword \"%s\"", s_shown(path), kw);
    }
    const json_t *type = json_object_get(schema, "type");
    if (type) {
        size_t k = json_is_array(type) ? json_array_size(type) : 1;
        for (size_t i = 0; i < k; i++) {
            const json_t *t = json_is_array(type) ? json_array_get(type, i) : type;
            if (!json_is_string(t) || s_type_matches(json_string_value(t), json_null()) < 0)
                return dm_err(err, "schema for %s: bad \"type\"", s_shown(path));
        }
    }
    return 0;
}

static int s_check_type(const json_t *schema, const json_t *doc, const char *path, DmErr *err)
{
    const json_t *type = json_object_get(schema, "type");
    if (!type)
        return 0;
    size_t k = json_is_array(type) ? json_array_size(type) : 1;
    for (size_t i = 0; i < k; i++) {
        const json_t *t = json_is_array(type) ? json_array_get(type, i) : type;
        if (s_type_matches(json_string_value(t), doc) > 0)
            return 0;
    }
    char want[128], got[96];
    s_type_list(type, want, sizeof want);
    s_show_value(doc, got, sizeof got);
    return dm_err(err, "%s: expected %s, got %s", s_shown(path), want, got);
}

static int s_check_enum(const json_t *schema, const json_t *doc, const char *path, DmErr *err)
{
    const json_t *en = json_object_get(schema, "enum");
    const json_t *cn = json_object_get(schema, "const");
    char got[96];
    if (cn && !json_equal((json_t *)cn, (json_t *)doc)) {
        char *want = json_dumps(cn, JSON_ENCODE_ANY | JSON_COMPACT);
        s_show_value(doc, got, sizeof got);
        dm_err(err, "%s: expected %s, got %s", s_shown(path), want ? want : "a constant", got);
        free(want);
        return -1;
    }
    if (!en)
        return 0;
    if (!json_is_array(en))
        return dm_err(err, "schema for %s: \"enum\" is not an array", s_shown(path));
    size_t i;
    json_t *e;
    json_array_foreach(en, i, e) if (json_equal(e, (json_t *)doc)) return 0;
    char want[400] = "";
    size_t used = 0;
    json_array_foreach(en, i, e) {
        char *s = json_dumps(e, JSON_ENCODE_ANY | JSON_COMPACT);
        if (s && used < sizeof want)
            used += (size_t)snprintf(want + used, sizeof want - used, "%s%s", i ? ", " : "", s);
        free(s);
    }
    s_show_value(doc, got, sizeof got);
    return dm_err(err, "%s: expected one of %s, got %s", s_shown(path), want, got);
}

/* A bound as written: 1000000, not 1e+06. */
static void s_num(const json_t *b, char *buf, size_t n)
{
    double v = json_number_value(b);
    if (json_is_integer(b))
        snprintf(buf, n, "%lld", (long long)json_integer_value(b));
    else if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, n, "%.0f", v);
    else
        snprintf(buf, n, "%g", v);
}

static int s_check_number(const json_t *schema, const json_t *doc, const char *path, DmErr *err)
{
    if (!json_is_number(doc))
        return 0;
    static const struct {
        const char *kw, *text;
        int sign; /* fails when sign * (v - bound) < 0, or <= 0 for exclusive */
        int exclusive;
    } rules[] = {{"minimum", "at least", 1, 0},
                 {"maximum", "at most", -1, 0},
                 {"exclusiveMinimum", "greater than", 1, 1},
                 {"exclusiveMaximum", "less than", -1, 1}};
    double v = json_number_value(doc);
    for (size_t i = 0; i < sizeof rules / sizeof *rules; i++) {
        const json_t *b = json_object_get(schema, rules[i].kw);
        if (!b)
            continue;
        if (!json_is_number(b))
            return dm_err(err, "schema for %s: \"%s\" is not a number", s_shown(path), rules[i].kw);
        double d = rules[i].sign * (v - json_number_value(b));
        if (d < 0 || (rules[i].exclusive && d == 0)) {
            char got[96], bound[48];
            s_show_value(doc, got, sizeof got);
            s_num(b, bound, sizeof bound);
            return dm_err(err, "%s: must be %s %s, got %s", s_shown(path), rules[i].text, bound, got);
        }
    }
    return 0;
}

/* Length in code points (jansson guarantees valid UTF-8). */
static size_t s_utf8_len(const char *s, size_t bytes)
{
    size_t n = 0;
    for (size_t i = 0; i < bytes; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

static int s_check_string(const json_t *schema, const json_t *doc, const char *path, DmErr *err)
{
    if (!json_is_string(doc))
        return 0;
    size_t n = s_utf8_len(json_string_value(doc), json_string_length(doc));
    const json_t *b;
    if ((b = json_object_get(schema, "minLength")) && (json_int_t)n < json_integer_value(b)) {
        if (json_integer_value(b) == 1)
            return dm_err(err, "%s: must not be empty", s_shown(path));
        return dm_err(err, "%s: must be at least %lld characters long, got %zu", s_shown(path),
                      (long long)json_integer_value(b), n);
    }
    if ((b = json_object_get(schema, "maxLength")) && (json_int_t)n > json_integer_value(b))
        return dm_err(err, "%s: must be at most %lld characters long, got %zu", s_shown(path),
                      (long long)json_integer_value(b), n);
    return 0;
}

static int s_check_object(const json_t *schema, json_t *doc, const char *path, int fill, DmErr *err)
{
    if (!json_is_object(doc))
        return 0;
    const json_t *props = json_object_get(schema, "properties");
    const json_t *addl = json_object_get(schema, "additionalProperties");
    const json_t *req = json_object_get(schema, "required");
    char kpath[S_PATH_MAX];
    const char *key;
    json_t *val;
    if (props && !json_is_object(props))
        return dm_err(err, "schema for %s: \"properties\" is not an object", s_shown(path));
    /* Unknown keys first: a misspelt key also looks like a missing one, and
     * "did you mean" is the more useful message. */
    json_object_foreach(doc, key, val) {
        s_join(kpath, path, key);
        const json_t *sub = props ? json_object_get(props, key) : NULL;
        if (sub) {
            if (s_validate(sub, val, kpath, fill, err))
                return -1;
        } else if (json_is_false(addl)) {
            return s_unknown_key(kpath, key, props, err);
        } else if (json_is_object(addl)) {
            if (s_validate(addl, val, kpath, fill, err))
                return -1;
        }
    }
    if (req) {
        size_t i;
        json_t *r;
        json_array_foreach(req, i, r) {
            const char *name = json_string_value(r);
            if (!name)
                return dm_err(err, "schema for %s: \"required\" lists a non-string", s_shown(path));
            if (json_object_get(doc, name))
                continue;
            s_join(kpath, path, name);
            const json_t *sub = props ? json_object_get(props, name) : NULL;
            const json_t *type = sub ? json_object_get(sub, "type") : NULL;
            char want[128];
            if (type) {
                s_type_list(type, want, sizeof want);
                return dm_err(err, "%s: missing (required %s)", kpath, want);
            }
            return dm_err(err, "%s: missing (required)", kpath);
        }
    }
    if (fill && props) {
        const json_t *sub;
        json_object_foreach((json_t *)props, key, sub) {
            const json_t *def = json_object_get(sub, "default");
            if (def && !json_object_get(doc, key))
                json_object_set_new(doc, key, json_deep_copy(def));
        }
    }
    return 0;
}

static int s_check_array(const json_t *schema, json_t *doc, const char *path, int fill, DmErr *err)
{
    if (!json_is_array(doc))
        return 0;
    const json_t *b;
    size_t n = json_array_size(doc);
    if ((b = json_object_get(schema, "minItems")) && (json_int_t)n < json_integer_value(b))
        return dm_err(err, "%s: needs at least %lld item%s, got %zu", s_shown(path),
                      (long long)json_integer_value(b), json_integer_value(b) == 1 ? "" : "s", n);
    if ((b = json_object_get(schema, "maxItems")) && (json_int_t)n > json_integer_value(b))
        return dm_err(err, "%s: allows at most %lld items, got %zu", s_shown(path),
                      (long long)json_integer_value(b), n);
    const json_t *items = json_object_get(schema, "items");
    if (!items)
        return 0;
    char ipath[S_PATH_MAX];
    for (size_t i = 0; i < n; i++) {
        snprintf(ipath, sizeof ipath, "%s[%zu]", path, i);
        if (s_validate(items, json_array_get(doc, i), ipath, fill, err))
            return -1;
    }
    return 0;
}

/* Exactly one alternative must match.  Alternatives are tried on a copy
 * (no defaults filled), then the matching one is applied for real. */
static int s_check_oneof(const json_t *schema, json_t *doc, const char *path, int fill, DmErr *err)
{
    const json_t *alts = json_object_get(schema, "oneOf");
    if (!alts)
        return 0;
    if (!json_is_array(alts) || !json_array_size(alts))
        return dm_err(err, "schema for %s: \"oneOf\" is not a non-empty array", s_shown(path));
    int match = -1;
    DmErr first = {{0}};
    for (size_t i = 0; i < json_array_size(alts); i++) {
        DmErr e = {{0}};
        json_t *copy = json_deep_copy(doc);
        int rc = s_validate(json_array_get(alts, i), copy, path, 0, &e);
        json_decref(copy);
        if (rc == 0) {
            if (match >= 0)
                return dm_err(err, "%s: matches more than one alternative (%d and %zu)", s_shown(path),
                              match, i);
            match = (int)i;
        } else if (!first.msg[0]) {
            first = e;
        }
    }
    if (match < 0)
        return dm_err(err, "%s: matches none of the %zu alternatives (first: %s)", s_shown(path),
                      json_array_size(alts), first.msg);
    return s_validate(json_array_get(alts, (size_t)match), doc, path, fill, err);
}

static int s_validate(const json_t *schema, json_t *doc, const char *path, int fill, DmErr *err)
{
    if (json_is_true(schema))
        return 0;
    if (s_check_schema(schema, path, err) || s_check_type(schema, doc, path, err) ||
        s_check_enum(schema, doc, path, err) || s_check_number(schema, doc, path, err) ||
        s_check_string(schema, doc, path, err) || s_check_object(schema, doc, path, fill, err) ||
        s_check_array(schema, doc, path, fill, err) || s_check_oneof(schema, doc, path, fill, err))
        return -1;
    return 0;
}

int jsonschema_validate(const json_t *schema, json_t *doc, int fill_defaults, DmErr *err)
{
    if (!schema || !doc)
        return dm_err(err, "jsonschema_validate: no schema or document");
    return s_validate(schema, doc, "", fill_defaults, err);
}

const char *jsonschema_embedded(const char *name, size_t *len)
{
    for (const DmEmbeddedFile *f = dm_embedded_schemas; f->name; f++)
        if (!strcmp(f->name, name)) {
            if (len)
                *len = f->len;
            return (const char *)f->data;
        }
    return NULL;
}

/* Parsed schemas, kept for the life of the process (a handful). */
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
#define S_CACHE 16
static struct {
    const char *name;
    json_t *doc;
} s_cache[S_CACHE];

const json_t *jsonschema_get(const char *name, DmErr *err)
{
    json_t *doc = NULL;
    const DmEmbeddedFile *f;
    for (f = dm_embedded_schemas; f->name && strcmp(f->name, name); f++)
        ;
    if (!f->name) {
        dm_err(err, "schemas/%s: not embedded in this build", name);
        return NULL;
    }
    pthread_mutex_lock(&s_lock);
    int i;
    for (i = 0; i < S_CACHE && s_cache[i].name; i++)
        if (s_cache[i].name == f->name) {
            doc = s_cache[i].doc;
            break;
        }
    if (!doc) {
        json_error_t je;
        if (i == S_CACHE)
            dm_err(err, "schemas/%s: too many schemas (raise S_CACHE)", name);
        else if (!(doc = json_loadb((const char *)f->data, f->len, 0, &je)))
            dm_err(err, "schemas/%s:%d:%d: %s", name, je.line, je.column, je.text);
        else {
            s_cache[i].name = f->name;
            s_cache[i].doc = doc;
        }
    }
    pthread_mutex_unlock(&s_lock);
    return doc;
}
