/* logit_store.c - keys, checks and accessors of teacher-logit stores
 * (logit_store.h). */
#include "common/logit_store.h"

#include <stdlib.h>
#include <string.h>

#include "common/records.h"
#include "common/tensorfile.h" /* dm_f16_to_f32 */

void logit_key(int64_t qid, unsigned answer_index, unsigned char key[LOGIT_KEY_LEN])
{
    store_key_u64((uint64_t)qid, key);
    key[8] = (unsigned char)(answer_index >> 8);
    key[9] = (unsigned char)answer_index;
}

void logit_key_parse(const unsigned char key[LOGIT_KEY_LEN], int64_t *qid, unsigned *answer_index)
{
    *qid = (int64_t)store_key_to_u64(key);
    *answer_index = ((unsigned)key[8] << 8) | key[9];
}

int logit_store_check(Store *s, const char *teacher_fp, const char *tok_fp, DmErr *err)
{
    const char *path = store_path(s);
    char *kind = NULL, *tfp = NULL, *kfp = NULL;
    int rc = -1;
    if (store_meta_read(s, "kind", &kind, err) < 0 ||
        store_meta_read(s, "teacher_fingerprint", &tfp, err) < 0 ||
        store_meta_read(s, "tokenizer_fingerprint", &kfp, err) < 0)
        goto done;
    if (!kind || strcmp(kind, "logits") != 0) {
        dm_err(err, "%s: not a teacher-logit store (kind \"%s\", want \"logits\")", path,
               kind ? kind : "");
        goto done;
    }
    if (teacher_fp && teacher_fp[0] && (!tfp || strcmp(tfp, teacher_fp) != 0)) {
        dm_err(err, "%s: teacher mismatch: the store was made by teacher %s, this teacher is %s",
               path, tfp ? tfp : "(unknown)", teacher_fp);
        goto done;
    }
    if (tok_fp && tok_fp[0] && (!kfp || strcmp(kfp, tok_fp) != 0)) {
        dm_err(err, "%s: tokenizer mismatch: the store was made with tokenizer %s, this one is %s",
               path, kfp ? kfp : "(unknown)", tok_fp);
        goto done;
    }
    rc = 0;
done:
    free(kind);
    free(tfp);
    free(kfp);
    return rc;
}

int logit_record_pack(const Docmint__LogitRecord *r, uint8_t **buf, size_t *len, DmErr *err)
{
    *buf = NULL;
    *len = 0;
    if (r->answer && !records_utf8_valid(r->answer, strlen(r->answer)))
        return dm_err(err, "question %lld answer %u: answer text is not valid UTF-8",
                      (long long)r->question_id, r->answer_index);
    if (r->page_id && !records_utf8_valid(r->page_id, strlen(r->page_id)))
        return dm_err(err, "question %lld: page_id is not valid UTF-8", (long long)r->question_id);
    size_t n = docmint__logit_record__get_packed_size(r);
    *buf = malloc(n ? n : 1);
    if (!*buf)
        return dm_err(err, "out of memory packing a logit record");
    *len = docmint__logit_record__pack(r, *buf);
    return 0;
}

Docmint__LogitRecord *logit_record_unpack(const void *buf, size_t len, DmErr *err)
{
    Docmint__LogitRecord *r = docmint__logit_record__unpack(NULL, len, buf);
    if (!r) {
        dm_err(err, "not a LogitRecord (%zu bytes)", len);
        return NULL;
    }
    if (logit_record_validate(r, err)) {
        docmint__logit_record__free_unpacked(r, NULL);
        return NULL;
    }
    return r;
}

void logit_record_free(Docmint__LogitRecord **r)
{
    if (r && *r) {
        docmint__logit_record__free_unpacked(*r, NULL);
        *r = NULL;
    }
}

int logit_record_positions(const Docmint__LogitRecord *r)
{
    return (int)r->n_token_ids - 1 - (int)r->answer_start;
}

int logit_record_validate(const Docmint__LogitRecord *r, DmErr *err)
{
    long long q = (long long)r->question_id;
    unsigned a = r->answer_index;
    int P = logit_record_positions(r);
    if (P < 1 || r->answer_start >= r->n_token_ids)
        return dm_err(err, "record %lld/%u: answer_start %u outside %zu tokens", q, a,
                      r->answer_start, r->n_token_ids);
    if (r->n_targets != (size_t)P)
        return dm_err(err, "record %lld/%u: %zu targets for %d positions", q, a, r->n_targets, P);
    if (r->k < 1 || r->k > r->vocab || (r->full && r->k != r->vocab))
        return dm_err(err, "record %lld/%u: k %u with vocabulary %u", q, a, r->k, r->vocab);
    if (r->top_logits.len != (size_t)P * r->k * 2)
        return dm_err(err, "record %lld/%u: top_logits holds %zu bytes, want %d x %u x 2", q, a,
                      r->top_logits.len, P, r->k);
    if (!r->full && ((r->id_bytes != 2 && r->id_bytes != 4) ||
                     r->top_ids.len != (size_t)P * r->k * r->id_bytes))
        return dm_err(err, "record %lld/%u: top_ids holds %zu bytes of %u-byte ids, want %d x %u",
                      q, a, r->top_ids.len, r->id_bytes, P, r->k);
    if (r->n_temperatures < 1 || r->n_lse != (size_t)P * r->n_temperatures)
        return dm_err(err, "record %lld/%u: %zu lse values for %d positions x %zu temperatures", q,
                      a, r->n_lse, P, r->n_temperatures);
    return 0;
}

double logit_record_value(const Docmint__LogitRecord *r, int p, int i)
{
    const uint8_t *b = r->top_logits.data + ((size_t)p * r->k + (size_t)i) * 2;
    return (double)r->shift[p] + dm_f16_to_f32((uint16_t)(b[0] | (b[1] << 8)));
}

uint32_t logit_record_id(const Docmint__LogitRecord *r, int p, int i)
{
    if (r->full)
        return (uint32_t)i;
    const uint8_t *b = r->top_ids.data + ((size_t)p * r->k + (size_t)i) * r->id_bytes;
    if (r->id_bytes == 2)
        return (uint32_t)b[0] | ((uint32_t)b[1] << 8);
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}

int logit_record_temp_index(const Docmint__LogitRecord *r, double T)
{
    for (size_t i = 0; i < r->n_temperatures; i++)
        if (r->temperatures[i] == (float)T)
            return (int)i;
    return -1;
}

/* ---- features ------------------------------------------------------- */

Docmint__FeatureRecord *feature_record_make(const char *page_id, const float *enc, int tokens,
                                            int dim, DmErr *err)
{
    Docmint__FeatureRecord *r = calloc(1, sizeof *r);
    size_t n = (size_t)tokens * (size_t)dim;
    if (r) {
        docmint__feature_record__init(r);
        r->page_id = strdup(page_id ? page_id : "");
        r->values.data = malloc(n ? 2 * n : 1);
    }
    if (!r || !r->page_id || !r->values.data) {
        if (r) {
            free(r->page_id);
            free(r->values.data);
        }
        free(r);
        dm_err(err, "page %s: out of memory for its %d x %d features", page_id, tokens, dim);
        return NULL;
    }
    r->tokens = (uint32_t)tokens;
    r->dim = (uint32_t)dim;
    r->values.len = 2 * n;
    for (size_t i = 0; i < n; i++) {
        uint16_t h = dm_f32_to_f16(enc[i]);
        r->values.data[2 * i] = (uint8_t)h;
        r->values.data[2 * i + 1] = (uint8_t)(h >> 8);
    }
    return r;
}

void feature_record_free(Docmint__FeatureRecord **pr)
{
    Docmint__FeatureRecord *r = *pr;
    if (!r)
        return;
    /* Built by feature_record_make: the strings are ours, or protobuf-c's
     * shared empty string. */
    if (r->page_id != protobuf_c_empty_string)
        free(r->page_id);
    if (r->image_path != protobuf_c_empty_string)
        free(r->image_path);
    free(r->values.data);
    free(r);
    *pr = NULL;
}

int feature_record_validate(const Docmint__FeatureRecord *r, DmErr *err)
{
    const char *page = r->page_id ? r->page_id : "";
    if (r->tokens < 1 || r->dim < 1)
        return dm_err(err, "features of page %s: %u tokens x %u dims", page, r->tokens, r->dim);
    if (r->values.len != (size_t)r->tokens * r->dim * 2)
        return dm_err(err, "features of page %s: values hold %zu bytes, want %u x %u x 2 = %zu",
                      page, r->values.len, r->tokens, r->dim, (size_t)r->tokens * r->dim * 2);
    return 0;
}

int feature_record_pack(const Docmint__FeatureRecord *r, uint8_t **buf, size_t *len, DmErr *err)
{
    *buf = NULL;
    *len = 0;
    if (!r->page_id || !records_utf8_valid(r->page_id, strlen(r->page_id)))
        return dm_err(err, "features: page_id is not valid UTF-8");
    if (r->image_path && !records_utf8_valid(r->image_path, strlen(r->image_path)))
        return dm_err(err, "features of page %s: image_path is not valid UTF-8", r->page_id);
    if (feature_record_validate(r, err))
        return -1;
    size_t n = docmint__feature_record__get_packed_size(r);
    *buf = malloc(n ? n : 1);
    if (!*buf)
        return dm_err(err, "features of page %s: out of memory packing %zu bytes", r->page_id, n);
    *len = docmint__feature_record__pack(r, *buf);
    return 0;
}

Docmint__FeatureRecord *feature_record_unpack(const void *buf, size_t len, DmErr *err)
{
    Docmint__FeatureRecord *r = docmint__feature_record__unpack(NULL, len, buf);
    if (!r) {
        dm_err(err, "not a FeatureRecord (%zu bytes)", len);
        return NULL;
    }
    if (feature_record_validate(r, err)) {
        docmint__feature_record__free_unpacked(r, NULL);
        return NULL;
    }
    return r;
}

int feature_record_values(const Docmint__FeatureRecord *r, float **out, DmErr *err)
{
    size_t n = (size_t)r->tokens * r->dim;
    *out = malloc(n * sizeof **out);
    if (!*out)
        return dm_err(err, "features of page %s: out of memory for %zu floats", r->page_id, n);
    const uint8_t *b = r->values.data;
    for (size_t i = 0; i < n; i++)
        (*out)[i] = dm_f16_to_f32((uint16_t)(b[2 * i] | (b[2 * i + 1] << 8)));
    return 0;
}

int logit_store_features(Store *s, const char *page_id, float **out, int *tokens, int *dim,
                         DmErr *err)
{
    *out = NULL;
    *tokens = *dim = 0;
    void *val = NULL;
    size_t vlen = 0;
    int found = store_get(s, STORE_FEATURES, page_id, strlen(page_id), &val, &vlen, err);
    if (found <= 0)
        return found;
    Docmint__FeatureRecord *r = feature_record_unpack(val, vlen, err);
    free(val);
    int rc = -1;
    if (!r)
        dm_err_prefix(err, "%s: features of page %s", store_path(s), page_id);
    else if (strcmp(r->page_id, page_id) != 0)
        dm_err(err, "%s: the features stored under page %s are of page %s", store_path(s),
               page_id, r->page_id);
    else if (feature_record_values(r, out, err) == 0)
        rc = 1;
    if (rc == 1) {
        *tokens = (int)r->tokens;
        *dim = (int)r->dim;
    }
    if (r)
        docmint__feature_record__free_unpacked(r, NULL);
    return rc;
}
