/* kd_loss.c - KL at temperature T from full and from top-k logits
 * (kd_loss.h). */
#include "worker/train/kd_loss.h"

#include <math.h>
#include <stdlib.h>

double kd_lse(const float *x, int V, double T)
{
    double m = -INFINITY;
    for (int v = 0; v < V; v++)
        if (x[v] / T > m)
            m = x[v] / T;
    double s = 0.0;
    for (int v = 0; v < V; v++)
        s += exp(x[v] / T - m);
    return m + log(s);
}

double kd_kl_full(const float *t, const float *s, int V, double T)
{
    double lt = kd_lse(t, V, T), ls = kd_lse(s, V, T), kl = 0.0;
    for (int v = 0; v < V; v++) {
        double lp = t[v] / T - lt, lq = s[v] / T - ls;
        kl += exp(lp) * (lp - lq);
    }
    return kl;
}

double kd_kl_topk(const double *vals, const uint32_t *ids, int k, double lse_T, double rest_T,
                  const float *s, int V, double T)
{
    double ls = kd_lse(s, V, T), kl = 0.0, P = 0.0, Q = 0.0;
    for (int i = 0; i < k; i++) {
        double lp = vals[i] / T - lse_T, lq = s[ids[i]] / T - ls, p = exp(lp);
        kl += p * (lp - lq);
        P += p;
        Q += exp(lq);
    }
    /* The "other" bucket; empty when every token is kept (k = V), where
     * 1 - sum p is only the rounding of the stored logits.  The stored
     * rest_T gives P_o exactly: 1 - sum p would carry the float16 rounding
     * of every kept logit, as large as P_o itself when k is large. */
    double Po = isnan(rest_T) ? 1.0 - P : exp(rest_T - lse_T), Qo = 1.0 - Q;
    if (k < V && Po > 1e-12 && Qo > 0)
        kl += Po * log(Po / Qo);
    return kl;
}

/* Order for the selection: larger value first, then lower id. */
static int s_before(const float *x, uint32_t a, uint32_t b)
{
    return x[a] > x[b] || (x[a] == x[b] && a < b);
}

void kd_topk(const float *x, int V, int k, uint32_t *idx)
{
    /* A min-heap of the best k so far (root = the worst kept), then a sort:
     * V log k, enough for a 57k vocabulary. */
    int n = 0;
    for (int v = 0; v < V; v++) {
        if (n < k) {
            int c = n++;
            idx[c] = (uint32_t)v;
            while (c > 0 && s_before(x, idx[(c - 1) / 2], idx[c])) {
                uint32_t t = idx[c];
                idx[c] = idx[(c - 1) / 2];
                idx[(c - 1) / 2] = t;
                c = (c - 1) / 2;
            }
        } else if (s_before(x, (uint32_t)v, idx[0])) {
            idx[0] = (uint32_t)v;
            int c = 0;
            for (;;) {
                int l = 2 * c + 1, r = l + 1, w = c;
                if (l < n && s_before(x, idx[w], idx[l]))
                    w = l;
                if (r < n && s_before(x, idx[w], idx[r]))
                    w = r;
                if (w == c)
                    break;
                uint32_t t = idx[c];
                idx[c] = idx[w];
                idx[w] = t;
                c = w;
            }
        }
    }
    /* Heap sort: pop the worst to the back. */
    for (int m = n - 1; m > 0; m--) {
        uint32_t t = idx[0];
        idx[0] = idx[m];
        idx[m] = t;
        int c = 0;
        for (;;) {
            int l = 2 * c + 1, r = l + 1, w = c;
            if (l < m && s_before(x, idx[w], idx[l]))
                w = l;
            if (r < m && s_before(x, idx[w], idx[r]))
                w = r;
            if (w == c)
                break;
            uint32_t u = idx[c];
            idx[c] = idx[w];
            idx[w] = u;
            c = w;
        }
    }
}
