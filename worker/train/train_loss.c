/* train_loss.c - cross-entropy and distillation KL at one position and
 * their gradient with respect to the student's logits (train.h).
 *
 * The KD term is kd_kl_topk of kd_loss.c: with p the teacher's kept
 * probabilities (sum P), q = softmax(s / tau) (kept sum Qk = 1 - Qo) and
 * the "other" bucket P_o against Q_o,
 *   KL = sum_kept p (log p - log q) + P_o log(P_o / Q_o).
 * Since d log q_i / d s_v = ([i = v] - q_v) / tau and
 * d Q_o / d s_v = -(q_v [v kept] - Qk q_v) / tau, its gradient is
 *   tau dKL/ds_v = (P + P_o) q_v - p_v             for v kept,
 *   tau dKL/ds_v = (P + P_o - P_o / Q_o) q_v       for v not kept:
 * the bucket's teacher mass is spread over the other tokens in proportion
 * to the student's own.  Without the bucket term (k = vocabulary, or an
 * empty bucket) it is P q_v - p_v [v kept], the plain KL's q - p when the
 * kept p sum to 1. */
#include "worker/train/train.h"

#include <math.h>

#include "worker/train/kd_loss.h"

int train_loss_row(const float *s, int V, int label, const KdTarget *t, const LossCfg *cfg,
                   double *ce, double *kl, double *gbuf, DmErr *err)
{
    if (label < 0 || label >= V)
        return dm_err(err, "train: label %d is outside the vocabulary (%d)", label, V);
    /* cross-entropy: softmax - one-hot */
    double mx = -INFINITY;
    for (int v = 0; v < V; v++)
        mx = s[v] > mx ? s[v] : mx;
    double sum = 0.0;
    for (int v = 0; v < V; v++)
        sum += exp(s[v] - mx);
    double lse = mx + log(sum);
    *ce = lse - s[label];
    for (int v = 0; v < V; v++)
        gbuf[v] = exp(s[v] - lse);
    gbuf[label] -= 1.0;
    *kl = 0.0;
    if (!t)
        return 0;
    if (t->k < 1 || t->k > V || (t->k < V && !t->ids))
        return dm_err(err, "train: teacher target keeps %d tokens of %d%s", t->k, V,
                      t->k < V && !t->ids ? " without their ids" : "");
    /* d(alpha * tau^2 * KL)/ds = alpha * tau * (tau dKL/ds) */
    double tau = cfg->tau, w = cfg->alpha * tau, ls = kd_lse(s, V, tau);
    double P = 0.0, Qk = 0.0, klv = 0.0;
    for (int i = 0; i < t->k; i++) {
        uint32_t id = t->ids ? t->ids[i] : (uint32_t)i;
        if (id >= (uint32_t)V)
            return dm_err(err, "train: teacher token id %u is outside the vocabulary (%d)", id, V);
        double lp = (double)t->logits[i] / tau - t->lse, lq = s[id] / tau - ls, p = exp(lp);
        klv += p * (lp - lq);
        P += p;
        Qk += exp(lq);
    }
    double Po = isnan(t->lse_rest) ? 1.0 - P : exp(t->lse_rest - t->lse), Qo = 1.0 - Qk;
    int bucket = t->k < V && Po > 1e-12 && Qo > 0;
    if (bucket)
        klv += Po * log(Po / Qo);
    *kl = klv;
    /* every token first as "not kept", then the kept ones corrected */
    double rest = bucket ? P + Po - Po / Qo : P, kept = bucket ? P + Po : P;
    for (int v = 0; v < V; v++)
        gbuf[v] += w * rest * exp(s[v] / tau - ls);
    for (int i = 0; i < t->k; i++) {
        uint32_t id = t->ids ? t->ids[i] : (uint32_t)i;
        double q = exp(s[id] / tau - ls), p = exp((double)t->logits[i] / tau - t->lse);
        gbuf[id] += w * ((kept - rest) * q - p);
    }
    return 0;
}
