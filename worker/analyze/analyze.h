/* analyze.h - reading the decoder's internals on teacher-forced sequences.
 *
 * One item is a token sequence ids[0..T-1] (prompt and answer) on a page
 * whose cross-attention keys and values are in a DecPage.  With a =
 * answer_start, the scored positions are t = a .. T-2, the target at t is
 * ids[t+1], and the NLL of a run is the mean over them of
 * -log softmax(logits_t)[target].  docs/analyze.md defines every quantity.
 *
 * Sub-layers are numbered i = 3*layer + kind (kind DM_SUB_S, DM_SUB_C,
 * DM_SUB_M): S0, C0, M0, S1, ...  Residual r = 0 is the embedding's output,
 * r = i + 1 the stream after sub-layer i (r = 3L the final residual, before
 * the final LayerNorm); sub-layer i's input is residual i.
 *
 * an_run is one teacher-forced pass with interventions (AnOp) that records
 * what it saw (AnTrace); an_item runs every analysis of one item on a clean
 * page and a corrupted one and hands each result to a sink under the names
 * of the reference file (docs/analyze.md lists them). */
#ifndef DM_ANALYZE_H
#define DM_ANALYZE_H

#include <stdint.h>

#include "worker/model/decoder.h"

/* Where in a sub-layer an intervention acts. */
typedef enum {
    AN_IN,     /* the residual entering the sub-layer [T, d] */
    AN_OUT,    /* the sub-layer's contribution [T, d] */
    AN_HEAD,   /* one head's (or every head's) output before out_proj [T, hd] */
    AN_QUERY   /* an attention sub-layer's queries before scaling [T, heads*hd] */
} AnPoint;

typedef struct AnSite {
    int sub;    /* 3 * layer + kind */
    AnPoint point;
    int head;   /* AN_HEAD: original head index (as in the unpruned model) */
} AnSite;

/* Parse a site name: "S0.in", "C1.out", "M3.out", "C2.query", "S1.H5"
 * (head 5's output).  Checked against the model: a layer beyond its
 * layers, a removed sub-layer or head, a query of a feed-forward is an
 * error naming the site. */
int an_site_parse(const DonutModel *m, const char *name, AnSite *out, DmErr *err);
/* "C1.H3" etc. back; buf of at least 32 bytes. */
void an_site_name(const AnSite *s, char *buf, int n);

typedef enum {
    AN_ZERO,       /* the site's value := 0 */
    AN_SET,        /* := src (the same site recorded in another run) */
    AN_SCALE_SITE, /* := coef * the value of site `from` earlier in this run */
    AN_REPROJECT   /* AN_IN only: := R(value), the token reprojection */
} AnOpKind;

typedef struct AnOp {
    AnSite site;
    AnOpKind op;
    const float *src;  /* AN_SET: the trace array of the same site in another
                        * run ([T, d], or the sub-layer's heads / queries) */
    AnSite from;       /* AN_SCALE_SITE: AN_OUT or AN_IN of an earlier sub-layer */
    float coef;
    int row0, row1;    /* the rows (positions) replaced, row0 <= t < row1 */
} AnOp;

/* What a run recorded.  Arrays are indexed by sub-layer i; those of an
 * absent sub-layer are NULL, except resid, which is every residual. */
typedef struct AnTrace {
    int T, D, nsub;         /* nsub = 3 * layers */
    float *resid;           /* [(nsub + 1), T, D] */
    float **out;            /* [nsub] -> [T, D] */
    float **heads;          /* [nsub] -> [T, nheads*hd] (attention) */
    float **query;          /* [nsub] -> [T, nheads*hd] (attention) */
    float **probs;          /* [nsub] -> [nheads, T, S] (when asked for) */
    int *probs_S;           /* [nsub] key count of probs */
    float *logits;          /* [P, vocab] at the scored positions */
    int P;
    double nll;
} AnTrace;

void an_trace_free(AnTrace *tr);

/* One teacher-forced pass of ids on the page with the given interventions
 * (applied in order at their sites).  want_probs also records attention
 * probabilities.  The trace must be zeroed or freed before. */
int an_run(const DecPage *page, const int32_t *ids, int T, int answer_start, const AnOp *ops,
           int nops, int want_probs, AnTrace *tr, DmErr *err);

/* One intervention run of which only the NLL (and, when logits is set,
 * the logits at the scored positions, [P, vocab]) is wanted: the sequence
 * ids[0 .. T-1] on page, scored from answer_start as an_run scores it. */
typedef struct AnJob {
    const DecPage *page;
    const int32_t *ids;
    int T, answer_start;
    const AnOp *ops;
    int nops;
    /* the traced run (an_run) of the same ids on the same page without
     * interventions, or NULL: the run then starts at the first sub-layer
     * an intervention touches or reads, from the residual stream base
     * recorded there, since everything before is the same computation
     * (the caller vouches for the page and ids; T and d_model are
     * checked) */
    const AnTrace *base;
    double nll;     /* out */
    float *logits;  /* out, or NULL */
} AnJob;

/* Rows of one block forward of intervention runs (at least one run). */
#define AN_BLOCK_ROWS 512

struct AnStats;
/* Run n jobs.  The jobs on one page go as rows of block forwards of up to
 * AN_BLOCK_ROWS rows: each run is its sequence's first T - 1 tokens (all
 * that its scored positions see) with its own interventions at the
 * block's sites, and the LM head runs at the scored rows only.  The
 * page's encoder output and cross keys and values serve every run.  Runs
 * with a base are ordered by the sub-layer they start at, and a block
 * starts at its earliest.  stats (may be NULL) counts the runs as
 * passes, and the blocks. */
int an_runs(AnJob *jobs, int n, struct AnStats *stats, DmErr *err);

/* ------------------------------------------------------- lens and scores */

/* The logit lens of rows x [n, d]: lm_head(layer_norm(x)) into y [n, vocab]. */
int an_lens(const DonutModel *m, const float *x, int n, float *y, DmErr *err);
/* NLL (mean of -log softmax(row)[target]) of n rows of logits. */
double an_nll(const float *logits, int n, int V, const int32_t *targets);
/* log softmax(row)[target] in double, the number of entries strictly above
 * the target, the first argmax. */
double an_logprob(const float *row, int V, int target, int64_t *rank, int64_t *top1);
/* Entropy (nats) of softmax(row) in double. */
double an_entropy_logits(const float *row, int V);
/* The token reprojection of rows x [T, d] at positions 0..T-1:
 * layernorm_embedding(embed_scale * E[argmax lens(x_t)] + P_pos[t + 2]). */
int an_reproject(const DonutModel *m, const float *x, int T, float *y, DmErr *err);

/* ------------------------------------------------------- gradients */

/* d NLL / d (each head's output) on the run tr recorded on page (it must
 * hold probabilities): grads[i] -> [T, nheads*hd] for each present
 * attention sub-layer i (NULL for others), allocated here. */
int an_head_grads(const DecPage *page, const int32_t *ids, int answer_start, const AnTrace *tr,
                  float ***grads, DmErr *err);
/* The same, and (out_grads not NULL) d NLL / d (each present sub-layer's
 * output) [T, d] in (*out_grads)[i] (NULL for absent ones). */
int an_grads(const DecPage *page, const int32_t *ids, int answer_start, const AnTrace *tr,
             float ***grads, float ***out_grads, DmErr *err);

/* ------------------------------------------------------- transcription */

/* z_j = lm_head(out_proj(v_proj(enc_j))) of the cross-attention of layer
 * `layer` over n encoder tokens, keeping only the heads with keep[h] set
 * (original indices; NULL keeps all): z [n, vocab]. */
int an_transcribe(const DonutModel *m, int layer, const float *enc, int n, const int *keep,
                  float *z, DmErr *err);

/* ------------------------------------------------------- one item */

/* Receives each result: float32 (data) or int64 (idata), named as in the
 * reference file without its case prefix. */
typedef struct AnSink {
    void (*f32)(void *ctx, const char *name, int ndim, const int64_t *shape, const float *data);
    void (*i64)(void *ctx, const char *name, int ndim, const int64_t *shape, const int64_t *data);
    void *ctx;
} AnSink;

/* What an item computes from its page alone (the transcription, "all"
 * and "subset"; not its logits), kept for the page's next items: zeroed
 * before the first use, freed with an_memo_free, and emptied before its
 * page's contents change.  A memo met with another page (another DecPage,
 * or other encoder output) is emptied first. */
typedef struct AnMemo {
    const DecPage *page;
    const float *enc;
    int n_enc;
    int64_t *top1[2];
    float *entropy[2];
} AnMemo;

void an_memo_free(AnMemo *memo);

typedef struct AnItem {
    const DecPage *clean, *corrupt; /* corrupt may be NULL: no patching */
    const int32_t *ids;
    int T, answer_start;
    AnMemo *memo;                   /* may be NULL: nothing kept */
} AnItem;

/* Sub-layers skipped together (their outputs zeroed), under a name. */
typedef struct AnSkipSet {
    char name[64];
    int n;
    int subs[3 * DM_MAX_LAYERS];
} AnSkipSet;

/* dst := coef * src within one run (e.g. M3.out := -C3.out). */
typedef struct AnReplace {
    char name[96];     /* as given: "M3.out:=-C3.out" */
    AnSite dst, src;
    float coef;
} AnReplace;

/* The analyses an item runs (AnCfg.analyses); nll.clean always. */
enum {
    AN_A_SKIP = 1 << 0,        /* nll.skip, nll.m_last_cancels_c_last */
    AN_A_REPROJECT = 1 << 1,   /* nll.reproject */
    AN_A_LENS = 1 << 2,        /* lens.* */
    AN_A_HEADS = 1 << 3,       /* heads.sa_entropy, heads.ca_variance */
    AN_A_ABLATION = 1 << 4,    /* nll.head_ablation */
    AN_A_PATCHING = 1 << 5,    /* nll.corrupt, nll.patch_query, logits.patch_query, nll.patch_head */
    AN_A_ATTRIBUTION = 1 << 6, /* nll.corrupt, atp.head */
    AN_A_TRANSCRIBE = 1 << 7,  /* transcribe.* */
    AN_A_ALL = (1 << 8) - 1,   /* the default: every analysis above */
    AN_A_KV = 1 << 8           /* kv_retrieval: greedy answers (an_kv), asked for by name */
};

/* The bit of an analysis named as in a job ("skip", "reproject", "lens",
 * "heads", "ablation", "patching", "attribution", "transcribe",
 * "kv_retrieval"); 0 when
 * unknown.  an_analysis_name is its inverse (NULL past the last). */
unsigned an_analysis_bit(const char *name);
const char *an_analysis_name(int i);

typedef struct AnCfg {
    unsigned analyses;       /* AN_A_* bits */
    /* transcription subset: the layer of the cross-attention and its heads
     * (keep[h] by original index); layer < 0: no subset */
    int subset_layer;
    int subset_keep[DM_MAX_HEADS];
    int transcribe_logits;   /* also write transcribe.*.logits [N, V] */
    /* more interventions, each written as one NLL (docs/analyze.md):
     * nll.skip_set.<name>, nll.patch.<site>.{clean_into_corrupt,
     * corrupt_into_clean} (needs a corrupted page), nll.replace.<name> */
    const AnSkipSet *skip_sets;
    int nskip_sets;
    const AnSite *patch_sites;
    int npatch;
    int patch_all_positions; /* patch every position, not only the scored ones */
    const AnReplace *replaces;
    int nreplace;
    struct AnStats *stats;   /* may be NULL: what the item cost */
} AnCfg;

/* The cost of an item: teacher-forced passes (traced passes and
 * intervention runs), the block forwards that carried the runs, backward
 * passes, and the seconds of all and of the clean pass alone. */
typedef struct AnStats {
    long passes, blocks, backward;
    double seconds, clean_seconds;
} AnStats;

/* Parse "M3.out:=-C3.out", "M3.out:=0.5*C3.out", "S1.out:=C0.out" (an
 * AN_IN or AN_OUT site set from an earlier one). */
int an_replace_parse(const DonutModel *m, const char *spec, AnReplace *out, DmErr *err);
/* Parse "NAME=S0,C1,M3". */
int an_skip_set_parse(const DonutModel *m, const char *spec, AnSkipSet *out, DmErr *err);

int an_item(const AnItem *it, const AnCfg *cfg, const AnSink *sink, DmErr *err);

/* ------------------------------------------------------- key-value retrieval */

/* Greedy decoding through the analysis pass. */
typedef struct AnGreedyCfg {
    int max_new;      /* at most this many generated tokens */
    int stop1, stop2; /* tokens that end the answer (</s_answer>, </s>); -1: none */
    int unk_id;       /* never chosen; -1: none */
} AnGreedyCfg;

/* Greedy-decode prompt [plen] on page, one hooked pass a token; with qsrc,
 * the queries of attention sub-layer qsub at positions q0 <= t < q1 are
 * replaced by row t of qsrc [*, heads*hd].  out: the generated ids
 * (malloc'ed), the stop token included when one came. */
int an_greedy(const DecPage *page, const int32_t *prompt, int plen, const AnGreedyCfg *g,
              int qsub, const float *qsrc, int q0, int q1, int32_t **out, int *nout, DmErr *err);

/* The generated ids of one key-value question. */
typedef struct AnKv {
    int32_t *clean, *patched, *control;
    int nclean, npatched, ncontrol;
} AnKv;

/* The experiment (docs/analyze.md "Key-value retrieval"): the greedy
 * answer on the clean page; the clean page teacher-forced on prompt + that
 * answer, whose last cross-attention queries at positions a .. T-2 (a =
 * plen - 1, T = plen + answer length) patch the greedy decoding on the
 * twin (`patched`); the twin unpatched (`control`). */
int an_kv(const DecPage *clean, const DecPage *twin, const int32_t *prompt, int plen,
          const AnGreedyCfg *g, AnKv *out, AnStats *stats, DmErr *err);
void an_kv_free(AnKv *k);

#endif
