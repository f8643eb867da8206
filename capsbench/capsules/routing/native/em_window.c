/* EM routing (normalised over parent types, 4x4 matrix votes), one window at a time.
 *
 * Compiled at first use by capsbench/capsules/routing/native/build.py, once per dtype and
 * instruction set: -DREAL=float -DSUFFIX=f32 or -DREAL=double -DSUFFIX=f64, and -DVBYTES=16
 * (x86-64 baseline SSE2, or any other machine), 32 (with -mavx2) or 64 (with -mavx512f). Plain
 * C with GCC/Clang vector extensions, no torch headers; every tensor arrives as a pointer to
 * contiguous memory. The maths is em.py's (see its module docstring); the backward follows the
 * derivation of the Triton kernel, written out per window.
 *
 * Layouts (arguments): pose [P, I, 16] (U[i, r, k] at 4r + k), act [P, I], weight [I, J, 4, 4]
 * (W[i, j, k, c]), offsets [I, 16] or NULL, out_pose [P, J, 16], out_act [P, J], coef [P, J, I]
 * or NULL, terms [P, 3, J] (the last M-step's mass, cost and logit, for telemetry) or NULL. A vote
 * is v[i, j, 4r + c] = sum_k U[i, r, k] W[i, j, k, c] (+ offset).
 *
 * Why per window: a window's votes (I x J x 16) are recomputed into a private buffer that
 * stays in L2 while every iteration reads it; nothing votes-sized reaches main memory. The
 * forward can save each window's coefficients and statistics (state_size values per window);
 * the backward then recomputes only the votes (else the whole forward, with the same bits).
 *
 * Vectors run across the parent types j: inside a window every array is [..., JP] with JP the
 * number of parent types rounded up to a multiple of 4 and of the vector width (padding lanes
 * hold zero weights and coefficients, so they never reach a real lane). Lanes are independent
 * and each lane runs exactly the scalar sequence of operations (no FMA: -ffp-contract=off), so
 * the SSE2, AVX2 and AVX-512 builds give the same bits; the few sums across parent types (the
 * softmax's normaliser, the pose and activation gradients) use one fixed order, fold4() below,
 * whatever the vector width. Every sum over children runs in child order, so results do not
 * depend on how windows are split between threads; the caller sums per-block weight/beta
 * partials in block order.
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
#ifndef VBYTES
#define VBYTES 16
#endif
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define NAME(n) CAT(n, SUFFIX)
#define PCAT2(a, b) a##b
#define PCAT(a, b) PCAT2(a, b)
#define IS_float 1
#define IS_double 0

#define POSE 16
/* variant flags (em.py's options; 0: capsbench's EM) */
#define RENORMALISE 1 /* renormalise=True: w_ij = R_ij a_i / (sum_j R_ij a_i + eps) (yl-1993) */
#define INITIAL_ONE 2 /* initial_coefficients="one": the first M-step with R = 1 (SR-CapsNet) */
#define EPS ((REAL)1e-8)
#define LOG_2PI ((REAL)1.8378770664093453)

#if PCAT(IS_, REAL)
typedef int IREAL; /* an integer as wide as REAL: exp's exponent bits */
#define F32 1
#else
typedef long long IREAL;
#define F32 0
#endif
typedef REAL vec __attribute__((vector_size(VBYTES), may_alias));
typedef IREAL ivec __attribute__((vector_size(VBYTES), may_alias));
typedef REAL vec4 __attribute__((vector_size(4 * sizeof(REAL)), may_alias));
typedef IREAL ivec4 __attribute__((vector_size(4 * sizeof(REAL)), may_alias));
#define VL ((int)(VBYTES / sizeof(REAL)))
#define V(p) (*(vec *)(p))
#define V4(p) (*(vec4 *)(p))
#define ALIGN 64
#define PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define UNROLL4 PRAGMA(unroll 4)
#else
#define UNROLL4 PRAGMA(GCC unroll 4)
#endif

/* libm in the working precision (expf/logf for float): the few per-parent scalars */
#define EXP(x) _Generic((x), float: expf, default: exp)(x)
#define LOG(x) _Generic((x), float: logf, default: log)(x)
#define LOG1P(x) _Generic((x), float: log1pf, default: log1p)(x)

static REAL log_sigmoid(REAL x) { return (x < 0 ? x : 0) - LOG1P(EXP(-fabs(x))); }
static REAL sigmoid(REAL x) { return (REAL)1 / ((REAL)1 + EXP(-x)); }

static inline vec splat(REAL s) { return (vec){0} + s; }
static inline vec select(ivec mask, vec yes, vec no) { return (vec)((mask & (ivec)yes) | (~mask & (ivec)no)); }

/* e^x lane by lane, for the E-step's x = logit - max <= 0 (any x: see the limits). Cody-Waite
 * reduction x = n ln2 + r with |r| <= ln2/2 (n by the round-to-nearest magic constant, ln2 in a
 * high part exact in n * ln2_hi and a low part), the Taylor polynomial of e^r (degree 7 in float,
 * 13 in double: truncation below 1e-8 / 1e-17 relative) by Horner, times 2^n built in the exponent
 * bits. Limits: x below ln(smallest normal) (-87.34 float, -708.4 double) gives 0 where libm gives
 * a subnormal or 0 (irrelevant next to the softmax's largest term, e^0 = 1); NaN gives NaN; x must
 * not exceed ln(largest) (the E-step's x never exceeds 0). Max error against libm, measured over
 * [-87.34, 0] (float, 2^24 points) and [-708.4, 0] (double) by tests/test_cpu_em_kernel.py: see
 * EXP_MAX_ULP there. e^0 is exactly 1. */
static inline vec vexp(vec x) {
#if F32
    const REAL lowest = -87.336544f, magic = 12582912.0f, log2e = 1.44269504088896341f;
    const REAL ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const IREAL magic_bits = 0x4B400000, bias = 127, mantissa = 23;
    const REAL c[] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
#else
    const REAL lowest = -708.39641853226408, magic = 6755399441055744.0, log2e = 1.44269504088896338700;
    const REAL ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    const IREAL magic_bits = 0x4338000000000000LL, bias = 1023, mantissa = 52;
    const REAL c[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                      1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
#endif
    const int degree = (int)(sizeof c / sizeof c[0]) - 1;
    const ivec tiny = (ivec)(x < splat(lowest));
    x = select(tiny, splat(lowest), x);
    const vec t = x * log2e + magic; /* the integer n nearest x log2(e), in t's low mantissa bits */
    const vec n = t - magic;
    const vec r = (x - n * ln2_hi) - n * ln2_lo;
    vec p = splat(c[0]);
    for (int k = 1; k <= degree; k++) p = p * r + c[k];
    const vec scale = (vec)((((ivec)t - magic_bits) + bias) << mantissa);
    return select(tiny, splat(0), p * scale);
}

/* The sum of v[0..4*groups) in one fixed order whatever the vector width: four partial sums over
 * groups of four lanes (lane l of every group, in group order), then (p0 + p1) + (p2 + p3). */
static inline REAL fold4(const REAL *v, int groups) {
    vec4 p = V4(v);
    for (int g = 1; g < groups; g++) p += V4(v + 4 * g);
    return (p[0] + p[1]) + (p[2] + p[3]);
}

/* out[m] = fold4(rows + m JP, JP / 4) for the 16 rows m of rows [16, JP]: the same order as fold4, with
 * the four rows of each group of four transposed so that their last step runs as one vector. */
static inline void fold4_rows(REAL *out, const REAL *rows, int JP) {
    for (int m0 = 0; m0 < POSE; m0 += 4) {
        vec4 p[4];
        UNROLL4 for (int k = 0; k < 4; k++) {
            p[k] = V4(rows + (m0 + k) * JP);
            for (int g = 4; g < JP; g += 4) p[k] += V4(rows + (m0 + k) * JP + g);
        }
        const vec4 c0 = {p[0][0], p[1][0], p[2][0], p[3][0]}, c1 = {p[0][1], p[1][1], p[2][1], p[3][1]};
        const vec4 c2 = {p[0][2], p[1][2], p[2][2], p[3][2]}, c3 = {p[0][3], p[1][3], p[2][3], p[3][3]};
        const vec4 sum = (c0 + c1) + (c2 + c3);
        memcpy(out + m0, &sum, sizeof sum);
    }
}

/* The largest of v[0..n), n a multiple of 4 (a maximum is exact: any order gives the same value). */
static inline REAL max_lanes(const REAL *v, int n) {
    vec4 m = V4(v);
    for (int g = 4; g < n; g += 4) {
        const vec4 o = V4(v + g);
        m = (vec4)(((o > m) & (ivec4)o) | (~(o > m) & (ivec4)m));
    }
    const REAL a = m[0] > m[1] ? m[0] : m[1], b = m[2] > m[3] ? m[2] : m[3];
    return a > b ? a : b;
}

/* Per-window statistics of every iteration and the scratch buffers, allocated once per call;
 * arrays over parent types have JP lanes (see the top of the file). */
typedef struct {
    int I, J, JP, T, variant;
    REAL *w;        /* per-child weights transposed: [I, 4 (k), 4 (c), JP] */
    REAL *x;        /* centred votes [I, 16, JP] */
    REAL *gx;       /* their gradient [I, 16, JP] (backward) */
    REAL *gw;       /* the block's weight gradient [I, 16, JP] (backward) */
    REAL *r;        /* coefficients of every iteration [T, I, JP] (iteration 0: uniform) */
    REAL *mean;     /* [T, 16, JP] relative to the centre */
    REAL *var_raw;  /* [T, 16, JP] before the floor */
    REAL *var;      /* [T, 16, JP] floored */
    REAL *mass;     /* [T, JP] */
    REAL *logit;    /* [T, JP] */
    REAL *logvar;   /* [T, JP]: sum over the pose of ln var */
    REAL *centre;   /* [16, JP] */
    REAL *tmp;      /* [5, 16, JP] + [8, JP] per-parent temporaries */
    REAL *base;
} Work;

/* Lanes per array over parent types: J rounded up to a multiple of 4 (fold4) and of the vector width. */
static int lanes(int J) {
    const int step = VL > 4 ? VL : 4;
    return (J + step - 1) / step * step;
}

static int work_alloc(Work *w, int I, int J, int T, int variant, const REAL *weight) {
    const int JP = lanes(J);
    size_t ijd = (size_t)I * POSE * JP, jd = (size_t)POSE * JP;
    size_t total = 4 * ijd + (size_t)T * I * JP + 3 * T * jd + 3 * (size_t)T * JP + jd + 5 * jd + 8 * (size_t)JP;
    size_t bytes = (total * sizeof(REAL) + ALIGN - 1) / ALIGN * ALIGN;
    REAL *base = (REAL *)aligned_alloc(ALIGN, bytes);
    if (!base) return -1;
    memset(base, 0, bytes); /* padding lanes stay zero */
    w->I = I, w->J = J, w->JP = JP, w->T = T, w->variant = variant, w->base = base;
    w->w = base, base += ijd;
    w->x = base, base += ijd;
    w->gx = base, base += ijd;
    w->gw = base, base += ijd;
    w->r = base, base += (size_t)T * I * JP;
    w->mean = base, base += T * jd;
    w->var_raw = base, base += T * jd;
    w->var = base, base += T * jd;
    w->mass = base, base += (size_t)T * JP;
    w->logit = base, base += (size_t)T * JP;
    w->logvar = base, base += (size_t)T * JP;
    w->centre = base, base += jd;
    w->tmp = base;
    const REAL r0 = variant & INITIAL_ONE ? 1 : (REAL)1 / J; /* iteration 0: uniform over parent types, or 1 */
    for (int i = 0; i < I; i++)
        for (int j = 0; j < J; j++) {
            for (int kc = 0; kc < POSE; kc++) w->w[((size_t)i * POSE + kc) * JP + j] = weight[((size_t)i * J + j) * POSE + kc];
            w->r[(size_t)i * JP + j] = r0;
        }
    return 0;
}

/* What a window's backward needs from its forward besides the votes: the coefficients of iterations
 * 1..T-1, every iteration's statistics and the centre, which lie contiguous in Work from r + I*JP to
 * the end of centre. The forward saves them, so the backward recomputes only the votes. */
static size_t state_floats(const Work *w) { return (size_t)(w->centre + POSE * w->JP - (w->r + (size_t)w->I * w->JP)); }

static void save_state(const Work *w, REAL *state) { memcpy(state, w->r + (size_t)w->I * w->JP, sizeof(REAL) * state_floats(w)); }

static void load_state(Work *w, const REAL *state) { memcpy(w->r + (size_t)w->I * w->JP, state, sizeof(REAL) * state_floats(w)); }

/* Votes of one window into w->x, then centred on the activation-weighted mean vote (em.prepare_votes);
 * with a = NULL the centre is the one in w->centre (the forward's, restored by load_state). */
static void centred_votes(Work *w, const REAL *u, const REAL *a, const REAL *offsets) {
    const int I = w->I, JP = w->JP;
    REAL *x = w->x, *centre = w->centre;
    REAL amass = 0;
    if (a) memset(centre, 0, sizeof(REAL) * POSE * JP);
    for (int i = 0; i < I; i++) {
        const REAL *ui = u + (size_t)i * POSE, *wi = w->w + (size_t)i * POSE * JP;
        REAL *xi = x + (size_t)i * POSE * JP;
        for (int rc = 0; rc < POSE; rc++) { /* v[4r + c] = sum_k U[r, k] W[k, c] */
            const int r = rc / 4, c = rc % 4;
            const REAL off = offsets ? offsets[(size_t)i * POSE + rc] : 0;
            for (int q = 0; q < JP; q += VL) {
                vec v = ui[4 * r] * V(wi + c * JP + q) + ui[4 * r + 1] * V(wi + (4 + c) * JP + q) +
                        ui[4 * r + 2] * V(wi + (8 + c) * JP + q) + ui[4 * r + 3] * V(wi + (12 + c) * JP + q);
                if (offsets) v += off;
                V(xi + rc * JP + q) = v;
                if (a) V(centre + rc * JP + q) += a[i] * v;
            }
        }
        if (a) amass += a[i];
    }
    if (a)
        for (int k = 0; k < POSE * JP; k += VL) V(centre + k) /= (amass + EPS);
    for (int i = 0; i < I; i++)
        for (int k = 0; k < POSE * JP; k += VL) V(x + (size_t)i * POSE * JP + k) -= V(centre + k);
}

/* E-step on iteration t-1's statistics: the coefficients r[t] (softmax over parent types). */
static void e_step(Work *w, int t) {
    const int I = w->I, J = w->J, JP = w->JP;
    const REAL *mean = w->mean + (size_t)(t - 1) * POSE * JP, *var = w->var + (size_t)(t - 1) * POSE * JP;
    REAL *inv_var = w->tmp, *log_norm = w->tmp + POSE * JP, *bias = log_norm + JP;
    for (int k = 0; k < POSE * JP; k += VL) V(inv_var + k) = (REAL)1 / V(var + k);
    for (int j = 0; j < JP; j++) {
        log_norm[j] = (REAL)-0.5 * (LOG_2PI * POSE + w->logvar[(size_t)(t - 1) * JP + j]);
        bias[j] = j < J ? log_sigmoid(w->logit[(size_t)(t - 1) * JP + j]) : -INFINITY; /* padding: e^-inf = 0 */
    }
    REAL *r = w->r + (size_t)t * I * JP;
    for (int i = 0; i < I; i++) {
        const REAL *xi = w->x + (size_t)i * POSE * JP;
        REAL *ri = r + (size_t)i * JP;
        for (int q = 0; q < JP; q += VL) {
            vec part[4] = {{0}, {0}, {0}, {0}}; /* sum_d (x_d - m_d)^2 / var_d in four partial sums */
            for (int d0 = 0; d0 < POSE; d0 += 4)
                UNROLL4 for (int k = 0; k < 4; k++) { /* k = d % 4 unrolled: the partial sums stay in registers */
                    const int d = d0 + k;
                    const vec diff = V(xi + d * JP + q) - V(mean + d * JP + q);
                    part[k] += diff * diff * V(inv_var + d * JP + q);
                }
            const vec dist = (part[0] + part[1]) + (part[2] + part[3]);
            V(ri + q) = (V(log_norm + q) - (REAL)0.5 * dist) + V(bias + q);
        }
        const REAL top = max_lanes(ri, JP); /* padding lanes are -inf */
        for (int q = 0; q < JP; q += VL) V(ri + q) = vexp(V(ri + q) - top);
        const REAL total = fold4(ri, JP / 4);
        for (int q = 0; q < JP; q += VL) V(ri + q) /= total;
    }
}

/* Child i's weights over parent types from its coefficients ri: R a_i, or with RENORMALISE divided by
 * their sum over parent types (fold4's order) plus eps; returns that divisor (1 without RENORMALISE). */
static REAL child_weights(const Work *w, const REAL *ri, REAL a, REAL *row) {
    const int JP = w->JP;
    for (int q = 0; q < JP; q += VL) V(row + q) = V(ri + q) * a;
    if (!(w->variant & RENORMALISE)) return 1;
    const REAL den = fold4(row, JP / 4) + EPS;
    for (int q = 0; q < JP; q += VL) V(row + q) /= den;
    return den;
}

/* M-step t from the coefficients r[t]: mean, variance, mass and activation logit per parent. */
static void m_step(Work *w, int t, const REAL *a, const REAL *beta_u, const REAL *beta_a, REAL lam, REAL min_var,
                   REAL cost_div) {
    const int I = w->I, J = w->J, JP = w->JP;
    const REAL *r = w->r + (size_t)t * I * JP;
    REAL *s1 = w->mean + (size_t)t * POSE * JP, *s2 = w->var_raw + (size_t)t * POSE * JP;
    REAL *var = w->var + (size_t)t * POSE * JP, *mass = w->mass + (size_t)t * JP;
    memset(s1, 0, sizeof(REAL) * POSE * JP);
    memset(s2, 0, sizeof(REAL) * POSE * JP);
    memset(mass, 0, sizeof(REAL) * JP);
    REAL *row = w->tmp; /* [JP]: child i's weights */
    for (int i = 0; i < I; i++) {
        const REAL *xi = w->x + (size_t)i * POSE * JP;
        child_weights(w, r + (size_t)i * JP, a[i], row);
        for (int q = 0; q < JP; q += VL) {
            const vec wt = V(row + q);
            V(mass + q) += wt;
            for (int d = 0; d < POSE; d++) {
                const vec xv = V(xi + d * JP + q);
                V(s1 + d * JP + q) += wt * xv;
                V(s2 + d * JP + q) += wt * (xv * xv);
            }
        }
    }
    for (int j = 0; j < JP; j++) {
        const REAL den = mass[j] + EPS;
        REAL lv = 0;
        for (int d = 0; d < POSE; d++) {
            const int k = d * JP + j;
            const REAL m = s1[k] / den;
            const REAL raw = s2[k] / den - m * m;
            s1[k] = m, s2[k] = raw;
            var[k] = (raw > 0 ? raw : 0) + min_var;
            lv += LOG(var[k]);
        }
        w->logvar[(size_t)t * JP + j] = lv;
        if (j < J) {
            const REAL cost = (POSE * beta_u[j] + (REAL)0.5 * lv) * mass[j] / cost_div;
            w->logit[(size_t)t * JP + j] = lam * (beta_a[j] - cost);
        }
    }
}

/* Forward of one window: votes, then T M-steps, each but the first fed by an E-step. */
static void window_forward(Work *w, const REAL *u, const REAL *a, const REAL *offsets, const REAL *beta_u,
                           const REAL *beta_a, const REAL *lambdas, REAL min_var, REAL cost_div) {
    centred_votes(w, u, a, offsets);
    for (int t = 0; t < w->T; t++) {
        if (t > 0) e_step(w, t);
        m_step(w, t, a, beta_u, beta_a, lambdas[t], min_var, cost_div);
    }
}

int NAME(em_forward)(long p0, long p1, int I, int J, int T, const REAL *pose, const REAL *act, const REAL *weight,
                     const REAL *offsets, const REAL *beta_u, const REAL *beta_a, const REAL *lambdas, REAL min_var,
                     REAL cost_div, int variant, REAL *out_pose, REAL *out_act, REAL *coef, REAL *state,
                     REAL *terms) {
    Work w;
    if (work_alloc(&w, I, J, T, variant, weight)) return -1;
    const int JP = w.JP;
    for (long p = p0; p < p1; p++) {
        window_forward(&w, pose + (size_t)p * I * POSE, act + (size_t)p * I, offsets, beta_u, beta_a, lambdas,
                       min_var, cost_div);
        if (state) save_state(&w, state + (size_t)p * state_floats(&w));
        const REAL *mean = w.mean + (size_t)(T - 1) * POSE * JP;
        for (int j = 0; j < J; j++) {
            for (int d = 0; d < POSE; d++)
                out_pose[((size_t)p * J + j) * POSE + d] = mean[d * JP + j] + w.centre[d * JP + j];
            out_act[(size_t)p * J + j] = sigmoid(w.logit[(size_t)(T - 1) * JP + j]);
        }
        if (coef) { /* one iteration: the initial uniform 1/J (em.py returns the normaliser's, even with INITIAL_ONE) */
            const REAL *r = w.r + (size_t)(T - 1) * I * JP;
            for (int j = 0; j < J; j++)
                for (int i = 0; i < I; i++) coef[((size_t)p * J + j) * I + i] = T > 1 ? r[(size_t)i * JP + j] : (REAL)1 / J;
        }
        if (terms) { /* telemetry: the last M-step's mass, cost (m_step's expression, same bits) and logit [3, J] */
            const REAL *mass = w.mass + (size_t)(T - 1) * JP, *lv = w.logvar + (size_t)(T - 1) * JP;
            REAL *out = terms + (size_t)p * 3 * J;
            for (int j = 0; j < J; j++) {
                out[j] = mass[j];
                out[J + j] = (POSE * beta_u[j] + (REAL)0.5 * lv[j]) * mass[j] / cost_div;
                out[2 * J + j] = w.logit[(size_t)(T - 1) * JP + j];
            }
        }
    }
    free(w.base);
    return 0;
}

/* Backward of one window (after window_forward on it): w->gx, the child activation gradient
 * g_a [I], and the window's share of the beta gradients added into g_bu, g_ba [J]. */
static void window_backward(Work *w, const REAL *a, const REAL *beta_u, const REAL *lambdas, REAL cost_div,
                            const REAL *g_pose, const REAL *g_act, REAL *g_a, REAL *g_bu, REAL *g_ba) {
    const int I = w->I, J = w->J, JP = w->JP, T = w->T;
    const int JD = POSE * JP;
    /* gradients of the last M-step's outputs, then of each earlier one's (through the E-step) */
    REAL *g_mean = w->tmp, *g_var = w->tmp + JD, *g_s1 = w->tmp + 2 * JD, *g_s2 = w->tmp + 3 * JD;
    REAL *inv_var = w->tmp + 4 * JD, *lanes = w->tmp + 5 * JD;
    REAL *g_logvar = lanes, *g_logit = lanes + JP, *g_mass = lanes + 2 * JP, *sum_g = lanes + 3 * JP;
    REAL *g_r = lanes + 4 * JP, *to_a = lanes + 5 * JP, *to_dot = lanes + 6 * JP, *row = lanes + 7 * JP;
    memset(w->tmp, 0, sizeof(REAL) * (5 * JD + 8 * JP));
    for (int j = 0; j < J; j++) {
        for (int d = 0; d < POSE; d++) g_mean[d * JP + j] = g_pose[j * POSE + d];
        const REAL s = sigmoid(w->logit[(size_t)(T - 1) * JP + j]);
        g_logit[j] = g_act[j] * s * (1 - s);
    }
    memset(w->gx, 0, sizeof(REAL) * (size_t)I * JD);
    for (int i = 0; i < I; i++) g_a[i] = 0;
    for (int t = T - 1; t >= 0; t--) {
        const REAL lam = lambdas[t];
        const REAL *mean = w->mean + (size_t)t * JD, *raw = w->var_raw + (size_t)t * JD, *var = w->var + (size_t)t * JD;
        const REAL *mass = w->mass + (size_t)t * JP;
        /* M-step backward: gradients of the sums over children S1, S2 and the mass (padding lanes: zero) */
        for (int j = 0; j < J; j++) {
            const REAL pre = POSE * beta_u[j] + (REAL)0.5 * w->logvar[(size_t)t * JP + j];
            const REAL g_cost = -lam * g_logit[j] / cost_div;
            g_ba[j] += lam * g_logit[j];
            g_bu[j] += POSE * mass[j] * g_cost;
            const REAL g_lv = (REAL)0.5 * mass[j] * g_cost + g_logvar[j];
            const REAL den = mass[j] + EPS;
            REAL gm = pre * g_cost, acc = 0;
            for (int d = 0; d < POSE; d++) {
                const int k = d * JP + j;
                const REAL g_u = raw[k] >= 0 ? g_var[k] + g_lv / var[k] : 0; /* var = max(raw, 0) + min_var */
                const REAL g_m = g_mean[k] - 2 * mean[k] * g_u;
                acc += g_m * mean[k] + g_u * (raw[k] + mean[k] * mean[k]);
                g_s1[k] = g_m / den;
                g_s2[k] = g_u / den;
            }
            g_mass[j] = gm - acc / den;
        }
        /* per child: through w = R a into S1, S2, mass; then through R = softmax(ln p) of iteration t-1 */
        const REAL *r = w->r + (size_t)t * I * JP;
        const REAL *pm = t > 0 ? w->mean + (size_t)(t - 1) * JD : NULL, *pv = t > 0 ? w->var + (size_t)(t - 1) * JD : NULL;
        memset(sum_g, 0, sizeof(REAL) * JP);
        if (t > 0) {
            memset(g_mean, 0, sizeof(REAL) * JD), memset(g_var, 0, sizeof(REAL) * JD);
            for (int k = 0; k < JD; k += VL) V(inv_var + k) = (REAL)1 / V(pv + k);
        }
        for (int i = 0; i < I; i++) {
            const REAL *xi = w->x + (size_t)i * JD, *ri = r + (size_t)i * JP;
            REAL *gi = w->gx + (size_t)i * JD;
            const REAL den = child_weights(w, ri, a[i], row); /* the forward's weights, same bits */
            for (int q = 0; q < JP; q += VL) {
                const vec wt = V(row + q);
                vec part[4] = {{0}, {0}, {0}, {0}}; /* sum_d (g1 + g2 x) x = dL/dw - g_mass */
                for (int d0 = 0; d0 < POSE; d0 += 4)
                    UNROLL4 for (int k = 0; k < 4; k++) {
                        const int d = d0 + k;
                        const vec xv = V(xi + d * JP + q), g1 = V(g_s1 + d * JP + q), g2 = V(g_s2 + d * JP + q);
                        part[k] += (g1 + g2 * xv) * xv;
                        V(gi + d * JP + q) += wt * (g1 + 2 * g2 * xv);
                    }
                V(g_r + q) = V(g_mass + q) + ((part[0] + part[1]) + (part[2] + part[3])); /* dL/dw, for now */
                V(to_dot + q) = V(g_r + q) * wt;
            }
            if (w->variant & RENORMALISE) {
                /* w = u / den with u = R a, den = sum_j u_j + eps: dL/du_j = (dL/dw_j - sum_k dL/dw_k w_k) / den.
                 * Then dL/da = sum_j R_j dL/du_j = eps sum_j R_j dL/dw_j / den^2 exactly (with sum_j u_j =
                 * a sum_j R_j the rest cancels): written so, not as the difference of two nearly equal
                 * sums, which in float32 keeps only ~1e-7 / den of it (the reference's autograd does that) */
                const REAL through = fold4(to_dot, JP / 4), scale = EPS / (den * den);
                for (int q = 0; q < JP; q += VL) {
                    const vec rr = V(ri + q), gw = V(g_r + q);
                    V(to_a + q) = rr * gw * scale;
                    V(g_r + q) = (gw - through) / den * a[i];
                    V(to_dot + q) = rr * V(g_r + q);
                }
            } else { /* w = R a */
                for (int q = 0; q < JP; q += VL) {
                    const vec rr = V(ri + q), gw = V(g_r + q);
                    V(to_a + q) = gw * rr;
                    V(g_r + q) = gw * a[i];
                    V(to_dot + q) = rr * V(g_r + q);
                }
            }
            g_a[i] += fold4(to_a, JP / 4);
            if (t == 0) continue;
            const REAL dot = fold4(to_dot, JP / 4);
            for (int q = 0; q < JP; q += VL) {
                const vec g_lp = V(ri + q) * (V(g_r + q) - dot);
                V(sum_g + q) += g_lp;
                for (int d = 0; d < POSE; d++) { /* ln p = ... - 1/2 sum_d (x - mu)^2 / sigma^2 */
                    const vec z = (V(xi + d * JP + q) - V(pm + d * JP + q)) * V(inv_var + d * JP + q);
                    V(gi + d * JP + q) -= g_lp * z;
                    V(g_mean + d * JP + q) += g_lp * z;
                    V(g_var + d * JP + q) += (REAL)0.5 * g_lp * z * z;
                }
            }
        }
        if (t > 0)
            for (int j = 0; j < J; j++) {
                g_logvar[j] = (REAL)-0.5 * sum_g[j];
                g_logit[j] = sum_g[j] * sigmoid(-w->logit[(size_t)(t - 1) * JP + j]);
            }
    }
}

/* Through the votes of one window: dL/dU[i, r, k] = sum_j sum_c gx[i, 4r + c, j] W[i, j, k, c] (the sum over
 * j by fold4), and the block's dL/dW[i, j, k, c] += sum_r U[i, r, k] gx[i, 4r + c, j] (lane by lane). */
static void votes_backward(Work *w, const REAL *u, REAL *g_u, int want_w) {
    const int I = w->I, JP = w->JP;
    REAL *acc = w->tmp; /* [16, JP] */
    for (int i = 0; i < I; i++) {
        const REAL *gi = w->gx + (size_t)i * POSE * JP, *wi = w->w + (size_t)i * POSE * JP, *ui = u + (size_t)i * POSE;
        for (int rk = 0; rk < POSE; rk++) {
            const int r = rk / 4, k = rk % 4;
            for (int q = 0; q < JP; q += VL)
                V(acc + rk * JP + q) = V(gi + 4 * r * JP + q) * V(wi + 4 * k * JP + q) +
                                       V(gi + (4 * r + 1) * JP + q) * V(wi + (4 * k + 1) * JP + q) +
                                       V(gi + (4 * r + 2) * JP + q) * V(wi + (4 * k + 2) * JP + q) +
                                       V(gi + (4 * r + 3) * JP + q) * V(wi + (4 * k + 3) * JP + q);
        }
        fold4_rows(g_u + (size_t)i * POSE, acc, JP);
        if (!want_w) continue;
        REAL *gwi = w->gw + (size_t)i * POSE * JP;
        for (int kc = 0; kc < POSE; kc++) {
            const int k = kc / 4, c = kc % 4;
            for (int q = 0; q < JP; q += VL)
                V(gwi + kc * JP + q) += ui[k] * V(gi + c * JP + q) + ui[4 + k] * V(gi + (4 + c) * JP + q) +
                                        ui[8 + k] * V(gi + (8 + c) * JP + q) + ui[12 + k] * V(gi + (12 + c) * JP + q);
        }
    }
}

/* Backward of windows [p0, p1): child pose and activation gradients (per window), and this block's
 * partial weight gradient g_w [I, J, 4, 4] and beta gradients g_bu, g_ba [J] (overwritten). */
int NAME(em_backward)(long p0, long p1, int I, int J, int T, const REAL *pose, const REAL *act, const REAL *weight,
                      const REAL *offsets, const REAL *beta_u, const REAL *beta_a, const REAL *lambdas,
                      REAL min_var, REAL cost_div, int variant, const REAL *g_out_pose, const REAL *g_out_act,
                      REAL *g_pose, REAL *g_act, REAL *g_w, REAL *g_bu, REAL *g_ba, const REAL *state) {
    Work w;
    if (work_alloc(&w, I, J, T, variant, weight)) return -1;
    memset(g_bu, 0, sizeof(REAL) * J);
    memset(g_ba, 0, sizeof(REAL) * J);
    for (long p = p0; p < p1; p++) {
        const REAL *u = pose + (size_t)p * I * POSE, *a = act + (size_t)p * I;
        if (state) { /* the forward's state: only the votes are recomputed, with the forward's centre */
            load_state(&w, state + (size_t)p * state_floats(&w));
            centred_votes(&w, u, NULL, offsets);
        } else {
            window_forward(&w, u, a, offsets, beta_u, beta_a, lambdas, min_var, cost_div);
        }
        window_backward(&w, a, beta_u, lambdas, cost_div, g_out_pose + (size_t)p * J * POSE, g_out_act + (size_t)p * J,
                        g_act + (size_t)p * I, g_bu, g_ba);
        votes_backward(&w, u, g_pose + (size_t)p * I * POSE, g_w != NULL);
    }
    if (g_w)
        for (int i = 0; i < I; i++)
            for (int j = 0; j < J; j++)
                for (int kc = 0; kc < POSE; kc++)
                    g_w[((size_t)i * J + j) * POSE + kc] = w.gw[((size_t)i * POSE + kc) * w.JP + j];
    free(w.base);
    return 0;
}

/* out[k] = sum over blocks b (in block order) of parts[b, k]: a sum independent of the thread count. */
void NAME(sum_blocks)(long blocks, long n, const REAL *parts, REAL *out) {
    for (long k = 0; k < n; k++) out[k] = 0;
    for (long b = 0; b < blocks; b++)
        for (long k = 0; k < n; k++) out[k] += parts[(size_t)b * n + k];
}

/* y = vexp(x) for n values (tests check its error against libm). */
void NAME(exp_values)(long n, const REAL *x, REAL *y) {
    for (long k = 0; k < n; k += VL) {
        vec v = splat(0);
        for (int l = 0; l < VL && k + l < n; l++) v[l] = x[k + l];
        v = vexp(v);
        for (int l = 0; l < VL && k + l < n; l++) y[k + l] = v[l];
    }
}

/* Values per window that em_forward saves into `state` for em_backward (they depend on the vector width). */
long NAME(state_size)(int I, int J, int T) {
    const long JP = lanes(J);
    return (T - 1) * I * JP + 3 * T * POSE * JP + 3 * T * JP + POSE * JP;
}

#define EXPORTED(name) NAME(name)
#include "vector_width.h"
