/* kd_loss.h - the distillation loss at one position: KL(p_T || q_T) with
 * p_T = softmax(teacher / T), q_T = softmax(student / T), natural log.
 * (The training loss multiplies the mean over positions by T^2.)
 *
 * kd_kl_full uses every teacher logit.  kd_kl_topk uses what a logit store
 * keeps: k raw teacher logits, their ids and the teacher's log-sum-exp at
 * T over the whole vocabulary and over the tokens not kept.  The teacher
 * probabilities of the kept tokens are then exact; the rest of the
 * teacher's mass, P_o = exp(lse_rest_T - lse_T) (= 1 - sum kept p), goes
 * into one "other" bucket, compared with the student's mass outside the
 * same k tokens, Q_o = 1 - sum kept q:
 *   KL_k = sum_kept p log(p/q) + P_o log(P_o/Q_o)
 * a proper KL between two (k+1)-category distributions.  By the log-sum
 * inequality it is a lower bound of the full KL, equal to it when the
 * kept tokens carry all the mass (k = vocabulary). */
#ifndef DM_KD_LOSS_H
#define DM_KD_LOSS_H

#include <stdint.h>

/* log sum_v exp(x_v / T), in double. */
double kd_lse(const float *x, int V, double T);

/* KL(softmax(t/T) || softmax(s/T)) over V logits. */
double kd_kl_full(const float *t, const float *s, int V, double T);

/* The bucketed KL above: vals/ids the k kept teacher logits, lse_T and
 * rest_T the teacher's log-sum-exp at T over all tokens and over the ones
 * not kept (-inf: none; NAN: unknown, then P_o = 1 - sum kept p); s the
 * student's V logits. */
double kd_kl_topk(const double *vals, const uint32_t *ids, int k, double lse_T, double rest_T,
                  const float *s, int V, double T);

/* Indices of the k largest of x (largest first, ties to the lower id). */
void kd_topk(const float *x, int V, int k, uint32_t *idx);

#endif
