/* EM routing (normalised over parent types, 4x4 matrix votes), one window at a time.
 *
 * Compiled at first use by capsbench/capsules/routing/native/build.py, once per dtype:
 * -DREAL=float -DSUFFIX=f32 or -DREAL=double -DSUFFIX=f64. Plain C, no torch headers;
 * every tensor arrives as a pointer to contiguous memory. The maths is em.py's (see its
 * module docstring); the backward follows the derivation of the Triton kernel
 * (routing/kernels/_triton_em_jit.py on the triton branch), written out per window.
 *
 * Layouts: pose [P, I, 16] (U[i, r, k] at 4r + k), act [P, I], weight [I, J, 4, 4]
 * (W[i, j, k, c]), offsets [I, 16] or NULL, out_pose [P, J, 16], out_act [P, J],
 * coef [P, J, I] or NULL. A vote is v[i, j, 4r + c] = sum_k U[i, r, k] W[i, j, k, c] (+ offset).
 *
 * Why per window: a window's votes (I x J x 16) are recomputed into a private buffer that
 * stays in L2 while every iteration reads it; nothing votes-sized reaches main memory.
 * Every sum over children runs in child order, so results do not depend on how windows
 * are split between threads; the caller sums per-block weight/beta partials in block order.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL double
#endif
#ifndef SUFFIX
#define SUFFIX f64
#endif
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define NAME(n) CAT(n, SUFFIX)

#define POSE 16
#define EPS ((REAL)1e-8)
#define LOG_2PI ((REAL)1.8378770664093453)

/* libm in the working precision (expf/logf for float) */
#define EXP(x) _Generic((x), float: expf, default: exp)(x)
#define LOG(x) _Generic((x), float: logf, default: log)(x)
#define LOG1P(x) _Generic((x), float: log1pf, default: log1p)(x)

static REAL log_sigmoid(REAL x) { return (x < 0 ? x : 0) - LOG1P(EXP(-fabs(x))); }
static REAL sigmoid(REAL x) { return (REAL)1 / ((REAL)1 + EXP(-x)); }

/* Operations on one pose (16 entries). Every pointer is restrict-qualified so the compiler
 * vectorises the loops; a sum over the pose runs in four interleaved partial sums (independent
 * lanes instead of a chain of 16 dependent additions), in a fixed order: the result depends on
 * nothing but the inputs. */
static inline void vote(REAL *restrict v, const REAL *restrict u, const REAL *restrict w, const REAL *restrict off) {
    for (int r = 0; r < 4; r++) /* v[4r + c] = sum_k U[r, k] W[k, c] */
        for (int c = 0; c < 4; c++)
            v[4 * r + c] = u[4 * r] * w[c] + u[4 * r + 1] * w[4 + c] + u[4 * r + 2] * w[8 + c] + u[4 * r + 3] * w[12 + c];
    if (off)
        for (int d = 0; d < POSE; d++) v[d] += off[d];
}

static inline void axpy(REAL *restrict y, REAL s, const REAL *restrict x) {
    for (int d = 0; d < POSE; d++) y[d] += s * x[d];
}

static inline void add_moments(REAL *restrict s1, REAL *restrict s2, REAL wt, const REAL *restrict x) {
    for (int d = 0; d < POSE; d++) {
        s1[d] += wt * x[d];
        s2[d] += wt * (x[d] * x[d]);
    }
}

/* sum_d (x_d - m_d)^2 inv_d */
static inline REAL distance(const REAL *restrict x, const REAL *restrict m, const REAL *restrict inv) {
    REAL part[4] = {0, 0, 0, 0};
    for (int r = 0; r < 4; r++)
        for (int k = 0; k < 4; k++) {
            const REAL diff = x[4 * r + k] - m[4 * r + k];
            part[k] += diff * diff * inv[4 * r + k];
        }
    return (part[0] + part[1]) + (part[2] + part[3]);
}

/* M-step backward for one child and parent: gx += w (g1 + 2 g2 x); returns sum_d (g1 + g2 x) x = dL/dw - g_mass */
static inline REAL through_sums(REAL *restrict gx, const REAL *restrict x, const REAL *restrict g1,
                                const REAL *restrict g2, REAL wt) {
    REAL part[4] = {0, 0, 0, 0};
    for (int r = 0; r < 4; r++)
        for (int k = 0; k < 4; k++) {
            const int d = 4 * r + k;
            part[k] += (g1[d] + g2[d] * x[d]) * x[d];
            gx[d] += wt * (g1[d] + 2 * g2[d] * x[d]);
        }
    return (part[0] + part[1]) + (part[2] + part[3]);
}

/* E-step backward for one child and parent: ln p = ... - 1/2 sum_d (x - mu)^2 / sigma^2, with dL/d ln p = g */
static inline void through_e_step(REAL *restrict gx, REAL *restrict g_mean, REAL *restrict g_var, const REAL *restrict x,
                                  const REAL *restrict mean, const REAL *restrict inv, REAL g) {
    for (int d = 0; d < POSE; d++) {
        const REAL z = (x[d] - mean[d]) * inv[d];
        gx[d] -= g * z;
        g_mean[d] += g * z;
        g_var[d] += (REAL)0.5 * g * z * z;
    }
}

/* dL/dU[r, k] += sum_c gx[4r + c] W[k, c] */
static inline void pose_grad(REAL *restrict gu, const REAL *restrict gx, const REAL *restrict w) {
    for (int r = 0; r < 4; r++)
        for (int k = 0; k < 4; k++)
            gu[4 * r + k] += gx[4 * r] * w[4 * k] + gx[4 * r + 1] * w[4 * k + 1] + gx[4 * r + 2] * w[4 * k + 2] +
                             gx[4 * r + 3] * w[4 * k + 3];
}

/* dL/dW[k, c] += sum_r U[r, k] gx[4r + c] */
static inline void weight_grad(REAL *restrict gw, const REAL *restrict gx, const REAL *restrict u) {
    for (int k = 0; k < 4; k++)
        for (int c = 0; c < 4; c++)
            gw[4 * k + c] += u[k] * gx[c] + u[4 + k] * gx[4 + c] + u[8 + k] * gx[8 + c] + u[12 + k] * gx[12 + c];
}

/* Per-window statistics of every iteration and the scratch buffers, allocated once per call. */
typedef struct {
    int I, J, T;
    REAL *x;        /* centred votes [I, J, 16] */
    REAL *gx;       /* their gradient [I, J, 16] (backward) */
    REAL *r;        /* coefficients of every iteration [T, I, J] (iteration 0: uniform) */
    REAL *mean;     /* [T, J, 16] relative to the centre */
    REAL *var_raw;  /* [T, J, 16] before the floor */
    REAL *var;      /* [T, J, 16] floored */
    REAL *mass;     /* [T, J] */
    REAL *logit;    /* [T, J] */
    REAL *centre;   /* [J, 16] */
    REAL *tmp;      /* [J * 16 * 5] per-parent temporaries */
} Work;

static int work_alloc(Work *w, int I, int J, int T) {
    size_t ijd = (size_t)I * J * POSE, jd = (size_t)J * POSE;
    size_t total = 2 * ijd + (size_t)T * I * J + 3 * T * jd + 2 * (size_t)T * J + jd + 5 * jd;
    REAL *base = (REAL *)malloc(total * sizeof(REAL));
    if (!base) return -1;
    w->I = I, w->J = J, w->T = T;
    w->x = base, base += ijd;
    w->gx = base, base += ijd;
    w->r = base, base += (size_t)T * I * J;
    w->mean = base, base += T * jd;
    w->var_raw = base, base += T * jd;
    w->var = base, base += T * jd;
    w->mass = base, base += (size_t)T * J;
    w->logit = base, base += (size_t)T * J;
    w->centre = base, base += jd;
    w->tmp = base;
    return 0;
}

/* Votes of one window into w->x, then centred on the activation-weighted mean vote (em.prepare_votes). */
static void centred_votes(Work *w, const REAL *u, const REAL *a, const REAL *weight, const REAL *offsets) {
    const int I = w->I, J = w->J;
    REAL *x = w->x, *centre = w->centre;
    REAL amass = 0;
    memset(centre, 0, sizeof(REAL) * J * POSE);
    for (int i = 0; i < I; i++) {
        const REAL *ui = u + (size_t)i * POSE;
        for (int j = 0; j < J; j++) {
            const REAL *wij = weight + ((size_t)i * J + j) * POSE;
            REAL *v = x + ((size_t)i * J + j) * POSE;
            vote(v, ui, wij, offsets ? offsets + (size_t)i * POSE : NULL);
            axpy(centre + j * POSE, a[i], v);
        }
        amass += a[i];
    }
    for (int k = 0; k < J * POSE; k++) centre[k] /= (amass + EPS);
    for (int i = 0; i < I; i++)
        for (int k = 0; k < J * POSE; k++) x[(size_t)i * J * POSE + k] -= centre[k];
}

/* E-step on iteration t-1's statistics: the coefficients r[t] (softmax over parent types). */
static void e_step(Work *w, int t) {
    const int I = w->I, J = w->J;
    const REAL *mean = w->mean + (size_t)(t - 1) * J * POSE, *var = w->var + (size_t)(t - 1) * J * POSE;
    REAL *inv_var = w->tmp, *log_norm = w->tmp + J * POSE, *bias = log_norm + J;
    for (int j = 0; j < J; j++) {
        REAL lv = 0;
        for (int d = 0; d < POSE; d++) {
            inv_var[j * POSE + d] = (REAL)1 / var[j * POSE + d];
            lv += LOG(var[j * POSE + d]);
        }
        log_norm[j] = (REAL)-0.5 * (LOG_2PI * POSE + lv);
        bias[j] = log_sigmoid(w->logit[(size_t)(t - 1) * J + j]);
    }
    REAL *r = w->r + (size_t)t * I * J;
    for (int i = 0; i < I; i++) {
        REAL top = -INFINITY;
        REAL *ri = r + (size_t)i * J;
        for (int j = 0; j < J; j++) {
            const REAL *xij = w->x + ((size_t)i * J + j) * POSE;
            const REAL dist = distance(xij, mean + j * POSE, inv_var + j * POSE);
            ri[j] = (log_norm[j] - (REAL)0.5 * dist) + bias[j];
            top = ri[j] > top ? ri[j] : top;
        }
        REAL total = 0;
        for (int j = 0; j < J; j++) total += (ri[j] = EXP(ri[j] - top));
        for (int j = 0; j < J; j++) ri[j] /= total;
    }
}

/* M-step t from the coefficients r[t]: mean, variance, mass and activation logit per parent. */
static void m_step(Work *w, int t, const REAL *a, const REAL *beta_u, const REAL *beta_a, REAL lam, REAL min_var,
                   REAL cost_div) {
    const int I = w->I, J = w->J;
    const REAL *r = w->r + (size_t)t * I * J;
    REAL *s1 = w->mean + (size_t)t * J * POSE, *s2 = w->var_raw + (size_t)t * J * POSE;
    REAL *var = w->var + (size_t)t * J * POSE, *mass = w->mass + (size_t)t * J;
    memset(s1, 0, sizeof(REAL) * J * POSE);
    memset(s2, 0, sizeof(REAL) * J * POSE);
    memset(mass, 0, sizeof(REAL) * J);
    for (int i = 0; i < I; i++)
        for (int j = 0; j < J; j++) {
            const REAL wt = r[(size_t)i * J + j] * a[i];
            const REAL *xij = w->x + ((size_t)i * J + j) * POSE;
            mass[j] += wt;
            add_moments(s1 + j * POSE, s2 + j * POSE, wt, xij);
        }
    for (int j = 0; j < J; j++) {
        const REAL den = mass[j] + EPS;
        REAL lv = 0;
        for (int d = 0; d < POSE; d++) {
            const int k = j * POSE + d;
            const REAL m = s1[k] / den;
            const REAL raw = s2[k] / den - m * m;
            s1[k] = m, s2[k] = raw;
            var[k] = (raw > 0 ? raw : 0) + min_var;
            lv += LOG(var[k]);
        }
        const REAL cost = (POSE * beta_u[j] + (REAL)0.5 * lv) * mass[j] / cost_div;
        w->logit[(size_t)t * J + j] = lam * (beta_a[j] - cost);
    }
}

/* Forward of one window: votes, then T M-steps, each but the first fed by an E-step. */
static void window_forward(Work *w, const REAL *u, const REAL *a, const REAL *weight, const REAL *offsets,
                           const REAL *beta_u, const REAL *beta_a, const REAL *lambdas, REAL min_var,
                           REAL cost_div) {
    const int I = w->I, J = w->J;
    centred_votes(w, u, a, weight, offsets);
    for (size_t k = 0; k < (size_t)I * J; k++) w->r[k] = (REAL)1 / J;
    for (int t = 0; t < w->T; t++) {
        if (t > 0) e_step(w, t);
        m_step(w, t, a, beta_u, beta_a, lambdas[t], min_var, cost_div);
    }
}

int NAME(em_forward)(long p0, long p1, int I, int J, int T, const REAL *pose, const REAL *act, const REAL *weight,
                     const REAL *offsets, const REAL *beta_u, const REAL *beta_a, const REAL *lambdas, REAL min_var,
                     REAL cost_div, REAL *out_pose, REAL *out_act, REAL *coef) {
    Work w;
    if (work_alloc(&w, I, J, T)) return -1;
    for (long p = p0; p < p1; p++) {
        window_forward(&w, pose + (size_t)p * I * POSE, act + (size_t)p * I, weight, offsets, beta_u, beta_a,
                       lambdas, min_var, cost_div);
        const REAL *mean = w.mean + (size_t)(T - 1) * J * POSE;
        for (int k = 0; k < J * POSE; k++) out_pose[(size_t)p * J * POSE + k] = mean[k] + w.centre[k];
        for (int j = 0; j < J; j++) out_act[(size_t)p * J + j] = sigmoid(w.logit[(size_t)(T - 1) * J + j]);
        if (coef) {
            const REAL *r = w.r + (size_t)(T - 1) * I * J;
            for (int j = 0; j < J; j++)
                for (int i = 0; i < I; i++) coef[((size_t)p * J + j) * I + i] = r[(size_t)i * J + j];
        }
    }
    free(w.x);
    return 0;
}

/* Backward of one window (after window_forward on it): w->gx, the child activation gradient
 * g_a [I], and the window's share of the beta gradients added into g_bu, g_ba [J]. */
static void window_backward(Work *w, const REAL *a, const REAL *beta_u, const REAL *lambdas, REAL cost_div,
                            const REAL *g_pose, const REAL *g_act, REAL *g_a, REAL *g_bu, REAL *g_ba) {
    const int I = w->I, J = w->J, T = w->T;
    const int JD = J * POSE;
    /* gradients of the last M-step's outputs, then of each earlier one's (through the E-step) */
    REAL *g_mean = w->tmp, *g_var = w->tmp + JD, *g_s1 = w->tmp + 2 * JD, *g_s2 = w->tmp + 3 * JD;
    REAL g_logvar[J], g_logit[J], g_mass[J], sum_g[J], g_r[J];
    memcpy(g_mean, g_pose, sizeof(REAL) * JD);
    memset(g_var, 0, sizeof(REAL) * JD);
    for (int j = 0; j < J; j++) {
        const REAL s = sigmoid(w->logit[(size_t)(T - 1) * J + j]);
        g_logit[j] = g_act[j] * s * (1 - s);
        g_logvar[j] = 0;
    }
    memset(w->gx, 0, sizeof(REAL) * (size_t)I * JD);
    for (int i = 0; i < I; i++) g_a[i] = 0;
    for (int t = T - 1; t >= 0; t--) {
        const REAL lam = lambdas[t];
        const REAL *mean = w->mean + (size_t)t * JD, *raw = w->var_raw + (size_t)t * JD, *var = w->var + (size_t)t * JD;
        const REAL *mass = w->mass + (size_t)t * J;
        /* M-step backward: gradients of the sums over children S1, S2 and the mass */
        for (int j = 0; j < J; j++) {
            REAL lv = 0;
            for (int d = 0; d < POSE; d++) lv += LOG(var[j * POSE + d]);
            const REAL pre = POSE * beta_u[j] + (REAL)0.5 * lv;
            const REAL g_cost = -lam * g_logit[j] / cost_div;
            g_ba[j] += lam * g_logit[j];
            g_bu[j] += POSE * mass[j] * g_cost;
            const REAL g_lv = (REAL)0.5 * mass[j] * g_cost + g_logvar[j];
            const REAL den = mass[j] + EPS;
            REAL gm = pre * g_cost, acc = 0;
            for (int d = 0; d < POSE; d++) {
                const int k = j * POSE + d;
                const REAL g_u = raw[k] >= 0 ? g_var[k] + g_lv / var[k] : 0; /* var = max(raw, 0) + min_var */
                const REAL g_m = g_mean[k] - 2 * mean[k] * g_u;
                acc += g_m * mean[k] + g_u * (raw[k] + mean[k] * mean[k]);
                g_s1[k] = g_m / den;
                g_s2[k] = g_u / den;
            }
            g_mass[j] = gm - acc / den;
        }
        /* per child: through w = R a into S1, S2, mass; then through R = softmax(ln p) of iteration t-1 */
        const REAL *r = w->r + (size_t)t * I * J;
        const REAL *pm = t > 0 ? w->mean + (size_t)(t - 1) * JD : NULL, *pv = t > 0 ? w->var + (size_t)(t - 1) * JD : NULL;
        for (int j = 0; j < J; j++) sum_g[j] = 0;
        REAL *inv_var = w->tmp + 4 * JD;
        if (t > 0) {
            memset(g_mean, 0, sizeof(REAL) * JD), memset(g_var, 0, sizeof(REAL) * JD);
            for (int k = 0; k < JD; k++) inv_var[k] = (REAL)1 / pv[k];
        }
        for (int i = 0; i < I; i++) {
            REAL dot = 0;
            for (int j = 0; j < J; j++) {
                const REAL *xij = w->x + ((size_t)i * J + j) * POSE;
                REAL *gij = w->gx + ((size_t)i * J + j) * POSE;
                const REAL rij = r[(size_t)i * J + j], wt = rij * a[i];
                const REAL gw = g_mass[j] + through_sums(gij, xij, g_s1 + j * POSE, g_s2 + j * POSE, wt);
                g_a[i] += gw * rij;
                g_r[j] = gw * a[i];
                dot += rij * g_r[j];
            }
            if (t == 0) continue;
            for (int j = 0; j < J; j++) {
                const REAL *xij = w->x + ((size_t)i * J + j) * POSE;
                REAL *gij = w->gx + ((size_t)i * J + j) * POSE;
                const REAL g_lp = r[(size_t)i * J + j] * (g_r[j] - dot);
                sum_g[j] += g_lp;
                through_e_step(gij, g_mean + j * POSE, g_var + j * POSE, xij, pm + j * POSE, inv_var + j * POSE, g_lp);
            }
        }
        if (t > 0)
            for (int j = 0; j < J; j++) {
                g_logvar[j] = (REAL)-0.5 * sum_g[j];
                g_logit[j] = sum_g[j] * sigmoid(-w->logit[(size_t)(t - 1) * J + j]);
            }
    }
}

/* Backward of windows [p0, p1): child pose and activation gradients (per window), and this block's
 * partial weight gradient g_w [I, J, 4, 4] and beta gradients g_bu, g_ba [J] (overwritten). */
int NAME(em_backward)(long p0, long p1, int I, int J, int T, const REAL *pose, const REAL *act, const REAL *weight,
                      const REAL *offsets, const REAL *beta_u, const REAL *beta_a, const REAL *lambdas,
                      REAL min_var, REAL cost_div, const REAL *g_out_pose, const REAL *g_out_act, REAL *g_pose,
                      REAL *g_act, REAL *g_w, REAL *g_bu, REAL *g_ba) {
    Work w;
    if (work_alloc(&w, I, J, T)) return -1;
    if (g_w) memset(g_w, 0, sizeof(REAL) * (size_t)I * J * POSE);
    memset(g_bu, 0, sizeof(REAL) * J);
    memset(g_ba, 0, sizeof(REAL) * J);
    for (long p = p0; p < p1; p++) {
        const REAL *u = pose + (size_t)p * I * POSE, *a = act + (size_t)p * I;
        window_forward(&w, u, a, weight, offsets, beta_u, beta_a, lambdas, min_var, cost_div);
        window_backward(&w, a, beta_u, lambdas, cost_div, g_out_pose + (size_t)p * J * POSE, g_out_act + (size_t)p * J,
                        g_act + (size_t)p * I, g_bu, g_ba);
        /* votes: dL/dU[r, k] = sum_j sum_c gx[j, 4r + c] W[j, k, c]; dL/dW[j, k, c] += sum_r U[r, k] gx[j, 4r + c] */
        REAL *gu = g_pose + (size_t)p * I * POSE;
        for (int i = 0; i < I; i++) {
            REAL acc[POSE] = {0};
            for (int j = 0; j < J; j++) {
                const REAL *gx = w.gx + ((size_t)i * J + j) * POSE, *wij = weight + ((size_t)i * J + j) * POSE;
                pose_grad(acc, gx, wij);
                if (g_w) weight_grad(g_w + ((size_t)i * J + j) * POSE, gx, u + (size_t)i * POSE);
            }
            memcpy(gu + (size_t)i * POSE, acc, sizeof acc);
        }
    }
    free(w.x);
    return 0;
}

/* out[k] = sum over blocks b (in block order) of parts[b, k]: a sum independent of the thread count. */
void NAME(sum_blocks)(long blocks, long n, const REAL *parts, REAL *out) {
    for (long k = 0; k < n; k++) out[k] = 0;
    for (long b = 0; b < blocks; b++)
        for (long k = 0; k < n; k++) out[k] += parts[(size_t)b * n + k];
}
