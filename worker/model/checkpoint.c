/* checkpoint.c - read a Donut checkpoint folder as users download it:
 * config.json (VisionEncoderDecoder = donut-swin + mbart), the weights from
 * model.safetensors or pytorch_model.bin, and the pruning record of a
 * student (pruning.json).  Every tensor is checked by name and shape
 * against the config; an error names the tensor and the file. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/model/donut.h"
#include "worker/model/plan.h"

/* ------------------------------------------------------------------ config */

typedef struct CfgCtx {
    json_t *obj;
    const char *what;    /* file name for messages */
    const char *section; /* "encoder" / "decoder" / "" */
    DmErr *err;
} CfgCtx;

static int s_int(CfgCtx *c, const char *key, int def, int required, int *out)
{
    json_t *v = json_object_get(c->obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return dm_err(c->err, "%s: %s%s%s is missing", c->what, c->section,
                          *c->section ? "." : "", key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return dm_err(c->err, "%s: %s%s%s must be an integer", c->what, c->section,
                      *c->section ? "." : "", key);
    json_int_t x = json_integer_value(v);
    if (x < -1 || x > 1 << 30)
        return dm_err(c->err, "%s: %s%s%s = %lld is out of range", c->what, c->section,
                      *c->section ? "." : "", key, (long long)x);
    *out = (int)x;
    return 0;
}

static int s_num(CfgCtx *c, const char *key, double def, double *out)
{
    json_t *v = json_object_get(c->obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return dm_err(c->err, "%s: %s.%s must be a number", c->what, c->section, key);
    *out = json_number_value(v);
    return 0;
}

static int s_bool(CfgCtx *c, const char *key, int def, int *out)
{
    json_t *v = json_object_get(c->obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return dm_err(c->err, "%s: %s.%s must be true or false", c->what, c->section, key);
    *out = json_is_true(v);
    return 0;
}

static const char *s_str(CfgCtx *c, const char *key)
{
    json_t *v = json_object_get(c->obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int s_int_list(CfgCtx *c, const char *key, int *dst, int max, int *n)
{
    json_t *v = json_object_get(c->obj, key);
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > (size_t)max)
        return dm_err(c->err, "%s: %s.%s must be a list of 1..%d integers", c->what, c->section,
                      key, max);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *x = json_array_get(v, i);
        if (!json_is_integer(x) || json_integer_value(x) <= 0 || json_integer_value(x) > 1 << 20)
            return dm_err(c->err, "%s: %s.%s[%zu] must be a positive integer", c->what,
                          c->section, key, i);
        dst[i] = (int)json_integer_value(x);
    }
    *n = (int)json_array_size(v);
    return 0;
}

static int s_parse_encoder(CfgCtx *c, SwinConfig *e)
{
    const char *mt = s_str(c, "model_type");
    if (!mt || (strcmp(mt, "donut-swin") != 0 && strcmp(mt, "swin") != 0))
        return dm_err(c->err, "%s: encoder.model_type is \"%s\"; docmint runs \"donut-swin\"",
                      c->what, mt ? mt : "(missing)");
    json_t *isz = json_object_get(c->obj, "image_size");
    if (json_is_integer(isz)) {
        e->image_h = e->image_w = (int)json_integer_value(isz);
    } else if (json_is_array(isz) && json_array_size(isz) == 2 &&
               json_is_integer(json_array_get(isz, 0)) &&
               json_is_integer(json_array_get(isz, 1))) {
        /* DonutSwinConfig stores image_size as [height, width]. */
        e->image_h = (int)json_integer_value(json_array_get(isz, 0));
        e->image_w = (int)json_integer_value(json_array_get(isz, 1));
    } else {
        return dm_err(c->err, "%s: encoder.image_size must be an integer or [height, width]",
                      c->what);
    }
    int nh;
    double mlp = 4.0, eps = 1e-5;
    if (s_int(c, "patch_size", 4, 0, &e->patch) || s_int(c, "num_channels", 3, 0, &e->channels) ||
        s_int(c, "embed_dim", 96, 1, &e->embed_dim) ||
        s_int_list(c, "depths", e->depths, DM_MAX_STAGES, &e->nstages) ||
        s_int_list(c, "num_heads", e->heads, DM_MAX_STAGES, &nh) ||
        s_int(c, "window_size", 7, 1, &e->window) || s_num(c, "mlp_ratio", 4.0, &mlp) ||
        s_bool(c, "qkv_bias", 1, &e->qkv_bias) || s_num(c, "layer_norm_eps", 1e-5, &eps))
        return -1;
    if (nh != e->nstages)
        return dm_err(c->err, "%s: encoder.num_heads has %d entries but depths has %d", c->what,
                      nh, e->nstages);
    if (e->image_h <= 0 || e->image_w <= 0 || e->patch <= 0 || e->channels <= 0 ||
        e->embed_dim <= 0 || e->window <= 0)
        return dm_err(c->err, "%s: encoder sizes must be positive", c->what);
    for (int s = 0; s < e->nstages; s++) {
        int dim = e->embed_dim << s;
        if (dim % e->heads[s])
            return dm_err(c->err, "%s: encoder stage %d: dim %d is not divisible by %d heads",
                          c->what, s, dim, e->heads[s]);
    }
    e->mlp_ratio = (float)mlp;
    e->ln_eps = (float)eps;
    if ((int)(e->embed_dim * mlp) <= 0)
        return dm_err(c->err, "%s: encoder.mlp_ratio %g gives an empty MLP", c->what, mlp);
    const char *act = s_str(c, "hidden_act");
    if (act && strcmp(act, "gelu") != 0)
        return dm_err(c->err, "%s: encoder.hidden_act \"%s\" is not supported (only \"gelu\")",
                      c->what, act);
    int absemb = 0;
    if (s_bool(c, "use_absolute_embeddings", 0, &absemb))
        return -1;
    if (absemb)
        return dm_err(c->err, "%s: encoder.use_absolute_embeddings true is not supported",
                      c->what);
    e->hidden_size = e->embed_dim << (e->nstages - 1);
    int hs;
    if (s_int(c, "hidden_size", e->hidden_size, 0, &hs))
        return -1;
    if (hs != e->hidden_size)
        return dm_err(c->err, "%s: encoder.hidden_size %d differs from embed_dim * 2^(stages-1) = %d",
                      c->what, hs, e->hidden_size);
    return 0;
}

static int s_parse_decoder(CfgCtx *c, MBartConfig *d)
{
    const char *mt = s_str(c, "model_type");
    if (!mt || strcmp(mt, "mbart") != 0)
        return dm_err(c->err, "%s: decoder.model_type is \"%s\"; docmint runs \"mbart\"", c->what,
                      mt ? mt : "(missing)");
    if (s_int(c, "vocab_size", 0, 1, &d->vocab) || s_int(c, "d_model", 0, 1, &d->d_model) ||
        s_int(c, "decoder_layers", 0, 1, &d->layers) ||
        s_int(c, "decoder_attention_heads", 0, 1, &d->heads) ||
        s_int(c, "decoder_ffn_dim", 0, 1, &d->ffn) ||
        s_int(c, "max_position_embeddings", 0, 1, &d->max_pos) ||
        s_bool(c, "scale_embedding", 0, &d->scale_embedding) ||
        s_int(c, "pad_token_id", 1, 0, &d->pad_id) || s_int(c, "bos_token_id", 0, 0, &d->bos_id) ||
        s_int(c, "eos_token_id", 2, 0, &d->eos_id) ||
        s_int(c, "decoder_start_token_id", -1, 0, &d->decoder_start_id) ||
        s_int(c, "forced_eos_token_id", -1, 0, &d->forced_eos_id) ||
        s_bool(c, "tie_word_embeddings", 1, &d->tie_word_embeddings))
        return -1;
    if (d->vocab <= 0 || d->d_model <= 0 || d->layers <= 0 || d->heads <= 0 || d->ffn <= 0 ||
        d->max_pos <= 0)
        return dm_err(c->err, "%s: decoder sizes must be positive", c->what);
    if (d->layers > DM_MAX_LAYERS || d->heads > DM_MAX_HEADS)
        return dm_err(c->err, "%s: decoder has %d layers / %d heads (at most %d / %d)", c->what,
                      d->layers, d->heads, DM_MAX_LAYERS, DM_MAX_HEADS);
    if (d->d_model % d->heads)
        return dm_err(c->err, "%s: decoder.d_model %d is not divisible by %d heads", c->what,
                      d->d_model, d->heads);
    const char *act = s_str(c, "activation_function");
    if (act && strcmp(act, "gelu") != 0)
        return dm_err(c->err,
                      "%s: decoder.activation_function \"%s\" is not supported (only \"gelu\")",
                      c->what, act);
    int cross = 1;
    if (s_bool(c, "add_cross_attention", 1, &cross))
        return -1;
    if (!cross)
        return dm_err(c->err, "%s: decoder.add_cross_attention is false; Donut needs it", c->what);
    d->unk_id = 3; /* XLM-R / fairseq convention; the tokenizer may override */
    d->ln_eps = 1e-5f;
    return 0;
}

int donut_config_parse(const char *text, const char *what, DonutConfig *cfg, DmErr *err)
{
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    if (!root)
        return dm_err(err, "%s: not valid JSON (line %d: %s)", what, jerr.line, jerr.text);
    int rc = -1;
    CfgCtx c = {root, what, "", err};
    const char *mt = s_str(&c, "model_type");
    json_t *enc = json_object_get(root, "encoder"), *dec = json_object_get(root, "decoder");
    if (!json_is_object(root)) {
        dm_err(err, "%s: top level must be a JSON object", what);
    } else if (!mt || strcmp(mt, "vision-encoder-decoder") != 0) {
        dm_err(err, "%s: model_type is \"%s\"; docmint runs \"vision-encoder-decoder\" (Donut)",
               what, mt ? mt : "(missing)");
    } else if (!json_is_object(enc) || !json_is_object(dec)) {
        dm_err(err, "%s: \"encoder\" and \"decoder\" sections are required", what);
    } else {
        CfgCtx ce = {enc, what, "encoder", err}, cd = {dec, what, "decoder", err};
        if (s_parse_encoder(&ce, &cfg->enc) == 0 && s_parse_decoder(&cd, &cfg->dec) == 0) {
            if (cfg->enc.hidden_size != cfg->dec.d_model)
                dm_err(err,
                       "%s: encoder output width %d differs from decoder d_model %d "
                       "(enc_to_dec_proj is not supported)",
                       what, cfg->enc.hidden_size, cfg->dec.d_model);
            else
                rc = 0;
        }
    }
    json_decref(root);
    return rc;
}

/* ----------------------------------------------------------------- weights */

/* The binder walks every tensor the config implies.  Loading, it finds each
 * in the weight file; creating (docmint init), it makes each with random
 * values and adds it to a writer, so both share one list of names. */
typedef struct Binder {
    DonutModel *m;
    const char *file;
    DmErr *err;
    StWriter *create; /* non-NULL: make random tensors instead of reading */
    uint64_t rng;
    uint64_t hash;    /* fingerprint over the bound float32 weights */
    int bf16;         /* bind weight matrices stored as BF16 in place, without
                       * a float32 copy (a model loaded to run in bf16) */
} Binder;

/* Fold a name, then the bytes of its float32 values, into the
 * fingerprint, 8 bytes at a time (a multiply-xor hash: fast enough to run
 * over a full model at load).  s_hash_bytes may be called in chunks whose
 * sizes are multiples of 8 bytes, the last one excepted. */
static void s_hash_name(Binder *b, const char *name)
{
    for (const char *c = name; *c; c++)
        b->hash = (b->hash ^ (unsigned char)*c) * 0x100000001b3ull;
}

static void s_hash_bytes(Binder *b, const void *p, size_t bytes)
{
    uint64_t h = b->hash;
    const unsigned char *q = p;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        uint64_t w;
        memcpy(&w, q + i, 8);
        h = (h ^ w) * 0x9e3779b97f4a7c15ull;
        h ^= h >> 29;
    }
    for (; i < bytes; i++)
        h = (h ^ q[i]) * 0x100000001b3ull;
    b->hash = h;
}

static void s_hash(Binder *b, const char *name, const float *p, size_t n)
{
    s_hash_name(b, name);
    s_hash_bytes(b, p, n * sizeof(float));
}

static float *s_own(DonutModel *m, size_t n)
{
    if (m->nowned == m->capowned) {
        m->capowned = m->capowned ? 2 * m->capowned : 64;
        m->owned = dm_xrealloc(m->owned, (size_t)m->capowned * sizeof *m->owned);
    }
    float *p = dm_xmalloc(n * sizeof(float));
    m->owned[m->nowned++] = p;
    return p;
}

static int s_shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
    return 0;
}

/* Find `name`, check its shape, and return float32 data: a pointer into the
 * mapped file when it is F32 and aligned, else a converted copy. */
static double s_gauss(uint64_t *state)
{
    /* splitmix64 -> two uniforms -> Box-Muller */
    double u[2];
    for (int i = 0; i < 2; i++) {
        uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        u[i] = ((double)(z >> 11) + 0.5) / 9007199254740992.0;
    }
    return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

static int s_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Random initial values in the spirit of HF's init: LayerNorm weight 1 and
 * bias 0, other biases 0, weights N(0, 0.02). */
static const float *s_make(Binder *b, const char *name, int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    float *p = s_own(b->m, n);
    int is_norm = strstr(name, "norm") != NULL;
    for (size_t i = 0; i < n; i++) {
        if (s_ends_with(name, ".bias"))
            p[i] = 0.0f;
        else if (is_norm)
            p[i] = 1.0f;
        else
            p[i] = (float)(0.02 * s_gauss(&b->rng));
    }
    st_writer_add_f32(b->create, name, ndim, shape, p);
    return p;
}

/* The file's tensor `name`, checked against the shape the config implies. */
static const DmTensor *s_find(Binder *b, const char *name, int ndim, const int64_t *shape)
{
    const DmTensor *t = tensorfile_find(b->m->weights, name);
    if (!t) {
        dm_err(b->err, "%s: tensor %s is missing", b->file, name);
        return NULL;
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[128], got[128];
        s_shape_str(want, sizeof want, ndim, shape);
        s_shape_str(got, sizeof got, t->ndim, t->shape);
        dm_err(b->err, "%s: tensor %s has shape %s, the config implies %s", b->file, name, got,
               want);
        return NULL;
    }
    return t;
}

static int s_get(Binder *b, const char *name, int ndim, const int64_t *shape, const float **out)
{
    if (b->create) {
        *out = s_make(b, name, ndim, shape);
        return 0;
    }
    const DmTensor *t = s_find(b, name, ndim, shape);
    if (!t)
        return -1;
    if (t->dtype == DM_F32 && ((uintptr_t)t->data & 3) == 0) {
        *out = t->data;
        s_hash(b, name, *out, (size_t)dm_tensor_numel(t));
        return 0;
    }
    if (t->dtype != DM_F32 && t->dtype != DM_F16 && t->dtype != DM_BF16 && t->dtype != DM_F64)
        return dm_err(b->err, "%s: tensor %s has dtype %s (expected F32, F16 or BF16)", b->file,
                      name, dm_dtype_name(t->dtype));
    float *p = s_own(b->m, (size_t)dm_tensor_numel(t));
    if (t->dtype == DM_F32)
        memcpy(p, t->data, t->nbytes);
    else if (dm_tensor_to_f32(t, p, b->err) != 0)
        return -1;
    *out = p;
    s_hash(b, name, p, (size_t)dm_tensor_numel(t));
    return 0;
}

/* A weight matrix for a model that runs in bf16: a BF16 tensor of the file
 * is used where it lies (*bf set, *w NULL), hashed as the float32 values it
 * stands for so the fingerprint does not depend on the precision; any
 * other dtype goes through s_get (donut_set_precision converts it later). */
static int s_mat_bf16(Binder *b, const char *name, int rows, int cols, const float **w,
                      const uint16_t **bf)
{
    int64_t sh[2] = {rows, cols};
    *bf = NULL;
    if (!b->bf16 || b->create)
        return s_get(b, name, 2, sh, w);
    const DmTensor *t = s_find(b, name, 2, sh);
    if (!t)
        return -1;
    if (t->dtype != DM_BF16 || ((uintptr_t)t->data & 1)) {
        /* converted later; until then its pages need not stay resident
         * (the hash just read them all), which keeps the peak of a bf16
         * load at the float32 encoder plus the bfloat16 decoder */
        if (s_get(b, name, 2, sh, w))
            return -1;
        donut_drop_pages(b->m->weights, *w, (size_t)rows * cols * sizeof(float));
        return 0;
    }
    *w = NULL;
    *bf = t->data;
    s_hash_name(b, name);
    float chunk[4096];
    size_t n = (size_t)rows * cols;
    for (size_t i = 0; i < n; i += 4096) {
        size_t k = n - i < 4096 ? n - i : 4096;
        for (size_t j = 0; j < k; j++)
            chunk[j] = dm_bf16_to_f32((*bf)[i + j]);
        s_hash_bytes(b, chunk, k * sizeof(float));
    }
    return 0;
}

static int s_vec(Binder *b, const char *name, int n, const float **out)
{
    int64_t sh[1] = {n};
    return s_get(b, name, 1, sh, out);
}

static int s_mat(Binder *b, const char *name, int rows, int cols, const float **out)
{
    int64_t sh[2] = {rows, cols};
    return s_get(b, name, 2, sh, out);
}

static int s_norm(Binder *b, const char *prefix, int n, DmNorm *norm)
{
    char nm[256];
    norm->n = n;
    snprintf(nm, sizeof nm, "%s.weight", prefix);
    if (s_vec(b, nm, n, &norm->g))
        return -1;
    snprintf(nm, sizeof nm, "%s.bias", prefix);
    return s_vec(b, nm, n, &norm->b);
}

static int s_linear(Binder *b, const char *prefix, int out, int in, int bias, DmLinear *l)
{
    char nm[256];
    l->out = out;
    l->in = in;
    l->b = NULL;
    snprintf(nm, sizeof nm, "%s.weight", prefix);
    if (s_mat_bf16(b, nm, out, in, &l->w, &l->wbf))
        return -1;
    if (!bias)
        return 0;
    snprintf(nm, sizeof nm, "%s.bias", prefix);
    return s_vec(b, nm, out, &l->b);
}

static int s_bind_encoder(Binder *b)
{
    DonutModel *m = b->m;
    const SwinConfig *c = &m->cfg.enc;
    SwinWeights *w = &m->enc;
    int64_t psh[4] = {c->embed_dim, c->channels, c->patch, c->patch};
    if (s_get(b, "encoder.embeddings.patch_embeddings.projection.weight", 4, psh, &w->patch_w) ||
        s_vec(b, "encoder.embeddings.patch_embeddings.projection.bias", c->embed_dim,
              &w->patch_b) ||
        s_norm(b, "encoder.embeddings.norm", c->embed_dim, &w->patch_norm))
        return -1;
    int nrel = (2 * c->window - 1) * (2 * c->window - 1);
    for (int s = 0; s < c->nstages; s++) {
        SwinStage *st = &w->stages[s];
        st->depth = c->depths[s];
        st->dim = c->embed_dim << s;
        st->heads = c->heads[s];
        st->blocks = dm_xcalloc((size_t)st->depth, sizeof *st->blocks);
        int dim = st->dim, hid = (int)(dim * c->mlp_ratio);
        char p[256], nm[320];
        for (int k = 0; k < st->depth; k++) {
            SwinBlock *bl = &st->blocks[k];
            snprintf(p, sizeof p, "encoder.encoder.layers.%d.blocks.%d", s, k);
#define PFX(suffix) (snprintf(nm, sizeof nm, "%s.%s", p, suffix), nm)
            if (s_norm(b, PFX("layernorm_before"), dim, &bl->ln_before) ||
                s_linear(b, PFX("attention.self.query"), dim, dim, c->qkv_bias, &bl->q) ||
                s_linear(b, PFX("attention.self.key"), dim, dim, c->qkv_bias, &bl->k) ||
                s_linear(b, PFX("attention.self.value"), dim, dim, c->qkv_bias, &bl->v) ||
                s_mat(b, PFX("attention.self.relative_position_bias_table"), nrel, st->heads,
                      &bl->rel_bias) ||
                s_linear(b, PFX("attention.output.dense"), dim, dim, 1, &bl->proj) ||
                s_norm(b, PFX("layernorm_after"), dim, &bl->ln_after) ||
                s_linear(b, PFX("intermediate.dense"), hid, dim, 1, &bl->fc1) ||
                s_linear(b, PFX("output.dense"), dim, hid, 1, &bl->fc2))
                return -1;
#undef PFX
        }
        st->has_merge = s + 1 < c->nstages;
        if (st->has_merge) {
            snprintf(p, sizeof p, "encoder.encoder.layers.%d.downsample.norm", s);
            if (s_norm(b, p, 4 * dim, &st->merge_norm))
                return -1;
            snprintf(p, sizeof p, "encoder.encoder.layers.%d.downsample.reduction", s);
            if (s_linear(b, p, 2 * dim, 4 * dim, 0, &st->merge))
                return -1;
        }
    }
    return 0;
}

/* The structure of the model: every sub-layer and head of the config, or
 * what a student's pruning record (plan.h) says remains. */
static int s_read_pruning(DonutModel *m, const char *path, DmErr *err)
{
    DmPlan full, p;
    plan_full(&m->cfg.dec, &full);
    if (access(path, F_OK) != 0) {
        plan_apply(&full, m);
        return 0;
    }
    if (plan_load(path, &full, &p, err))
        return -1;
    plan_apply(&p, m);
    return 0;
}

static int s_bind_attn(Binder *b, const char *p, int d, int hd, DecAttn *a, const char *lnname)
{
    char nm[320];
    int inner = a->nheads * hd;
#define PFX(suffix) (snprintf(nm, sizeof nm, "%s.%s", p, suffix), nm)
    return s_linear(b, PFX("q_proj"), inner, d, 1, &a->q) ||
                   s_linear(b, PFX("k_proj"), inner, d, 1, &a->k) ||
                   s_linear(b, PFX("v_proj"), inner, d, 1, &a->v) ||
                   s_linear(b, PFX("out_proj"), d, inner, 1, &a->o) || s_norm(b, lnname, d, &a->ln)
               ? -1
               : 0;
#undef PFX
}

static int s_bind_decoder(Binder *b)
{
    DonutModel *m = b->m;
    const MBartConfig *d = &m->cfg.dec;
    MBartWeights *w = &m->dec;
    int D = d->d_model;
    w->head_dim = D / d->heads;
    const char *emb = "decoder.model.decoder.embed_tokens.weight";
    const char *head = "decoder.lm_head.weight";
    /* Tied head: HF ties lm_head to embed_tokens, so whichever name the file
     * holds serves both (both, only the embedding, or only the head). */
    const char *tok = b->create || tensorfile_find(m->weights, emb) ? emb : head;
    if (s_mat_bf16(b, tok, d->vocab, D, &w->embed_tokens, &w->embed_tokens_bf16))
        return -1;
    if (d->tie_word_embeddings) {
        w->lm_head = w->embed_tokens;
        w->lm_head_bf16 = w->embed_tokens_bf16;
    } else if (s_mat_bf16(b, head, d->vocab, D, &w->lm_head, &w->lm_head_bf16)) {
        return -1;
    }
    if (s_mat(b, "decoder.model.decoder.embed_positions.weight", d->max_pos + 2, D,
              &w->embed_positions) ||
        s_norm(b, "decoder.model.decoder.layernorm_embedding", D, &w->ln_emb) ||
        s_norm(b, "decoder.model.decoder.layer_norm", D, &w->ln_final))
        return -1;
    for (int l = 0; l < d->layers; l++) {
        DecLayer *L = &w->layers[l];
        char p[256], ln[256];
        if (L->self.present) {
            snprintf(p, sizeof p, "decoder.model.decoder.layers.%d.self_attn", l);
            snprintf(ln, sizeof ln, "decoder.model.decoder.layers.%d.self_attn_layer_norm", l);
            if (s_bind_attn(b, p, D, w->head_dim, &L->self, ln))
                return -1;
        }
        if (L->cross.present) {
            snprintf(p, sizeof p, "decoder.model.decoder.layers.%d.encoder_attn", l);
            snprintf(ln, sizeof ln, "decoder.model.decoder.layers.%d.encoder_attn_layer_norm", l);
            if (s_bind_attn(b, p, D, w->head_dim, &L->cross, ln))
                return -1;
        }
        if (L->ffn.present) {
            snprintf(p, sizeof p, "decoder.model.decoder.layers.%d.fc1", l);
            snprintf(ln, sizeof ln, "decoder.model.decoder.layers.%d.fc2", l);
            if (s_linear(b, p, d->ffn, D, 1, &L->ffn.fc1) ||
                s_linear(b, ln, D, d->ffn, 1, &L->ffn.fc2))
                return -1;
            snprintf(p, sizeof p, "decoder.model.decoder.layers.%d.final_layer_norm", l);
            if (s_norm(b, p, D, &L->ffn.ln))
                return -1;
        }
    }
    return 0;
}

static char *s_read_text(const char *path, DmErr *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        dm_err_errno(err, "%s: cannot open", path);
        return NULL;
    }
    size_t cap = 1 << 14, n = 0;
    char *buf = dm_xmalloc(cap);
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (n + 1 < cap)
            break;
        cap *= 2;
        buf = dm_xrealloc(buf, cap);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        dm_err_errno(err, "%s: read failed", path);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

int donut_config_load(const char *path, DonutConfig *cfg, DmErr *err)
{
    char *text = s_read_text(path, err);
    if (!text)
        return -1;
    int rc = donut_config_parse(text, path, cfg, err);
    free(text);
    return rc;
}

int donut_load_as(const char *dir, DmPrecision prec, DonutModel **out, DmErr *err)
{
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (access(dir, F_OK) != 0)
        return dm_err_errno(err, "%s: model folder not found", dir);
    char *text = s_read_text(path, err);
    if (!text)
        return -1;
    DonutModel *m = dm_xcalloc(1, sizeof *m);
    m->dir = dm_xstrdup(dir);
    int rc = donut_config_parse(text, path, &m->cfg, err);
    free(text);
    if (rc)
        goto fail;
    snprintf(path, sizeof path, "%s/pruning.json", dir);
    if (s_read_pruning(m, path, err))
        goto fail;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (access(path, F_OK) != 0)
        snprintf(path, sizeof path, "%s/pytorch_model.bin", dir);
    if (access(path, F_OK) != 0) {
        dm_err(err, "%s: no model.safetensors or pytorch_model.bin", dir);
        goto fail;
    }
    if (tensorfile_open(path, &m->weights, err))
        goto fail;
    /* In bf16, BF16 matrices of the file are bound in place; the encoder's
     * only once it has a bf16 path (DM_SWIN_BF16). */
    Binder b = {m, path, err, NULL, 0, 0xcbf29ce484222325ull, prec == DM_PREC_BF16 && DM_SWIN_BF16};
    if (s_bind_encoder(&b))
        goto fail;
    b.bf16 = prec == DM_PREC_BF16;
    if (s_bind_decoder(&b))
        goto fail;
    snprintf(m->fingerprint, sizeof m->fingerprint, "%016llx", (unsigned long long)b.hash);
    if (donut_set_precision(m, prec, err))
        goto fail;
    *out = m;
    return 0;
fail:
    donut_free(&m);
    return -1;
}

int donut_load(const char *dir, DonutModel **out, DmErr *err)
{
    return donut_load_as(dir, DM_PREC_F32, out, err);
}

void donut_free(DonutModel **pm)
{
    DonutModel *m = *pm;
    if (!m)
        return;
    swin_free_workspace(m);
    for (int s = 0; s < DM_MAX_STAGES; s++)
        free(m->enc.stages[s].blocks);
    for (int i = 0; i < m->nowned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->bf16);
    tensorfile_close(&m->weights);
    free(m->dir);
    free(m);
    *pm = NULL;
}

int donut_write_random(const char *config_path, const char *dir, uint64_t seed, DmErr *err)
{
    char *text = s_read_text(config_path, err);
    if (!text)
        return -1;
    DonutModel *m = dm_xcalloc(1, sizeof *m);
    int rc = donut_config_parse(text, config_path, &m->cfg, err);
    if (rc == 0) {
        char path[4096];
        StWriter *w = st_writer_new();
        Binder b = {m, dir, err, w, seed ^ 0x5eedull, 0};
        DmPlan full;
        plan_full(&m->cfg.dec, &full);
        plan_apply(&full, m);
        rc = s_bind_encoder(&b) || s_bind_decoder(&b) ? -1 : 0;
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (rc == 0)
            rc = st_writer_save(w, path, err);
        st_writer_free(&w);
        snprintf(path, sizeof path, "%s/config.json", dir);
        FILE *f = rc == 0 ? fopen(path, "w") : NULL;
        if (rc == 0) {
            int bad = !f || fputs(text, f) == EOF;
            if (f && fclose(f) != 0)
                bad = 1;
            if (bad)
                rc = dm_err_errno(err, "%s: cannot write", path);
        }
    }
    free(text);
    donut_free(&m);
    return rc;
}
