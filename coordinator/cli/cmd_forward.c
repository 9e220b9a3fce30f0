/* cmd_forward.c - `docmint forward`: run the model on given tensors and
 * write every intermediate the reference files name, so any model can be
 * checked against any reference. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "worker/model/decoder.h"
#include "worker/model/generate.h"
#include "kernels/cpu/kern.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint forward MODEL_DIR --in IN.safetensors --out OUT.safetensors "
            "[--generate MAX_LENGTH] [--precision fp32|bf16]\n"
            "  --in FILE         pixel_values (f32 [1,3,H,W]) and decoder_input_ids (int64/int32 [1,L])\n"
            "  --out FILE        every encoder/decoder tensor, named as in the reference files\n"
            "  --generate N      also greedy-decode from decoder_input_ids up to N tokens in all\n"
            "                    (writes generate.ids, generate.scores, generate.step_logits); default: off\n"
            "  --precision P     fp32 (default) or bf16: bfloat16 weights of the decoder and LM\n"
            "                    head with float32 accumulation\n");
}

static void s_emit(void *ctx, const char *name, int ndim, const int64_t *shape, const float *data)
{
    st_writer_add_f32(ctx, name, ndim, shape, data);
}

typedef struct Steps {
    int n, vocab;
    float *raw;
} Steps;

static void s_on_step(void *ctx, int seq, int step, const float *raw, int vocab)
{
    Steps *s = ctx;
    float *p = realloc(s->raw, (size_t)(s->n + 1) * vocab * sizeof(float));
    if (!p)
        return;
    s->raw = p;
    memcpy(s->raw + (size_t)s->n * vocab, raw, (size_t)vocab * sizeof(float));
    s->n++;
    s->vocab = vocab;
}

int cmd_forward(int argc, char **argv)
{
    const char *dir = NULL, *in = NULL, *out = NULL;
    int gen_len = 0;
    DmPrecision prec = DM_PREC_F32;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--in") && i + 1 < argc) {
            in = argv[++i];
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--generate") && i + 1 < argc) {
            char *end;
            gen_len = (int)strtol(argv[++i], &end, 10);
            if (*end || gen_len < 1) {
                fprintf(stderr, "docmint forward: --generate %s: expected a positive integer\n",
                        argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "--precision") && i + 1 < argc) {
            if (donut_precision_parse(argv[++i], &prec)) {
                fprintf(stderr, "docmint forward: --precision %s: expected fp32 or bf16\n", argv[i]);
                return 2;
            }
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint forward: unknown or incomplete option %s (see --help)\n", argv[i]);
            return 2;
        } else if (!dir) {
            dir = argv[i];
        } else {
            fprintf(stderr, "docmint forward: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!dir || !in || !out) {
        fprintf(stderr, "docmint forward: needs MODEL_DIR, --in and --out (see --help)\n");
        return 2;
    }
    DmErr err = {{0}};
    DonutModel *m = NULL;
    TensorFile *tin = NULL;
    StWriter *w = st_writer_new();
    float *enc = NULL, *pix = NULL, *logits = NULL;
    int64_t *ids64 = NULL;
    int32_t *ids = NULL;
    DecPage page = {0};
    DecSeq seq = {0};
    Steps steps = {0};
    GenResult gr = {0};
    int rc = 1, have_gen = 0;
    if (donut_load_as(dir, prec, &m, &err) || tensorfile_open(in, &tin, &err))
        goto done;
    const DmTensor *tp = tensorfile_find(tin, "pixel_values");
    const DmTensor *ti = tensorfile_find(tin, "decoder_input_ids");
    const SwinConfig *ec = &m->cfg.enc;
    if (!tp || tp->ndim != 4 || tp->shape[0] != 1 || tp->shape[1] != ec->channels) {
        dm_err(&err, "%s: needs pixel_values of shape [1, %d, H, W]", in, ec->channels);
        goto done;
    }
    if (!ti || ti->ndim != 2 || ti->shape[0] != 1 || ti->shape[1] < 1 ||
        (ti->dtype != DM_I64 && ti->dtype != DM_I32)) {
        dm_err(&err, "%s: needs decoder_input_ids (int64 or int32) of shape [1, L]", in);
        goto done;
    }
    int H = (int)tp->shape[2], W = (int)tp->shape[3], T = (int)ti->shape[1];
    pix = malloc((size_t)dm_tensor_numel(tp) * sizeof(float));
    ids64 = malloc((size_t)T * sizeof *ids64);
    ids = malloc((size_t)T * sizeof *ids);
    if (!pix || !ids64 || !ids || dm_tensor_to_f32(tp, pix, &err) ||
        dm_tensor_to_i64(ti, ids64, &err)) {
        if (!err.msg[0])
            dm_err(&err, "out of memory");
        goto done;
    }
    for (int i = 0; i < T; i++)
        ids[i] = (int32_t)ids64[i];
    int oh, ow;
    swin_output_grid(ec, H, W, &oh, &ow);
    int N = oh * ow;
    enc = malloc((size_t)N * ec->hidden_size * sizeof(float));
    logits = malloc((size_t)T * m->cfg.dec.vocab * sizeof(float));
    if (!enc || !logits) {
        dm_err(&err, "out of memory");
        goto done;
    }
    DmProbe probe = {s_emit, w};
    if (swin_encode(m, pix, H, W, enc, &probe, &err) ||
        dec_page_init(&page, m, enc, N, &err) || dec_seq_init(&seq, m, T, &err))
        goto done;
    DecSeq *sp = &seq;
    const int32_t *idp = ids;
    if (dec_forward(&page, &sp, &idp, &T, 1, logits, 1, NULL, &probe, &err))
        goto done;
    if (gen_len) {
        GenConfig g;
        gen_config_default(m, &g);
        g.max_length = gen_len;
        if (gen_greedy(&page, &idp, &T, 1, &g, &gr, s_on_step, &steps, &err))
            goto done;
        have_gen = 1;
        int64_t *gi = malloc((size_t)gr.len * sizeof *gi);
        float *scores = malloc((size_t)steps.n * steps.vocab * sizeof(float) + 1);
        if (!gi || !scores) {
            free(gi);
            free(scores);
            dm_err(&err, "out of memory");
            goto done;
        }
        for (int i = 0; i < gr.len; i++)
            gi[i] = gr.ids[i];
        int64_t sh[2] = {1, gr.len};
        st_writer_add(w, "generate.ids", DM_I64, 2, sh, gi);
        memcpy(scores, steps.raw, (size_t)steps.n * steps.vocab * sizeof(float));
        for (int s = 0; s < steps.n; s++)
            gen_process_scores(&g, T + s, scores + (size_t)s * steps.vocab, steps.vocab);
        int64_t ssh[2] = {steps.n, steps.vocab};
        st_writer_add_f32(w, "generate.scores", 2, ssh, scores);
        st_writer_add_f32(w, "generate.step_logits", 2, ssh, steps.raw);
        free(gi);
        free(scores);
    }
    if (st_writer_save(w, out, &err))
        goto done;
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "docmint forward: %s\n", err.msg);
    if (have_gen)
        gen_result_free(&gr);
    free(steps.raw);
    dec_seq_free(&seq);
    dec_page_free(&page);
    free(enc);
    free(pix);
    free(logits);
    free(ids64);
    free(ids);
    st_writer_free(&w);
    tensorfile_close(&tin);
    donut_free(&m);
    return rc;
}
