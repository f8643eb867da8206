/* VB routing (4x4 matrix votes), one pass over the windows per iteration.
 *
 * Compiled at first use by capsbench/capsules/routing/native/build.py, once per dtype and
 * instruction set (-DREAL=float -DSUFFIX=f32 or -DREAL=double -DSUFFIX=f64, -DVBYTES=16, 32 or 64
 * with -mavx2 / -mavx512f), as em_window.c. The maths is vb.py's (see its module docstring);
 * cpu_vb.py is the autograd glue.
 *
 * Every build gives the same bits: the vectors here are one 4-wide row of a pose whatever VBYTES
 * is, every sum has one order fixed in this file, and -ffp-contract=off forbids FMA; the wider
 * builds gain only from the VEX encoding and the compiler's scheduling (~10% measured on the
 * kernel). Vectors across parent types, as em_window.c's, are what would use the width.
 *
 * Why one pass per iteration and not one per window: VB's default normalises the
 * coefficients over every parent that receives a child, and overlapping windows share
 * children, so iteration t+1 of a window needs the E-step of its neighbours. What crosses
 * windows is only the coefficients R [P, J, I] (1/16 of the votes): a pass reads R_t,
 * recomputes each window's votes from the child poses and weights into a private buffer
 * (I x J x 16 values, L2-resident), runs the M-step and, except in the last pass, the
 * E-step, and writes the log-weights [P, J, I]; the caller normalises them (in PyTorch)
 * into R_{t+1}. The backward of a pass recomputes the same window and goes back through
 * the E-step and M-step; nothing votes-sized is ever stored.
 *
 * Layouts: pose [P, I, 16] (U[i, r, k] at 4r + k), act [P, I], weight [I, J, 4, 4]
 * (W[i, j, k, c]), offsets [I, 16] or NULL, coef and logits [P, J, I], mass [P, J],
 * mean, prec and centre [P, J, 16]. prior = {alpha0, kappa0, nu0, psi0, m0}.
 * Every sum over children runs in child order, so a window's results do not depend on
 * how windows are split between threads; the caller sums per-block weight partials in
 * block order.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if !defined(REAL) || !defined(SUFFIX)
#error "build.py compiles this file with -DREAL=float -DSUFFIX=f32 or -DREAL=double -DSUFFIX=f64"
#endif
#ifndef VBYTES
#define VBYTES 16 /* the vector width build.py builds for: 16 (SSE2), 32 (-mavx2), 64 (-mavx512f) */
#endif
#define EXPORT_NAME(name, suffix) name##_##suffix
#define EXPORT_AT(name, suffix) EXPORT_NAME(name, suffix) /* expands SUFFIX first */
#define EXPORT(name) EXPORT_AT(name, SUFFIX)

#define PD 16 /* pose entries */
#define EPS ((REAL)1e-8)
#define LOG_2PI 1.8378770664093453
#define LN2 0.6931471805599453

#define LOGR(x) _Generic((x), float: logf, default: log)(x)

/* One row of a 4x4 pose as a vector (GCC/Clang vector extension: 4 floats are one SSE2 register,
 * 4 doubles two). Element-wise operations round exactly as the scalar ones; only the order of
 * the sums is this file's own, fixed at compile time. Loads and stores go through memcpy (no
 * alignment or aliasing assumption; they compile to unaligned moves). */
typedef REAL vec4 __attribute__((vector_size(4 * sizeof(REAL))));
static inline vec4 load4(const REAL *p) {
    vec4 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store4(REAL *p, vec4 v) { memcpy(p, &v, sizeof v); }
static inline vec4 splat(REAL s) { return (vec4){s, s, s, s}; }
static inline REAL total4(vec4 v) { return (v[0] + v[1]) + (v[2] + v[3]); }

/* digamma and trigamma of x > 0, in double whatever REAL is: shift x up to >= 10 with the
 * recurrences, then the asymptotic series (error below 1e-16 there). They act on per-parent
 * scalars only, so their cost does not matter. */
static double digamma_d(double x) {
    double acc = 0;
    while (x < 10) acc -= 1 / x, x += 1;
    const double f = 1 / (x * x);
    const double tail = f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f * (1.0 / 132 - f * (691.0 / 32760 - f / 12))))));
    return acc + log(x) - 0.5 / x - tail;
}

static double trigamma_d(double x) {
    double acc = 0;
    while (x < 10) acc += 1 / (x * x), x += 1;
    const double f = 1 / (x * x);
    const double tail = f * (1.0 / 6 - f * (1.0 / 30 - f * (1.0 / 42 - f * (1.0 / 30 - f * (5.0 / 66 - f * (691.0 / 2730 - f * 7.0 / 6))))));
    return acc + (1 + (0.5 + tail * x) / x) / x;
}

/* sum_d digamma((nu - d)/2) for the log-determinant, and its derivative in nu */
static void log_det_digammas(double nu, int wishart, double *value, double *slope) {
    if (!wishart) {
        *value = PD * digamma_d(0.5 * nu), *slope = 0.5 * PD * trigamma_d(0.5 * nu);
        return;
    }
    *value = 0, *slope = 0;
    for (int d = 0; d < PD; d++) *value += digamma_d(0.5 * (nu - d)), *slope += 0.5 * trigamma_d(0.5 * (nu - d));
}

/* One window's centred votes and the statistics of one M-step; per-parent gradients in the backward. */
typedef struct {
    int I, J;
    REAL *x;      /* centred votes [I, J, 16] */
    REAL *centre; /* [J, 16]: activation-weighted mean vote (detached, as vb.py's prepare_votes) */
    REAL *s1, *s2, *xbar, *raw, *m0c, *mean, *prec; /* [J, 16] */
    REAL *mass, *kappa, *nu, *alpha, *bias;          /* [J]; bias: the per-parent part of ln rho */
    REAL *g_mean, *g_prec, *g_s1, *g_s2;             /* [J, 16] */
    REAL *g_mass, *g_bias, *g_nu;                    /* [J] */
} Window;

static int window_alloc(Window *w, int I, int J) {
    const size_t jd = (size_t)J * PD;
    REAL *p = (REAL *)malloc(((size_t)I * jd + 12 * jd + 8 * (size_t)J) * sizeof(REAL));
    if (!p) return -1;
    w->I = I, w->J = J;
    w->x = p, p += (size_t)I * jd;
    REAL **per_entry[] = {&w->centre, &w->s1, &w->s2, &w->xbar, &w->raw, &w->m0c, &w->mean, &w->prec,
                          &w->g_mean, &w->g_prec, &w->g_s1, &w->g_s2};
    for (int k = 0; k < 12; k++) *per_entry[k] = p, p += jd;
    REAL **per_parent[] = {&w->mass, &w->kappa, &w->nu, &w->alpha, &w->bias, &w->g_mass, &w->g_bias, &w->g_nu};
    for (int k = 0; k < 8; k++) *per_parent[k] = p, p += J;
    return 0;
}

/* v[4r + c] = sum_k U[r, k] W[k, c] (+ offset): row r of the vote is sum_k U[r, k] (row k of W) */
static inline void vote(REAL *restrict v, const REAL *restrict u, const REAL *restrict mat, const REAL *restrict off) {
    const vec4 w0 = load4(mat), w1 = load4(mat + 4), w2 = load4(mat + 8), w3 = load4(mat + 12);
    for (int r = 0; r < 4; r++) {
        vec4 row = splat(u[4 * r]) * w0 + splat(u[4 * r + 1]) * w1 + splat(u[4 * r + 2]) * w2 + splat(u[4 * r + 3]) * w3;
        if (off) row += load4(off + 4 * r);
        store4(v + 4 * r, row);
    }
}

/* The centre: the activation-weighted mean vote per parent. The window's votes are left in w->x
 * (uncentred). A child with activation 0 adds exactly 0. */
static void window_centre(Window *w, const REAL *u, const REAL *a, const REAL *weight, const REAL *offsets) {
    const int I = w->I, J = w->J, JD = J * PD;
    REAL total = 0;
    memset(w->centre, 0, sizeof(REAL) * JD);
    for (int i = 0; i < I; i++) {
        for (int j = 0; j < J; j++) {
            REAL *restrict v = w->x + ((size_t)i * J + j) * PD, *restrict cj = w->centre + j * PD;
            vote(v, u + (size_t)i * PD, weight + ((size_t)i * J + j) * PD, offsets ? offsets + (size_t)i * PD : NULL);
            for (int d = 0; d < PD; d++) cj[d] += a[i] * v[d];
        }
        total += a[i];
    }
    for (int k = 0; k < JD; k++) w->centre[k] /= (total + EPS);
}

/* The M-step from the weights R_ij a_i (coef [J, I] of this window), as vb.py's _update_parameters,
 * then the per-parent part of ln rho (vb.py's _log_rho). One sweep writes the centred votes into
 * w->x (from the uncentred ones there when have_votes, else recomputed) and sums their moments. */
static void m_step(Window *w, const REAL *u, const REAL *a, const REAL *weight, const REAL *offsets, int have_votes,
                   const REAL *coef, const REAL *prior, int wishart) {
    const int I = w->I, J = w->J;
    const REAL alpha0 = prior[0], kappa0 = prior[1], nu0 = prior[2], psi0 = prior[3], m0 = prior[4];
    memset(w->mass, 0, sizeof(REAL) * J);
    memset(w->s1, 0, sizeof(REAL) * J * PD);
    memset(w->s2, 0, sizeof(REAL) * J * PD);
    for (int i = 0; i < I; i++)
        for (int j = 0; j < J; j++) {
            const REAL wt = coef[(size_t)j * I + i] * a[i];
            REAL *restrict x = w->x + ((size_t)i * J + j) * PD;
            const REAL *restrict cj = w->centre + j * PD;
            REAL *restrict s1 = w->s1 + j * PD, *restrict s2 = w->s2 + j * PD;
            if (!have_votes)
                vote(x, u + (size_t)i * PD, weight + ((size_t)i * J + j) * PD, offsets ? offsets + (size_t)i * PD : NULL);
            w->mass[j] += wt;
            const vec4 wv = splat(wt);
            for (int r = 0; r < 4; r++) {
                const vec4 xr = load4(x + 4 * r) - load4(cj + 4 * r);
                store4(x + 4 * r, xr);
                store4(s1 + 4 * r, load4(s1 + 4 * r) + wv * xr);
                store4(s2 + 4 * r, load4(s2 + 4 * r) + wv * (xr * xr));
            }
        }
    double alpha_sum = 0;
    for (int j = 0; j < J; j++) {
        const REAL mass = w->mass[j], den = mass + EPS, kappa = kappa0 + mass, shrink = kappa0 * mass / kappa;
        REAL log_prec = 0;
        for (int d = 0; d < PD; d++) {
            const int k = j * PD + d;
            const REAL xbar = w->s1[k] / den, raw = w->s2[k] - w->s1[k] * xbar, m0c = m0 - w->centre[k];
            const REAL gap = xbar - m0c;
            w->xbar[k] = xbar, w->raw[k] = raw, w->m0c[k] = m0c;
            w->prec[k] = 1 / ((1 / psi0 + (raw > 0 ? raw : 0)) + shrink * (gap * gap));
            w->mean[k] = (kappa0 * m0c + w->s1[k]) / kappa;
            log_prec += LOGR(w->prec[k]);
        }
        w->kappa[j] = kappa, w->nu[j] = nu0 + mass, w->alpha[j] = alpha0 + mass;
        alpha_sum += w->alpha[j];
        double digammas, slope;
        log_det_digammas(w->nu[j], wishart, &digammas, &slope);
        const REAL log_det = (REAL)(digammas + PD * LN2) + log_prec;
        w->bias[j] = (REAL)digamma_d(w->alpha[j]) + (REAL)0.5 * log_det - (REAL)(0.5 * PD * LOG_2PI) - (REAL)0.5 * PD / kappa;
    }
    const REAL all = (REAL)digamma_d(alpha_sum);
    for (int j = 0; j < J; j++) w->bias[j] -= all;
}

/* sum_d prec_d (x_d - mean_d)^2 */
static inline REAL distance(const REAL *restrict x, const REAL *restrict mean, const REAL *restrict prec) {
    vec4 q = splat(0);
    for (int r = 0; r < 4; r++) {
        const vec4 diff = load4(x + 4 * r) - load4(mean + 4 * r);
        q += load4(prec + 4 * r) * (diff * diff);
    }
    return total4(q);
}

/* ln rho[j, i] = bias_j - nu_j / 2 sum_d prec_jd (x_ijd - mean_jd)^2 */
static void e_step(const Window *w, REAL *logits) {
    const int I = w->I, J = w->J;
    for (int i = 0; i < I; i++)
        for (int j = 0; j < J; j++) {
            const REAL q = distance(w->x + ((size_t)i * J + j) * PD, w->mean + j * PD, w->prec + j * PD);
            logits[(size_t)j * I + i] = w->bias[j] - (REAL)0.5 * (w->nu[j] * q);
        }
}

/* One window's centre (computed when centre_in is NULL, then written to centre_out) and M-step. */
static void window_forward(Window *w, long p, int I, int J, int wishart, const REAL *pose, const REAL *act,
                           const REAL *weight, const REAL *offsets, const REAL *coef, const REAL *prior,
                           const REAL *centre_in, REAL *centre_out) {
    const size_t JD = (size_t)J * PD;
    const REAL *u = pose + (size_t)p * I * PD, *a = act + (size_t)p * I;
    if (centre_in) {
        memcpy(w->centre, centre_in + p * JD, sizeof(REAL) * JD);
    } else {
        window_centre(w, u, a, weight, offsets);
        if (centre_out) memcpy(centre_out + p * JD, w->centre, sizeof(REAL) * JD);
    }
    m_step(w, u, a, weight, offsets, !centre_in, coef + p * (size_t)J * I, prior, wishart);
}

int EXPORT(vb_pass)(long p0, long p1, int I, int J, int wishart, const REAL *pose, const REAL *act,
                    const REAL *weight, const REAL *offsets, const REAL *coef, const REAL *prior,
                    const REAL *centre_in, REAL *centre_out, REAL *logits, REAL *mass, REAL *mean, REAL *prec) {
    Window w;
    if (window_alloc(&w, I, J)) return -1;
    const size_t JD = (size_t)J * PD, JI = (size_t)J * I;
    for (long p = p0; p < p1; p++) {
        window_forward(&w, p, I, J, wishart, pose, act, weight, offsets, coef, prior, centre_in, centre_out);
        if (logits) e_step(&w, logits + p * JI);
        if (mass) {
            memcpy(mass + p * J, w.mass, sizeof(REAL) * J);
            memcpy(mean + p * JD, w.mean, sizeof(REAL) * JD);
            memcpy(prec + p * JD, w.prec, sizeof(REAL) * JD);
        }
    }
    free(w.x);
    return 0;
}

/* Back through the E-step, given g = dL/d ln rho [J, I]: the per-parent sums it needs (w->g_bias,
 * w->g_nu) and the gradients of the M-step's outputs: w->g_mean, w->g_prec and w->g_mass (through
 * alpha, nu, kappa). The votes' share is computed again in gradient_sweep. */
static void e_step_backward(Window *w, const REAL *g, int wishart) {
    const int I = w->I, J = w->J;
    memset(w->g_mean, 0, sizeof(REAL) * J * PD);
    memset(w->g_prec, 0, sizeof(REAL) * J * PD);
    memset(w->g_bias, 0, sizeof(REAL) * J);
    memset(w->g_nu, 0, sizeof(REAL) * J);
    for (int i = 0; i < I; i++)
        for (int j = 0; j < J; j++) {
            const REAL gij = g[(size_t)j * I + i], g_q = (REAL)-0.5 * w->nu[j] * gij;
            const REAL *restrict x = w->x + ((size_t)i * J + j) * PD;
            const REAL *restrict mean = w->mean + j * PD, *restrict prec = w->prec + j * PD;
            REAL *restrict g_mean = w->g_mean + j * PD, *restrict g_prec = w->g_prec + j * PD;
            const vec4 gq = splat(g_q), gq2 = splat(2 * g_q);
            vec4 q = splat(0);
            for (int r = 0; r < 4; r++) {
                const vec4 diff = load4(x + 4 * r) - load4(mean + 4 * r), pr = load4(prec + 4 * r);
                q += pr * (diff * diff);
                store4(g_prec + 4 * r, load4(g_prec + 4 * r) + gq * (diff * diff));
                store4(g_mean + 4 * r, load4(g_mean + 4 * r) - gq2 * pr * diff);
            }
            w->g_bias[j] += gij;
            w->g_nu[j] += (REAL)-0.5 * total4(q) * gij;
        }
    double alpha_sum = 0, g_all = 0;
    for (int j = 0; j < J; j++) alpha_sum += w->alpha[j], g_all += w->g_bias[j];
    const REAL tri_all = (REAL)trigamma_d(alpha_sum);
    for (int j = 0; j < J; j++) {
        const REAL gb = w->g_bias[j];
        double digammas, slope;
        log_det_digammas(w->nu[j], wishart, &digammas, &slope);
        const REAL g_alpha = gb * (REAL)trigamma_d(w->alpha[j]) - tri_all * (REAL)g_all;
        const REAL g_kappa = gb * (REAL)0.5 * PD / (w->kappa[j] * w->kappa[j]);
        const REAL g_nu = w->g_nu[j] + (REAL)0.5 * gb * (REAL)slope;
        for (int d = 0; d < PD; d++) w->g_prec[j * PD + d] += (REAL)0.5 * gb / w->prec[j * PD + d];
        w->g_mass[j] = g_alpha + g_nu + g_kappa; /* alpha, nu and kappa are each a prior plus the mass */
    }
}

/* Back through the M-step's per-parent part, from w->g_mean, w->g_prec, w->g_mass: the gradients of
 * the sums over children, w->g_s1, w->g_s2 and (total) w->g_mass. */
static void m_step_backward(Window *w, const REAL *prior) {
    const REAL kappa0 = prior[1];
    for (int j = 0; j < w->J; j++) {
        const REAL mass = w->mass[j], den = mass + EPS, kappa = w->kappa[j], shrink = kappa0 * mass / kappa;
        REAL g_kappa = 0, g_shrink = 0, g_mass = w->g_mass[j];
        for (int d = 0; d < PD; d++) {
            const int k = j * PD + d;
            const REAL g_inv = -w->g_prec[k] * w->prec[k] * w->prec[k], gap = w->xbar[k] - w->m0c[k];
            const REAL g_raw = w->raw[k] >= 0 ? g_inv : 0; /* clamp_min(0)'s gradient, as torch's */
            REAL g_xbar = 2 * g_inv * shrink * gap - g_raw * w->s1[k];
            g_shrink += g_inv * (gap * gap);
            g_kappa -= w->g_mean[k] * w->mean[k] / kappa;
            w->g_s1[k] = -g_raw * w->xbar[k] + w->g_mean[k] / kappa + g_xbar / den;
            w->g_s2[k] = g_raw;
            g_mass -= g_xbar * w->xbar[k] / den;
        }
        g_kappa -= g_shrink * kappa0 * mass / (kappa * kappa);
        w->g_mass[j] = g_mass + g_shrink * kappa0 / kappa + g_kappa;
    }
}

/* One sweep over the children: each vote's gradient (through the E-step when g, through the sums
 * over children always), formed in registers and sent straight on to the child pose (g_u [I, 16])
 * and the weights (added into g_weight [I, J, 16]); dL/dR [J, I] (g_coef) and dL/da [I] (g_a).
 * weight_t: every 4x4 weight transposed. */
static void gradient_sweep(const Window *w, const REAL *u, const REAL *a, const REAL *weight_t, const REAL *coef,
                           const REAL *g, REAL *g_u, REAL *g_a, REAL *g_coef, REAL *g_weight) {
    const int I = w->I, J = w->J;
    for (int i = 0; i < I; i++) {
        vec4 gu[4] = {splat(0), splat(0), splat(0), splat(0)};
        REAL acc = 0;
        const REAL *ui = u + (size_t)i * PD;
        for (int j = 0; j < J; j++) {
            const REAL rij = coef[(size_t)j * I + i], wt = rij * a[i];
            const REAL g_q2 = g ? -w->nu[j] * g[(size_t)j * I + i] : 0; /* 2 dL/dq */
            const REAL *restrict x = w->x + ((size_t)i * J + j) * PD, *restrict mat_t = weight_t + ((size_t)i * J + j) * PD;
            const REAL *restrict g1 = w->g_s1 + j * PD, *restrict g2 = w->g_s2 + j * PD;
            const REAL *restrict mean = w->mean + j * PD, *restrict prec = w->prec + j * PD;
            const vec4 wv = splat(wt), gqv = splat(g_q2);
            vec4 gv[4], g_wt = splat(0);
            for (int r = 0; r < 4; r++) {
                const vec4 xr = load4(x + 4 * r), a1 = load4(g1 + 4 * r), a2 = load4(g2 + 4 * r);
                g_wt += (a1 + a2 * xr) * xr;
                gv[r] = gqv * load4(prec + 4 * r) * (xr - load4(mean + 4 * r)) + wv * (a1 + splat(2) * a2 * xr);
            }
            const REAL g_w = w->g_mass[j] + total4(g_wt);
            g_coef[(size_t)j * I + i] = g_w * a[i];
            acc += g_w * rij;
            /* dU[r, k] = sum_c gv[r, c] W[k, c]: row r of dU is sum_c gv[r, c] (row c of W^T) */
            const vec4 t0 = load4(mat_t), t1 = load4(mat_t + 4), t2 = load4(mat_t + 8), t3 = load4(mat_t + 12);
            for (int r = 0; r < 4; r++)
                gu[r] += splat(gv[r][0]) * t0 + splat(gv[r][1]) * t1 + splat(gv[r][2]) * t2 + splat(gv[r][3]) * t3;
            if (!g_weight) continue;
            REAL *restrict gm = g_weight + ((size_t)i * J + j) * PD; /* row k of dW: sum_r U[r, k] gv[r] */
            for (int k = 0; k < 4; k++)
                store4(gm + 4 * k, load4(gm + 4 * k) + splat(ui[k]) * gv[0] + splat(ui[4 + k]) * gv[1] +
                                       splat(ui[8 + k]) * gv[2] + splat(ui[12 + k]) * gv[3]);
        }
        for (int r = 0; r < 4; r++) store4(g_u + (size_t)i * PD + 4 * r, gu[r]);
        g_a[i] = acc;
    }
}

/* Backward of vb_pass over windows [p0, p1), with the centre the forward computed. g_logits [P, J, I]
 * for a pass that ended in an E-step; else (the last pass) g_mass [P, J], g_mean, g_prec [P, J, 16].
 * Writes g_pose [P, I, 16], g_act [P, I], g_coef [P, J, I] and this block's partial weight gradient
 * g_weight [I, J, 16] (overwritten; NULL when not wanted). */
int EXPORT(vb_pass_backward)(long p0, long p1, int I, int J, int wishart, const REAL *pose, const REAL *act,
                             const REAL *weight, const REAL *offsets, const REAL *coef, const REAL *prior,
                             const REAL *centre, const REAL *g_logits, const REAL *g_mass, const REAL *g_mean,
                             const REAL *g_prec, REAL *g_pose, REAL *g_act, REAL *g_coef, REAL *g_weight) {
    Window w;
    const size_t JD = (size_t)J * PD, JI = (size_t)J * I;
    REAL *weight_t = (REAL *)malloc(sizeof(REAL) * I * JD);
    if (!weight_t) return -1;
    if (window_alloc(&w, I, J)) return free(weight_t), -1;
    for (size_t m = 0; m < (size_t)I * J; m++)
        for (int k = 0; k < 4; k++)
            for (int c = 0; c < 4; c++) weight_t[m * PD + 4 * c + k] = weight[m * PD + 4 * k + c];
    if (g_weight) memset(g_weight, 0, sizeof(REAL) * I * JD);
    for (long p = p0; p < p1; p++) {
        window_forward(&w, p, I, J, wishart, pose, act, weight, offsets, coef, prior, centre, NULL);
        const REAL *g = g_logits ? g_logits + p * JI : NULL;
        if (g) {
            e_step_backward(&w, g, wishart);
        } else {
            memcpy(w.g_mass, g_mass + p * J, sizeof(REAL) * J);
            memcpy(w.g_mean, g_mean + p * JD, sizeof(REAL) * JD);
            memcpy(w.g_prec, g_prec + p * JD, sizeof(REAL) * JD);
        }
        m_step_backward(&w, prior);
        gradient_sweep(&w, pose + (size_t)p * I * PD, act + (size_t)p * I, weight_t, coef + p * JI, g,
                       g_pose + (size_t)p * I * PD, g_act + (size_t)p * I, g_coef + p * JI, g_weight);
    }
    free(w.x);
    free(weight_t);
    return 0;
}

#define EXPORTED(name) EXPORT(name)
#include "vector_width.h"
