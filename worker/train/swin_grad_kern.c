/* swin_grad_kern.c - the window-attention and LayerNorm backward kernels
 * of the Swin encoder's training pass, each with its plain double-precision
 * twin (swin_grad.h; tests/test_swin_grad.c checks one against the other). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "worker/train/swin_grad.h"
#include "kernels/cpu/kern.h"

void swin_attn_head_fwd(int N, int hd, int ld, float scale, const float *q, const float *k,
                        const float *v, const float *bias, float *P, float *ctx)
{
    for (int i = 0; i < N; i++) {
        float *p = P + (size_t)i * N, mx = -INFINITY;
        const float *qi = q + (size_t)i * ld;
        for (int j = 0; j < N; j++) {
            const float *kj = k + (size_t)j * ld;
            float s = 0.0f;
            for (int d = 0; d < hd; d++)
                s += qi[d] * kj[d];
            p[j] = s * scale + bias[(size_t)i * N + j];
            mx = p[j] > mx ? p[j] : mx;
        }
        float sum = 0.0f;
        for (int j = 0; j < N; j++) {
            p[j] = expf(p[j] - mx);
            sum += p[j];
        }
        float inv = 1.0f / sum;
        float *c = ctx + (size_t)i * ld;
        for (int d = 0; d < hd; d++)
            c[d] = 0.0f;
        for (int j = 0; j < N; j++) {
            p[j] *= inv;
            const float *vj = v + (size_t)j * ld;
            for (int d = 0; d < hd; d++)
                c[d] += p[j] * vj[d];
        }
    }
}

void swin_attn_head_bwd(int N, int hd, int ld, float scale, const float *q, const float *k,
                        const float *v, const float *P, const float *dctx, float *dq, float *dk,
                        float *dv, float *dS)
{
    for (int j = 0; j < N; j++) {
        float *a = dk + (size_t)j * ld, *b = dv + (size_t)j * ld;
        for (int d = 0; d < hd; d++)
            a[d] = b[d] = 0.0f;
    }
    for (int i = 0; i < N; i++) {
        const float *p = P + (size_t)i * N, *dc = dctx + (size_t)i * ld;
        float *ds = dS + (size_t)i * N, dot = 0.0f;
        for (int j = 0; j < N; j++) {
            const float *vj = v + (size_t)j * ld;
            float *dvj = dv + (size_t)j * ld;
            float s = 0.0f;
            for (int d = 0; d < hd; d++) {
                s += dc[d] * vj[d];
                dvj[d] += p[j] * dc[d];
            }
            ds[j] = s;
            dot += p[j] * s;
        }
        float *dqi = dq + (size_t)i * ld;
        const float *qi = q + (size_t)i * ld;
        for (int d = 0; d < hd; d++)
            dqi[d] = 0.0f;
        for (int j = 0; j < N; j++) {
            ds[j] = p[j] * (ds[j] - dot);
            float w = ds[j] * scale;
            const float *kj = k + (size_t)j * ld;
            float *dkj = dk + (size_t)j * ld;
            for (int d = 0; d < hd; d++) {
                dqi[d] += w * kj[d];
                dkj[d] += w * qi[d];
            }
        }
    }
}

void swin_attn_head_bwd_ref(int N, int hd, int ld, float scale, const float *q, const float *k,
                            const float *v, const float *P, const float *dctx, float *dq,
                            float *dk, float *dv, float *dS)
{
    for (int i = 0; i < N; i++) {
        double dot = 0.0;
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int d = 0; d < hd; d++)
                s += (double)dctx[(size_t)i * ld + d] * v[(size_t)j * ld + d];
            dS[(size_t)i * N + j] = (float)s;
            dot += (double)P[(size_t)i * N + j] * s;
        }
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int d = 0; d < hd; d++)
                s += (double)dctx[(size_t)i * ld + d] * v[(size_t)j * ld + d];
            dS[(size_t)i * N + j] = (float)((double)P[(size_t)i * N + j] * (s - dot));
        }
    }
    for (int j = 0; j < N; j++)
        for (int d = 0; d < hd; d++) {
            double sv = 0.0, sk = 0.0;
            for (int i = 0; i < N; i++) {
                sv += (double)P[(size_t)i * N + j] * dctx[(size_t)i * ld + d];
                sk += (double)dS[(size_t)i * N + j] * q[(size_t)i * ld + d];
            }
            dv[(size_t)j * ld + d] = (float)sv;
            dk[(size_t)j * ld + d] = (float)(sk * scale);
        }
    for (int i = 0; i < N; i++)
        for (int d = 0; d < hd; d++) {
            double s = 0.0;
            for (int j = 0; j < N; j++)
                s += (double)dS[(size_t)i * N + j] * k[(size_t)j * ld + d];
            dq[(size_t)i * ld + d] = (float)(s * scale);
        }
}

void swin_ln_bwd(const float *dy, int rows, int n, const float *g, const float *xhat,
                 const float *rstd, float *dg, float *db, float *dx)
{
    int nt = kern_get_threads();
    if (rows < 256)
        nt = 1;
    /* rows in parallel; dg and db summed per thread, then added in order */
    float *part = calloc((size_t)nt * 2 * n, sizeof *part);
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        float *pg = part + (size_t)t * 2 * n, *pb = pg + n;
#pragma omp for schedule(static)
        for (int r = 0; r < rows; r++) {
            const float *d = dy + (size_t)r * n, *xh = xhat + (size_t)r * n;
            float m1 = 0.0f, m2 = 0.0f;
            for (int i = 0; i < n; i++) {
                float dxh = d[i] * g[i];
                m1 += dxh;
                m2 += dxh * xh[i];
                pg[i] += d[i] * xh[i];
                pb[i] += d[i];
            }
            m1 /= (float)n;
            m2 /= (float)n;
            float *o = dx + (size_t)r * n, rs = rstd[r];
            for (int i = 0; i < n; i++)
                o[i] += rs * (d[i] * g[i] - m1 - xh[i] * m2);
        }
    }
    for (int t = 0; t < nt; t++)
        for (int i = 0; i < n; i++) {
            dg[i] += part[(size_t)t * 2 * n + i];
            db[i] += part[(size_t)t * 2 * n + n + i];
        }
    free(part);
}

void swin_ln_bwd_ref(const float *dy, int rows, int n, const float *g, const float *xhat,
                     const float *rstd, float *dg, float *db, float *dx)
{
    for (int r = 0; r < rows; r++) {
        const float *d = dy + (size_t)r * n, *xh = xhat + (size_t)r * n;
        double m1 = 0.0, m2 = 0.0;
        for (int i = 0; i < n; i++) {
            m1 += (double)d[i] * g[i];
            m2 += (double)d[i] * g[i] * xh[i];
        }
        m1 /= n;
        m2 /= n;
        for (int i = 0; i < n; i++) {
            dg[i] += (float)((double)d[i] * xh[i]);
            db[i] += d[i];
            dx[(size_t)r * n + i] += (float)(rstd[r] * ((double)d[i] * g[i] - m1 - xh[i] * m2));
        }
    }
}
