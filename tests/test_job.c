/* test_job.c - job files: the embedded schema documents every key, errors
 * name the key path and what was expected, defaults are filled, relative
 * paths resolve against the job file's folder; the validator's keywords on
 * a schema of their own. */
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/job.h"
#include "common/jsonschema.h"
#include "tutil.h"

#define S_MIN "\"model\": \"m\", \"output\": \"o\", \"corpus\": {\"path\": \"c.json\"}"

/* Parse `text`, expect failure with `needle` in the message. */
static void s_expect_error(const char *text, const char *needle)
{
    Job *j = NULL;
    DmErr err = {{0}};
    int rc = job_parse(text, "job.json", &j, &err);
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_PTR_NULL(j);
    int found = strstr(err.msg, needle) != NULL;
    if (!found)
        printf("\n  expected \"%s\" in \"%s\"", needle, err.msg);
    CU_ASSERT(found);
    /* one line, starting with the document's name */
    CU_ASSERT(strchr(err.msg, '\n') == NULL);
    CU_ASSERT(strncmp(err.msg, "job.json", 8) == 0);
    job_free(&j);
}

static void t_defaults(void)
{
    Job *j = NULL;
    DmErr err = {{0}};
    int rc = job_parse("{" S_MIN "}", "job.json", &j, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(j->stage, "infer");
    CU_ASSERT_STRING_EQUAL(j->model, "m");
    CU_ASSERT_STRING_EQUAL(j->output, "o");
    CU_ASSERT_EQUAL(j->corpus.format, CORPUS_DOCVQA);
    CU_ASSERT_STRING_EQUAL(j->corpus.path, "c.json");
    CU_ASSERT_PTR_NULL(j->corpus.image_root);
    CU_ASSERT_PTR_NULL(j->corpus.questions);
    CU_ASSERT_EQUAL(j->corpus.pdf_dpi, 200);
    CU_ASSERT_EQUAL(j->pages_per_shard, 1);
    CU_ASSERT_DOUBLE_EQUAL(j->lease_seconds, 600.0, 0);
    CU_ASSERT_DOUBLE_EQUAL(j->page_timeout_seconds, 300.0, 0); /* half the lease, one page a shard */
    CU_ASSERT_EQUAL(j->corpus.max_page_pixels, 50000000);
    CU_ASSERT_EQUAL(j->max_lease_expiries, 3);
    CU_ASSERT_PTR_NULL(j->worker_keys);
    CU_ASSERT_DOUBLE_EQUAL(j->heartbeat_seconds, 1.0, 0);
    CU_ASSERT_EQUAL(j->heartbeat_liveness, 5);
    CU_ASSERT_EQUAL(j->credit, 2);
    CU_ASSERT_EQUAL(j->commit_every, 256);
    CU_ASSERT_EQUAL(j->max_length, 0);
    CU_ASSERT_EQUAL(j->threads, 0);
    CU_ASSERT_EQUAL(j->precision, 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j->doc, "precision")), "fp32");
    CU_ASSERT_EQUAL(j->quiet, 0);
    CU_ASSERT_STRING_EQUAL(j->endpoint, "tcp://*:0");
    /* the document carries the filled defaults too */
    const json_t *c = json_object_get(j->doc, "corpus");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "format")), "docvqa");
    CU_ASSERT(json_is_null(json_object_get(c, "image_root")));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j->doc, "commit_every")), 256);
    CU_ASSERT(json_is_false(json_object_get(j->doc, "quiet")));
    job_free(&j);
    CU_ASSERT_PTR_NULL(j);
}

static void t_values(void)
{
    Job *j = NULL;
    DmErr err = {{0}};
    const char *text =
        "{\"stage\": \"cache-logits\", \"model\": \"m\", \"output\": \"o\", \"corpus\": {\"format\": "
        "\"jsonl\", \"path\": \"q.jsonl\", \"image_root\": \"imgs\", \"pdf_dpi\": 300}, "
        "\"pages_per_shard\": 4, \"lease_seconds\": 2.5, \"heartbeat_seconds\": 0.25, "
        "\"heartbeat_liveness\": 3, \"credit\": 1, \"commit_every\": 16, \"max_length\": 64, "
        "\"threads\": 2.0, \"quiet\": true, \"endpoint\": \"tcp://127.0.0.1:5555\", "
        "\"max_lease_expiries\": 5, \"worker_keys\": \"keys.txt\"}";
    int rc = job_parse(text, "job.json", &j, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(j->stage, "cache-logits");
    CU_ASSERT_EQUAL(j->corpus.format, CORPUS_JSONL);
    CU_ASSERT_STRING_EQUAL(j->corpus.image_root, "imgs");
    CU_ASSERT_EQUAL(j->corpus.pdf_dpi, 300);
    CU_ASSERT_EQUAL(j->pages_per_shard, 4);
    CU_ASSERT_DOUBLE_EQUAL(j->lease_seconds, 2.5, 0);
    CU_ASSERT_DOUBLE_EQUAL(j->page_timeout_seconds, 0, 0); /* a lease this short: no watchdog */
    CU_ASSERT_EQUAL(j->max_lease_expiries, 5);
    CU_ASSERT_STRING_EQUAL(j->worker_keys, "keys.txt");
    CU_ASSERT_DOUBLE_EQUAL(j->heartbeat_seconds, 0.25, 0);
    CU_ASSERT_EQUAL(j->heartbeat_liveness, 3);
    CU_ASSERT_EQUAL(j->credit, 1);
    CU_ASSERT_EQUAL(j->commit_every, 16);
    CU_ASSERT_EQUAL(j->max_length, 64);
    CU_ASSERT_EQUAL(j->threads, 2); /* 2.0 is an integer in JSON Schema */
    CU_ASSERT_EQUAL(j->quiet, 1);
    CU_ASSERT_STRING_EQUAL(j->endpoint, "tcp://127.0.0.1:5555");
    job_free(&j);
}

static void t_unknown_key(void)
{
    s_expect_error("{" S_MIN ", \"outptu\": \"x\"}", "job.json: outptu: unknown key (did you mean \"output\"?)");
    s_expect_error("{\"model\": \"m\", \"output\": \"o\", \"corpus\": {\"path\": \"c\", \"formt\": \"jsonl\"}}",
                   "job.json: corpus.formt: unknown key (did you mean \"format\"?)");
    /* no near miss: the allowed keys are listed */
    s_expect_error("{" S_MIN ", \"colour\": \"red\"}", "colour: unknown key (allowed: stage, model, output, corpus,");
    /* a misspelt required key is reported as unknown, not as missing */
    s_expect_error("{\"model\": \"m\", \"outptu\": \"o\", \"corpus\": {\"path\": \"c\"}}",
                   "outptu: unknown key (did you mean \"output\"?)");
}

static void t_missing_key(void)
{
    s_expect_error("{\"model\": \"m\", \"output\": \"o\"}", "job.json: corpus: missing (required object)");
    s_expect_error("{\"output\": \"o\", \"corpus\": {\"path\": \"c\"}}", "job.json: model: missing (required string)");
    s_expect_error("{\"model\": \"m\", \"output\": \"o\", \"corpus\": {\"format\": \"jsonl\"}}",
                   "job.json: corpus.path: missing (required string)");
    s_expect_error("{\"model\": \"m\", \"output\": \"o\", \"corpus\": {\"format\": \"archive\", \"path\": \"d\"}}",
                   "job.json: corpus.questions: required when corpus.format is \"archive\"");
    s_expect_error("{\"model\": \"m\", \"output\": \"o\", \"corpus\": {\"path\": \"d\", \"questions\": \"q.txt\"}}",
                   "job.json: corpus.questions: only for corpus.format \"archive\"");
}

static void t_wrong_type(void)
{
    s_expect_error("{" S_MIN ", \"pages_per_shard\": \"2\"}",
                   "job.json: pages_per_shard: expected integer, got string \"2\"");
    s_expect_error("{" S_MIN ", \"pages_per_shard\": 1.5}", "pages_per_shard: expected integer, got number 1.5");
    s_expect_error("{" S_MIN ", \"quiet\": 1}", "job.json: quiet: expected boolean, got integer 1");
    s_expect_error("{" S_MIN ", \"lease_seconds\": null}", "lease_seconds: expected number, got null");
    s_expect_error("{\"model\": \"m\", \"output\": \"o\", \"corpus\": []}", "job.json: corpus: expected object, got array");
    s_expect_error("{\"model\": \"m\", \"output\": \"o\", \"corpus\": {\"path\": \"c\", \"image_root\": 5}}",
                   "job.json: corpus.image_root: expected string or null, got integer 5");
    s_expect_error("{\"model\": 7, \"output\": \"o\", \"corpus\": {\"path\": \"c\"}}",
                   "job.json: model: expected string, got integer 7");
    s_expect_error("[1, 2]", "job.json: (top level): expected object, got array");
}

static void t_bad_value(void)
{
    s_expect_error("{\"model\": \"m\", \"output\": \"o\", \"corpus\": {\"path\": \"c\", \"format\": \"xml\"}}",
                   "job.json: corpus.format: expected one of \"docvqa\", \"jsonl\", \"archive\", got string \"xml\"");
    s_expect_error("{" S_MIN ", \"stage\": \"train\"}",
                   "job.json: stage: expected one of \"infer\", \"cache-logits\", \"distill\", \"analyze\", got "
                   "string \"train\"");
    s_expect_error("{" S_MIN ", \"credit\": 0}", "job.json: credit: must be at least 1, got integer 0");
    s_expect_error("{" S_MIN ", \"credit\": 1e12}", "job.json: credit: must be at most 1000, got number 1000000000000.0");
    s_expect_error("{" S_MIN ", \"commit_every\": 99999999999}", "job.json: commit_every: must be at most 1000000, got integer 99999999999");
    s_expect_error("{" S_MIN ", \"lease_seconds\": 0}", "job.json: lease_seconds: must be greater than 0, got integer 0");
    /* the watchdog must fire before the lease would move a hung page on */
    s_expect_error("{" S_MIN ", \"lease_seconds\": 100, \"pages_per_shard\": 2, \"page_timeout_seconds\": 50}",
                   "page_timeout_seconds 50 x pages_per_shard 2 is not less than lease_seconds 100");
    s_expect_error("{\"model\": \"m\", \"output\": \"o\", \"corpus\": {\"path\": \"c\", \"max_page_pixels\": 0}}",
                   "corpus.max_page_pixels: must be at least 1");
    s_expect_error("{" S_MIN ", \"max_lease_expiries\": 0}", "job.json: max_lease_expiries:");
    s_expect_error("{" S_MIN ", \"worker_keys\": \"\"}", "job.json: worker_keys:");
    s_expect_error("{\"model\": \"m\", \"output\": \"o\", \"corpus\": {\"path\": \"c\", \"pdf_dpi\": 5000}}",
                   "job.json: corpus.pdf_dpi: must be at most 2400, got integer 5000");
    s_expect_error("{\"model\": \"\", \"output\": \"o\", \"corpus\": {\"path\": \"c\"}}", "job.json: model: must not be empty");
    s_expect_error("{" S_MIN ", \"precision\": \"fp16\"}",
                   "job.json: precision: expected one of \"fp32\", \"bf16\", got string \"fp16\"");
    s_expect_error("{" S_MIN ", \"stage\": \"cache-logits\", \"precision\": \"bf16\"}",
                   "job.json: precision: \"bf16\" is for the infer stage");
}

static void t_precision(void)
{
    Job *j = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(job_parse("{" S_MIN ", \"precision\": \"bf16\"}", "job.json", &j, &err), 0);
    CU_ASSERT_EQUAL(j->precision, 1);
    job_free(&j);
}

static void t_bad_json(void)
{
    s_expect_error("{\"model\": \"m\",\n \"output\" \"o\"}", "job.json:2:");
    s_expect_error("{" S_MIN ", \"model\": \"again\"}", "duplicate object key");
    Job *j = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL(job_load("data/corpus/no-such-job.json", &j, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "data/corpus/no-such-job.json: No such file"));
}

/* Relative paths resolve against the job file's folder (absolute), and the
 * resolved document parses back to the same job. */
static void t_load_relative(void)
{
    char cwd[PATH_MAX], want[PATH_MAX + 64];
    CU_ASSERT_PTR_NOT_NULL_FATAL(getcwd(cwd, sizeof cwd));
    Job *j = NULL;
    DmErr err = {{0}};
    int rc = job_load("data/corpus/job_docvqa.json", &j, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    snprintf(want, sizeof want, "%s/data/corpus/../tiny-a", cwd);
    CU_ASSERT_STRING_EQUAL(j->model, want);
    snprintf(want, sizeof want, "%s/data/corpus/out/answers", cwd);
    CU_ASSERT_STRING_EQUAL(j->output, want);
    snprintf(want, sizeof want, "%s/data/corpus/docvqa_small.json", cwd);
    CU_ASSERT_STRING_EQUAL(j->corpus.path, want);
    CU_ASSERT_EQUAL(j->credit, 3);
    CU_ASSERT_EQUAL(j->quiet, 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j->doc, "model")), j->model);

    char *text = json_dumps(j->doc, 0);
    Job *k = NULL;
    CU_ASSERT_EQUAL_FATAL(job_parse(text, "wire", &k, &err), 0);
    CU_ASSERT_STRING_EQUAL(k->model, j->model);
    CU_ASSERT_STRING_EQUAL(k->corpus.path, j->corpus.path);
    CU_ASSERT_EQUAL(k->credit, 3);
    CU_ASSERT(json_equal(k->doc, j->doc));
    free(text);
    job_free(&k);
    job_free(&j);

    /* absolute paths stay; ./ is dropped */
    rc = job_load("./data/corpus/job_archive.json", &j, &err);
    if (rc)
        printf("\n  %s", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(j->model, "/models/donut");
    CU_ASSERT_EQUAL(j->corpus.format, CORPUS_ARCHIVE);
    snprintf(want, sizeof want, "%s/data/corpus/questions.txt", cwd);
    CU_ASSERT_STRING_EQUAL(j->corpus.questions, want);
    CU_ASSERT_EQUAL(j->corpus.pdf_dpi, 150);
    job_free(&j);
}

/* The schema documents every key: a description everywhere, a default on
 * every optional key, and every default valid under its own schema. */
static void s_check_props(const json_t *schema, const char *path, int *bad)
{
    const json_t *props = json_object_get(schema, "properties");
    const json_t *req = json_object_get(schema, "required");
    const char *key;
    json_t *sub;
    json_object_foreach((json_t *)props, key, sub) {
        int required = 0;
        size_t i;
        json_t *r;
        json_array_foreach(req, i, r) required |= !strcmp(json_string_value(r), key);
        if (!json_is_string(json_object_get(sub, "description"))) {
            printf("\n  %s%s: no description", path, key);
            (*bad)++;
        }
        const json_t *def = json_object_get(sub, "default");
        if (!required && !def) {
            printf("\n  %s%s: optional without a default", path, key);
            (*bad)++;
        }
        if (required && def) {
            printf("\n  %s%s: required and has a default", path, key);
            (*bad)++;
        }
        if (def) {
            DmErr err = {{0}};
            json_t *copy = json_deep_copy(def);
            if (jsonschema_validate(sub, copy, 0, &err)) {
                printf("\n  %s%s: default invalid: %s", path, key, err.msg);
                (*bad)++;
            }
            json_decref(copy);
        }
        if (json_object_get(sub, "properties")) {
            char p[256];
            snprintf(p, sizeof p, "%s%s.", path, key);
            s_check_props(sub, p, bad);
        }
    }
}

static void t_schema_documented(void)
{
    DmErr err = {{0}};
    const json_t *schema = jsonschema_get("job.schema.json", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(schema);
    CU_ASSERT_PTR_EQUAL(schema, jsonschema_get("job.schema.json", &err)); /* cached */
    int bad = 0;
    s_check_props(schema, "", &bad);
    CU_ASSERT_EQUAL(bad, 0);
    /* the embedded bytes are the file's */
    size_t len = 0;
    const char *text = jsonschema_embedded("job.schema.json", &len);
    FILE *f = fopen("../schemas/job.schema.json", "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char *buf = malloc(len + 2);
    size_t got = fread(buf, 1, len + 1, f);
    fclose(f);
    CU_ASSERT_EQUAL(got, len);
    CU_ASSERT(text && got == len && memcmp(buf, text, len) == 0);
    CU_ASSERT_EQUAL(strlen(text), len);
    free(buf);
    CU_ASSERT_PTR_NULL(jsonschema_embedded("nope.json", NULL));
    CU_ASSERT_PTR_NULL(jsonschema_get("nope.json", &err));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "nope.json: not embedded"));
}

/* The validator's keywords on a schema of their own. */
static int s_validate(const char *schema_text, const char *doc_text, int fill, char *msg, json_t **filled)
{
    json_t *schema = json_loads(schema_text, 0, NULL);
    json_t *doc = json_loads(doc_text, JSON_DECODE_ANY, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(schema);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    DmErr err = {{0}};
    int rc = jsonschema_validate(schema, doc, fill, &err);
    strcpy(msg, err.msg);
    if (filled)
        *filled = doc;
    else
        json_decref(doc);
    json_decref(schema);
    return rc;
}

static void t_validator(void)
{
    char msg[1024];
    const char *s1 = "{\"type\": \"object\", \"additionalProperties\": false, \"properties\": {"
                     "\"list\": {\"type\": \"array\", \"minItems\": 1, \"maxItems\": 3, \"items\": {\"type\": "
                     "\"object\", \"required\": [\"name\"], \"properties\": {\"name\": {\"type\": \"string\", "
                     "\"maxLength\": 4}, \"n\": {\"type\": \"integer\", \"default\": 7}}}},"
                     "\"pick\": {\"oneOf\": [{\"type\": \"integer\", \"minimum\": 10}, {\"type\": \"string\", "
                     "\"enum\": [\"a\", \"b\"]}]},"
                     "\"k\": {\"const\": 3}, \"free\": {\"type\": \"object\", \"additionalProperties\": {\"type\": \"boolean\"}}}}";
    json_t *doc = NULL;
    CU_ASSERT_EQUAL(s_validate(s1, "{\"list\": [{\"name\": \"x\"}, {\"name\": \"y\", \"n\": 2}]}", 1, msg, &doc), 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(json_object_get(doc, "list"), 0), "n")), 7);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(json_object_get(doc, "list"), 1), "n")), 2);
    json_decref(doc);
    CU_ASSERT_EQUAL(s_validate(s1, "{\"list\": [{\"name\": \"x\"}, {\"name\": 5}]}", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "list[1].name: expected string, got integer 5");
    CU_ASSERT_EQUAL(s_validate(s1, "{\"list\": [{}]}", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "list[0].name: missing (required string)");
    CU_ASSERT_EQUAL(s_validate(s1, "{\"list\": []}", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "list: needs at least 1 item, got 0");
    CU_ASSERT_EQUAL(s_validate(s1, "{\"list\": [{\"name\": \"a\"}, {\"name\": \"a\"}, {\"name\": \"a\"}, {\"name\": \"a\"}]}", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "list: allows at most 3 items, got 4");
    CU_ASSERT_EQUAL(s_validate(s1, "{\"list\": [{\"name\": \"abcde\"}]}", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "list[0].name: must be at most 4 characters long, got 5");
    /* code points, not bytes */
    CU_ASSERT_EQUAL(s_validate(s1, "{\"list\": [{\"name\": \"\\u00e9\\u00e9\\u00e9\\u00e9\"}]}", 1, msg, NULL), 0);
    CU_ASSERT_EQUAL(s_validate(s1, "{\"pick\": 12}", 1, msg, NULL), 0);
    CU_ASSERT_EQUAL(s_validate(s1, "{\"pick\": \"b\"}", 1, msg, NULL), 0);
    CU_ASSERT_EQUAL(s_validate(s1, "{\"pick\": 3}", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "pick: matches none of the 2 alternatives (first: pick: must be at least 10, got integer 3)");
    CU_ASSERT_EQUAL(s_validate("{\"type\": \"object\", \"additionalProperties\": false}", "{\"a\": 1}", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "a: unknown key (no keys allowed here)");
    CU_ASSERT_EQUAL(s_validate(s1, "{\"k\": 4}", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "k: expected 3, got integer 4");
    CU_ASSERT_EQUAL(s_validate(s1, "{\"free\": {\"x\": true, \"y\": \"no\"}}", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "free.y: expected boolean, got string \"no\"");
    /* overlapping alternatives */
    CU_ASSERT_EQUAL(s_validate("{\"oneOf\": [{\"type\": \"number\"}, {\"type\": \"integer\"}]}", "3", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "(top level): matches more than one alternative (0 and 1)");
    /* a schema keyword we do not implement is an error, not ignored */
    CU_ASSERT_EQUAL(s_validate("{\"type\": \"string\", \"pattern\": \"^a\"}", "\"b\"", 1, msg, NULL), -1);
    CU_ASSERT_STRING_EQUAL(msg, "schema for (top level): unsupported keyword \"pattern\"");
    /* long strings are cut in messages */
    CU_ASSERT_EQUAL(s_validate("{\"type\": \"integer\"}", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"", 1, msg, NULL), -1);
    CU_ASSERT(strlen(msg) < 100);
}

/* keep_features: read for cache-logits, refused elsewhere and with shards
 * whose features could not travel in one message. */
static void t_keep_features(void)
{
    Job *j = NULL;
    DmErr err = {{0}};
    int rc = job_parse("{" S_MIN ", \"stage\": \"cache-logits\", \"keep_features\": true, "
                       "\"pages_per_shard\": 4}", "job.json", &j, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(j->keep_features, 1);
    job_free(&j);
    s_expect_error("{" S_MIN ", \"keep_features\": true}", "only for stage \"cache-logits\"");
    s_expect_error("{" S_MIN ", \"stage\": \"cache-logits\", \"keep_features\": true, "
                   "\"pages_per_shard\": 5}", "pages_per_shard 5: with keep_features at most 4");
}

void tests_job(void)
{
    TU_SUITE("job", {"defaults filled", t_defaults}, {"every key read", t_values},
             {"unknown key names its path", t_unknown_key}, {"missing key names its path", t_missing_key},
             {"wrong type names path and expected type", t_wrong_type},
             {"bad enum and bounds", t_bad_value}, {"precision", t_precision}, {"syntax errors and missing file", t_bad_json},
             {"relative paths resolve against the job folder", t_load_relative},
             {"schema documents every key", t_schema_documented}, {"validator keywords", t_validator},
             {"keep_features", t_keep_features});
}
