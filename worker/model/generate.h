/* generate.h - greedy decoding as transformers' generate does it for
 * Donut, for several questions of one page at once. */
#ifndef DM_GENERATE_H
#define DM_GENERATE_H

#include "worker/model/decoder.h"

typedef struct GenConfig {
    int max_length;    /* counts the prompt (HF max_length) */
    int eos_id;
    int unk_id;        /* banned at every step (bad_words_ids); -1: none */
    int forced_eos_id; /* forced when one position is left; -1: none */
} GenConfig;

/* Defaults of the Donut DocVQA recipe from the model's config:
 * max_length = max_position_embeddings. */
void gen_config_default(const DonutModel *m, GenConfig *g);

typedef struct GenResult {
    int32_t *ids;      /* prompt + generated tokens (malloc'ed) */
    int len;
    int prompt_len;
    double sum_logprob; /* sum of log-softmax of the processed scores at the chosen tokens */
    int stopped_by_eos; /* 1: EOS produced (forced or not) */
} GenResult;

/* Per generated token of sequence `seq`: the raw LM-head logits of the last
 * position (before banning and forcing).  May be NULL. */
typedef void (*GenStepFn)(void *ctx, int seq, int step, const float *raw_logits, int vocab);

/* Greedy-decode B prompts against one page.  All sequences advance together
 * (one decoder pass per step for all unfinished ones). */
int gen_greedy(const DecPage *page, const int32_t *const *prompts, const int *prompt_lens, int B,
               const GenConfig *g, GenResult *out, GenStepFn on_step, void *ctx, DmErr *err);

void gen_result_free(GenResult *r);

/* Apply the logits processors of the recipe to raw logits in place:
 * unk -> -inf; when cur_len == max_length - 1 every score but EOS is -inf
 * and EOS is 0. */
void gen_process_scores(const GenConfig *g, int cur_len, float *scores, int vocab);

#endif
