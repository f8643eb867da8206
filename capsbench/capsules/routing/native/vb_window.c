/* VB routing (4x4 matrix votes), one pass over the windows per iteration.
 *
 * Compiled at first use by capsbench/capsules/routing/native/build.py, once per dtype and
 * instruction set (-DREAL=float -DSUFFIX=f32 or -DREAL=double -DSUFFIX=f64, -DVBYTES=16, 32 or 64
 * with -mavx2 / -mavx512f), as em_window.c. The maths is vb.py's (see its module docstring);
 * cpu_vb.py is the autograd glue.
 *
 * Why one pass per iteration and not one per window: VB's default normalises the
 * coefficients over every parent that receives a child, and overlapping windows share
 * children, so iteration t+1 of a window needs the E-step of its neighbours. What crosses
 * windows is only the coefficients R [P, J, I] (1/16 of the votes): a pass reads R_t,
 * recomputes each window's votes from the child poses and weights into a private buffer
 * (I x 16 x JP values, L2-resident), runs the M-step and, except in the last pass, the
 * E-step, and writes the log-weights [P, J, I]; the caller normalises them (in PyTorch)
 * into R_{t+1}. The backward of a pass recomputes the same window and goes back through
 * the E-step and M-step; nothing votes-sized is ever stored.
 *
 * Vectors run across the parent types j, as em_window.c's: inside a window every array is
 * [..., JP] with JP the number of parent types rounded up to a multiple of 4 and of the vector
 * width (padding lanes start from zero weights, coefficients and gradients; nothing in them is
 * ever added to a real lane's result or written out), so a build uses its whole width. Until 2026-12
 * the vectors here were one 4-wide row of a pose, a quarter of an AVX-512 register in float32.
 * The weights are transposed once per call to [I, 16, JP], a window's coefficients (and
 * log-weight gradients) once per window to [I, JP]; sums over children that every child adds to
 * (S1, S2, the E-step's gradients) are kept in registers four pose entries at a time.
 *
 * Same bits as that row-vector version, and in every build: each lane runs, for its parent,
 * exactly the scalar sequence of operations the row-vector code ran for that parent (no FMA:
 * -ffp-contract=off; no -ffast-math). Within a vote row the sums run left to right,
 * ((u0 w0 + u1 w1) + u2 w2) + u3 w3; a sum over the 16 pose entries (the distance, the weight
 * gradient's moment term) keeps the row version's pairing, four partial sums over the rows r
 * (one per column c, entry 4r + c) and then (p0 + p1) + (p2 + p3); the weight gradient adds its
 * four terms to the running sum one by one, ((((g + U0 gv0) + U1 gv1) + ...), as the row version
 * did; every sum over children runs in child order from zero, lane by lane. The sums over parent
 * types (a child's pose and activation gradients) are formed lane by lane and then added in
 * parent order from zero, as the row version's loop over j did (sum_rows_in_order: 4 x 4 blocks
 * transposed, exact moves, so that four such sums advance as one vector); the per-parent scalars
 * (the M-step's closed forms, digamma and the log-determinant) are the row version's code, reading
 * lane j. So the SSE2, AVX2 and AVX-512 builds, which differ only in how many lanes one
 * instruction covers, give the same bits, and the same as before: benchmarks/vb_kernel_lanes.py
 * checks both claims bit for bit and times the two versions
 * (benchmarks/results/vb-kernel-lanes-cpu1thread.json).
 *
 * Layouts (arguments): pose [P, I, 16] (U[i, r, k] at 4r + k), act [P, I], weight [I, J, 4, 4]
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

/* VL lanes over parent types (GCC/Clang vector extension). Element-wise operations round exactly as
 * the scalar ones; a scalar operand is broadcast as it is (no arithmetic). Every array a vector is
 * read from lies at a multiple of JP (itself a multiple of VL) from a 64-byte aligned base. */
typedef REAL vec __attribute__((vector_size(VBYTES), may_alias));
#define VL ((int)(VBYTES / sizeof(REAL)))
#define V(p) (*(vec *)(p))
#define ALIGN 64
#define PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define UNROLL16 PRAGMA(unroll 16)
#else
#define UNROLL16 PRAGMA(GCC unroll 16)
#endif

/* Four values of one array (the sums in parent order, sum_rows_in_order, and the transposes to and from
 * lanes); loads and stores through memcpy, so no alignment is assumed. */
typedef REAL vec4 __attribute__((vector_size(4 * sizeof(REAL))));
#if defined(__clang__) || __GNUC__ >= 12
#define SHUFFLE4(a, b, i0, i1, i2, i3) __builtin_shufflevector(a, b, i0, i1, i2, i3)
#else /* GCC before 12: __builtin_shuffle, with lane indices as wide as REAL (em_window.c's IREAL) */
#define PCAT2(a, b) a##b
#define PCAT(a, b) PCAT2(a, b)
#define IS_float 1
#define IS_double 0
#if PCAT(IS_, REAL)
typedef int ivec4 __attribute__((vector_size(4 * sizeof(REAL))));
#else
typedef long long ivec4 __attribute__((vector_size(4 * sizeof(REAL))));
#endif
#define SHUFFLE4(a, b, i0, i1, i2, i3) __builtin_shuffle(a, b, (ivec4){i0, i1, i2, i3})
#endif
static inline vec4 load4(const REAL *p) {
    vec4 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store4(REAL *p, vec4 v) { memcpy(p, &v, sizeof v); }
/* A vec4 wider than one register (double in the 16-byte build): its shuffles cost more than scalar moves. */
#define NARROW (VBYTES < 4 * (int)sizeof(REAL))

/* dst[i, j] = src[j, i] (dst [I, JP], src [J, I]) and back, by 4 x 4 blocks (exact moves; one by one
 * where NARROW). */
static void to_lanes(REAL *restrict dst, const REAL *restrict src, int I, int J, int JP) {
    int j0 = 0;
    for (; !NARROW && j0 + 4 <= J; j0 += 4) {
        int i0 = 0;
        for (; i0 + 4 <= I; i0 += 4) {
            const vec4 p0 = load4(src + (size_t)j0 * I + i0), p1 = load4(src + (size_t)(j0 + 1) * I + i0);
            const vec4 p2 = load4(src + (size_t)(j0 + 2) * I + i0), p3 = load4(src + (size_t)(j0 + 3) * I + i0);
            const vec4 t0 = SHUFFLE4(p0, p1, 0, 4, 1, 5), t1 = SHUFFLE4(p2, p3, 0, 4, 1, 5);
            const vec4 t2 = SHUFFLE4(p0, p1, 2, 6, 3, 7), t3 = SHUFFLE4(p2, p3, 2, 6, 3, 7);
            store4(dst + (size_t)i0 * JP + j0, SHUFFLE4(t0, t1, 0, 1, 4, 5));
            store4(dst + (size_t)(i0 + 1) * JP + j0, SHUFFLE4(t0, t1, 2, 3, 6, 7));
            store4(dst + (size_t)(i0 + 2) * JP + j0, SHUFFLE4(t2, t3, 0, 1, 4, 5));
            store4(dst + (size_t)(i0 + 3) * JP + j0, SHUFFLE4(t2, t3, 2, 3, 6, 7));
        }
        for (; i0 < I; i0++)
            for (int j = j0; j < j0 + 4; j++) dst[(size_t)i0 * JP + j] = src[(size_t)j * I + i0];
    }
    for (int i = 0; i < I; i++)
        for (int j = j0; j < J; j++) dst[(size_t)i * JP + j] = src[(size_t)j * I + i];
}

static void from_lanes(REAL *restrict dst, const REAL *restrict src, int I, int J, int JP) {
    int j0 = 0;
    for (; !NARROW && j0 + 4 <= J; j0 += 4) {
        int i0 = 0;
        for (; i0 + 4 <= I; i0 += 4) {
            const vec4 p0 = load4(src + (size_t)i0 * JP + j0), p1 = load4(src + (size_t)(i0 + 1) * JP + j0);
            const vec4 p2 = load4(src + (size_t)(i0 + 2) * JP + j0), p3 = load4(src + (size_t)(i0 + 3) * JP + j0);
            const vec4 t0 = SHUFFLE4(p0, p1, 0, 4, 1, 5), t1 = SHUFFLE4(p2, p3, 0, 4, 1, 5);
            const vec4 t2 = SHUFFLE4(p0, p1, 2, 6, 3, 7), t3 = SHUFFLE4(p2, p3, 2, 6, 3, 7);
            store4(dst + (size_t)j0 * I + i0, SHUFFLE4(t0, t1, 0, 1, 4, 5));
            store4(dst + (size_t)(j0 + 1) * I + i0, SHUFFLE4(t0, t1, 2, 3, 6, 7));
            store4(dst + (size_t)(j0 + 2) * I + i0, SHUFFLE4(t2, t3, 0, 1, 4, 5));
            store4(dst + (size_t)(j0 + 3) * I + i0, SHUFFLE4(t2, t3, 2, 3, 6, 7));
        }
        for (; i0 < I; i0++)
            for (int j = j0; j < j0 + 4; j++) dst[(size_t)j * I + i0] = src[(size_t)i0 * JP + j];
    }
    for (int i = 0; i < I; i++)
        for (int j = j0; j < J; j++) dst[(size_t)j * I + i] = src[(size_t)i * JP + j];
}

/* Lanes per array over parent types: J rounded up to a multiple of 4 (sum_rows_in_order) and of the vector width. */
static int lanes(int J) {
    const int step = VL > 4 ? VL : 4;
    return (J + step - 1) / step * step;
}

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

/* One window's votes and the statistics of one M-step; per-parent gradients in the backward. Arrays
 * over parent types have JP lanes, lane j for parent j. */
typedef struct {
    int I, J, JP;
    REAL *wl;     /* the weights [I, 16 (4k + c), JP]: W[i, j, k, c] in lane j (once per call) */
    REAL *x;      /* the votes, then centred, [I, 16, JP] */
    REAL *gw;     /* the block's weight gradient [I, 16, JP] (backward, when wanted) */
    REAL *coef;   /* this window's coefficients [I, JP] */
    REAL *g;      /* [I, JP]: the window's log-weights (forward), its dL/d ln rho then dL/dR (backward) */
    REAL *centre; /* [16, JP]: activation-weighted mean vote (detached, as vb.py's prepare_votes) */
    REAL *s1, *s2, *xbar, *raw, *m0c, *mean, *prec; /* [16, JP] */
    REAL *g_mean, *g_prec, *g_s1, *g_s2;             /* [16, JP] */
    REAL *gu;                                        /* [16, JP]: one child's per-parent terms of dL/dU */
    REAL *mass, *kappa, *nu, *alpha, *bias;          /* [JP]; bias: the per-parent part of ln rho */
    REAL *g_mass, *g_bias, *g_nu;                    /* [JP] */
    REAL *terms;                                     /* [JP]: one child's per-parent terms of dL/da */
    REAL *base;
} Window;

#define PER_ENTRY 13 /* [16, JP] arrays */
#define PER_PARENT 9 /* [JP] arrays */

/* The buffers, and the weights in lanes (padding lanes zero). with_gw: room for the weight gradient. */
static int window_alloc(Window *w, int I, int J, const REAL *weight, int with_gw) {
    const int JP = lanes(J);
    const size_t ijd = (size_t)I * PD * JP, jd = (size_t)PD * JP;
    const size_t big = (2 + (with_gw ? 1 : 0)) * ijd;
    const size_t small = 2 * (size_t)I * JP + PER_ENTRY * jd + PER_PARENT * (size_t)JP;
    const size_t bytes = ((big + small) * sizeof(REAL) + ALIGN - 1) / ALIGN * ALIGN;
    REAL *p = (REAL *)aligned_alloc(ALIGN, bytes);
    if (!p) return -1;
    w->I = I, w->J = J, w->JP = JP, w->base = p;
    w->wl = p, p += ijd;
    w->x = p, p += ijd;
    w->gw = with_gw ? p : NULL, p += with_gw ? ijd : 0;
    memset(p, 0, small * sizeof(REAL)); /* padding lanes stay zero */
    w->coef = p, p += (size_t)I * JP;
    w->g = p, p += (size_t)I * JP;
    REAL **per_entry[PER_ENTRY] = {&w->centre, &w->s1, &w->s2, &w->xbar, &w->raw, &w->m0c, &w->mean, &w->prec,
                                   &w->g_mean, &w->g_prec, &w->g_s1, &w->g_s2, &w->gu};
    for (int k = 0; k < PER_ENTRY; k++) *per_entry[k] = p, p += jd;
    REAL **per_parent[PER_PARENT] = {&w->mass, &w->kappa, &w->nu, &w->alpha, &w->bias,
                                     &w->g_mass, &w->g_bias, &w->g_nu, &w->terms};
    for (int k = 0; k < PER_PARENT; k++) *per_parent[k] = p, p += JP;
    for (int i = 0; i < I; i++) {
        REAL *wi = w->wl + (size_t)i * PD * JP;
        for (int kc = 0; kc < PD; kc++) {
            for (int j = 0; j < J; j++) wi[kc * JP + j] = weight[((size_t)i * J + j) * PD + kc];
            for (int j = J; j < JP; j++) wi[kc * JP + j] = 0;
        }
    }
    return 0;
}

/* Child i's votes into xi [16, JP]: v[4r + c] = ((U[r, 0] W[0, c] + U[r, 1] W[1, c]) + U[r, 2] W[2, c])
 * + U[r, 3] W[3, c] (+ offset), in lane j with parent j's W (wi: child i's weights in lanes); window_centre
 * writes the same expression out for its own loop order. */
static inline void vote(REAL *restrict xi, const REAL *restrict ui, const REAL *restrict wi, const REAL *off, int JP) {
    UNROLL16 for (int rc = 0; rc < PD; rc++) {
        const int r = rc / 4, c = rc % 4;
        for (int q = 0; q < JP; q += VL) {
            vec v = ui[4 * r] * V(wi + c * JP + q) + ui[4 * r + 1] * V(wi + (4 + c) * JP + q) +
                    ui[4 * r + 2] * V(wi + (8 + c) * JP + q) + ui[4 * r + 3] * V(wi + (12 + c) * JP + q);
            if (off) v += off[rc];
            V(xi + rc * JP + q) = v;
        }
    }
}

/* The centre: the activation-weighted mean vote per parent. The window's votes are left in w->x
 * (uncentred). A child with activation 0 adds exactly 0. Each sum over children runs in child order from
 * zero; how the loops are nested (which keeps the sums in registers) depends on the build's registers. */
static void window_centre(Window *restrict w, const REAL *u, const REAL *a, const REAL *offsets) {
    const int I = w->I, JP = w->JP, JD = PD * JP;
    REAL total = 0;
    for (int i = 0; i < I; i++) total += a[i];
    if (VBYTES >= 32) { /* lane block by lane block, the 16 sums in registers (16 or 32 of them) */
        for (int q = 0; q < JP; q += VL) {
            vec centre[PD];
            for (int rc = 0; rc < PD; rc++) centre[rc] = (vec){0};
            for (int i = 0; i < I; i++) {
                const REAL *ui = u + (size_t)i * PD, *wi = w->wl + (size_t)i * JD;
                REAL *xi = w->x + (size_t)i * JD;
                UNROLL16 for (int rc = 0; rc < PD; rc++) { /* vote()'s expression */
                    const int r = rc / 4, c = rc % 4;
                    vec v = ui[4 * r] * V(wi + c * JP + q) + ui[4 * r + 1] * V(wi + (4 + c) * JP + q) +
                            ui[4 * r + 2] * V(wi + (8 + c) * JP + q) + ui[4 * r + 3] * V(wi + (12 + c) * JP + q);
                    if (offsets) v += offsets[(size_t)i * PD + rc];
                    V(xi + rc * JP + q) = v;
                    centre[rc] += a[i] * v;
                }
            }
            for (int rc = 0; rc < PD; rc++) V(w->centre + rc * JP + q) = centre[rc] / (total + EPS);
        }
        return;
    }
    for (int i = 0; i < I; i++) /* 16 registers: the votes first, then the sums four pose entries at a time */
        vote(w->x + (size_t)i * JD, u + (size_t)i * PD, w->wl + (size_t)i * JD,
             offsets ? offsets + (size_t)i * PD : NULL, JP);
    for (int q = 0; q < JP; q += VL)
        for (int d0 = 0; d0 < PD; d0 += 4) {
            vec centre[4] = {{0}, {0}, {0}, {0}};
            for (int i = 0; i < I; i++)
                for (int e = 0; e < 4; e++) centre[e] += a[i] * V(w->x + (size_t)i * JD + (d0 + e) * JP + q);
            for (int e = 0; e < 4; e++) V(w->centre + (d0 + e) * JP + q) = centre[e] / (total + EPS);
        }
}

/* The M-step from the weights R_ij a_i (w->coef, this window's), as vb.py's _update_parameters,
 * then the per-parent part of ln rho (vb.py's _log_rho). The votes are in w->x (uncentred) when
 * have_votes, else recomputed there; one sweep centres them in place and sums their moments. */
static void m_step(Window *restrict w, const REAL *u, const REAL *a, const REAL *offsets, int have_votes,
                   const REAL *prior, int wishart) {
    const int I = w->I, J = w->J, JP = w->JP, JD = PD * JP;
    const REAL alpha0 = prior[0], kappa0 = prior[1], nu0 = prior[2], psi0 = prior[3], m0 = prior[4];
    if (!have_votes)
        for (int i = 0; i < I; i++)
            vote(w->x + (size_t)i * JD, u + (size_t)i * PD, w->wl + (size_t)i * JD,
                 offsets ? offsets + (size_t)i * PD : NULL, JP);
    /* per lane: mass, S1 and S2 summed over children in child order, from zero; four pose entries at a
     * time, so their sums stay in registers */
    for (int q = 0; q < JP; q += VL) {
        vec mass = {0};
        for (int i = 0; i < I; i++) mass += V(w->coef + (size_t)i * JP + q) * a[i];
        V(w->mass + q) = mass;
        for (int d0 = 0; d0 < PD; d0 += 4) {
            vec centre[4], s1[4] = {{0}, {0}, {0}, {0}}, s2[4] = {{0}, {0}, {0}, {0}};
            for (int e = 0; e < 4; e++) centre[e] = V(w->centre + (d0 + e) * JP + q);
            for (int i = 0; i < I; i++) {
                const vec wt = V(w->coef + (size_t)i * JP + q) * a[i];
                REAL *xi = w->x + (size_t)i * JD + d0 * JP + q;
                for (int e = 0; e < 4; e++) {
                    const vec xr = V(xi + e * JP) - centre[e];
                    V(xi + e * JP) = xr;
                    s1[e] += wt * xr;
                    s2[e] += wt * (xr * xr);
                }
            }
            for (int e = 0; e < 4; e++) V(w->s1 + (d0 + e) * JP + q) = s1[e], V(w->s2 + (d0 + e) * JP + q) = s2[e];
        }
    }
    double alpha_sum = 0;
    for (int j = 0; j < J; j++) {
        const REAL mass = w->mass[j], den = mass + EPS, kappa = kappa0 + mass, shrink = kappa0 * mass / kappa;
        REAL log_prec = 0;
        for (int d = 0; d < PD; d++) {
            const int k = d * JP + j;
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

/* ln rho[j, i] = bias_j - nu_j / 2 sum_d prec_jd (x_ijd - mean_jd)^2, the sum as four partial sums over
 * the rows (one per column c of entry 4r + c), then (p0 + p1) + (p2 + p3). logits: [J, I], formed in lanes
 * in w->g (free in the forward). */
static void e_step(Window *restrict w, REAL *logits) {
    const int I = w->I, J = w->J, JP = w->JP;
    for (int i = 0; i < I; i++) {
        const REAL *xi = w->x + (size_t)i * PD * JP;
        for (int q = 0; q < JP; q += VL) {
            vec part[4] = {{0}, {0}, {0}, {0}};
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) {
                    const int d = 4 * r + c;
                    const vec diff = V(xi + d * JP + q) - V(w->mean + d * JP + q);
                    part[c] += V(w->prec + d * JP + q) * (diff * diff);
                }
            const vec dist = (part[0] + part[1]) + (part[2] + part[3]);
            V(w->g + (size_t)i * JP + q) = V(w->bias + q) - (REAL)0.5 * (V(w->nu + q) * dist);
        }
    }
    from_lanes(logits, w->g, I, J, JP);
}

/* One window's centre (computed when centre_in is NULL, then written to centre_out), its coefficients
 * in lanes, and the M-step. */
static void window_forward(Window *w, long p, int wishart, const REAL *pose, const REAL *act, const REAL *offsets,
                           const REAL *coef, const REAL *prior, const REAL *centre_in, REAL *centre_out) {
    const int I = w->I, J = w->J, JP = w->JP;
    const size_t JD = (size_t)J * PD, JI = (size_t)J * I;
    const REAL *u = pose + (size_t)p * I * PD, *a = act + (size_t)p * I, *cf = coef + p * JI;
    if (centre_in) {
        for (int j = 0; j < J; j++)
            for (int d = 0; d < PD; d++) w->centre[d * JP + j] = centre_in[p * JD + (size_t)j * PD + d];
    } else {
        window_centre(w, u, a, offsets);
        if (centre_out)
            for (int j = 0; j < J; j++)
                for (int d = 0; d < PD; d++) centre_out[p * JD + (size_t)j * PD + d] = w->centre[d * JP + j];
    }
    to_lanes(w->coef, cf, I, J, JP);
    m_step(w, u, a, offsets, !centre_in, prior, wishart);
}

int EXPORT(vb_pass)(long p0, long p1, int I, int J, int wishart, const REAL *pose, const REAL *act,
                    const REAL *weight, const REAL *offsets, const REAL *coef, const REAL *prior,
                    const REAL *centre_in, REAL *centre_out, REAL *logits, REAL *mass, REAL *mean, REAL *prec) {
    Window w;
    if (window_alloc(&w, I, J, weight, 0)) return -1;
    const int JP = w.JP;
    const size_t JD = (size_t)J * PD, JI = (size_t)J * I;
    for (long p = p0; p < p1; p++) {
        window_forward(&w, p, wishart, pose, act, offsets, coef, prior, centre_in, centre_out);
        if (logits) e_step(&w, logits + p * JI);
        if (mass)
            for (int j = 0; j < J; j++) {
                mass[p * J + j] = w.mass[j];
                for (int d = 0; d < PD; d++) {
                    mean[p * JD + (size_t)j * PD + d] = w.mean[d * JP + j];
                    prec[p * JD + (size_t)j * PD + d] = w.prec[d * JP + j];
                }
            }
    }
    free(w.base);
    return 0;
}

/* Back through the E-step, given g = dL/d ln rho (w->g, [I, JP]): the per-parent sums it needs (w->g_bias,
 * w->g_nu) and the gradients of the M-step's outputs: w->g_mean, w->g_prec and w->g_mass (through
 * alpha, nu, kappa). The votes' share is computed again in gradient_sweep. */
static void e_step_backward(Window *restrict w, int wishart) {
    const int I = w->I, J = w->J, JP = w->JP, JD = PD * JP;
    /* per lane, in child order from zero: g_bias, g_nu (the distance as in e_step), then g_prec and g_mean
     * four pose entries at a time, so that their sums stay in registers (diff recomputed, the same bits) */
    for (int q = 0; q < JP; q += VL) {
        vec g_bias = {0}, g_nu = {0};
        for (int i = 0; i < I; i++) {
            const REAL *xi = w->x + (size_t)i * JD;
            const vec gij = V(w->g + (size_t)i * JP + q);
            vec part[4] = {{0}, {0}, {0}, {0}};
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) {
                    const int k = (4 * r + c) * JP + q;
                    const vec diff = V(xi + k) - V(w->mean + k);
                    part[c] += V(w->prec + k) * (diff * diff);
                }
            g_bias += gij;
            g_nu += (REAL)-0.5 * ((part[0] + part[1]) + (part[2] + part[3])) * gij;
        }
        V(w->g_bias + q) = g_bias, V(w->g_nu + q) = g_nu;
        const vec nu = V(w->nu + q);
        for (int d0 = 0; d0 < PD; d0 += 4) {
            vec mean[4], prec[4], g_prec[4] = {{0}, {0}, {0}, {0}}, g_mean[4] = {{0}, {0}, {0}, {0}};
            for (int e = 0; e < 4; e++)
                mean[e] = V(w->mean + (d0 + e) * JP + q), prec[e] = V(w->prec + (d0 + e) * JP + q);
            for (int i = 0; i < I; i++) {
                const REAL *xi = w->x + (size_t)i * JD + d0 * JP + q;
                const vec g_q = (REAL)-0.5 * nu * V(w->g + (size_t)i * JP + q), gq2 = 2 * g_q;
                for (int e = 0; e < 4; e++) {
                    const vec diff = V(xi + e * JP) - mean[e];
                    g_prec[e] += g_q * (diff * diff);
                    g_mean[e] -= gq2 * prec[e] * diff;
                }
            }
            for (int e = 0; e < 4; e++)
                V(w->g_prec + (d0 + e) * JP + q) = g_prec[e], V(w->g_mean + (d0 + e) * JP + q) = g_mean[e];
        }
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
        for (int d = 0; d < PD; d++) w->g_prec[d * JP + j] += (REAL)0.5 * gb / w->prec[d * JP + j];
        w->g_mass[j] = g_alpha + g_nu + g_kappa; /* alpha, nu and kappa are each a prior plus the mass */
    }
}

/* Back through the M-step's per-parent part, from w->g_mean, w->g_prec, w->g_mass: the gradients of
 * the sums over children, w->g_s1, w->g_s2 and (total) w->g_mass. */
static void m_step_backward(Window *restrict w, const REAL *prior) {
    const REAL kappa0 = prior[1];
    const int JP = w->JP;
    for (int j = 0; j < w->J; j++) {
        const REAL mass = w->mass[j], den = mass + EPS, kappa = w->kappa[j], shrink = kappa0 * mass / kappa;
        REAL g_kappa = 0, g_shrink = 0, g_mass = w->g_mass[j];
        for (int d = 0; d < PD; d++) {
            const int k = d * JP + j;
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

/* out[m] = ((0 + t[m, 0]) + t[m, 1]) + ... + t[m, J - 1] for the 16 rows m of t [16, JP]: each row's sum in
 * parent order from zero, as a scalar loop over j would add it. Blocks of 4 rows x 4 parents are transposed
 * (exact moves) so that four rows' sums advance as one vector, the four groups of rows as four chains. */
static inline void sum_rows_in_order(REAL *out, const REAL *t, int J, int JP) {
    if (NARROW) { /* the same sums, sixteen scalar chains */
        REAL s[PD] = {0};
        for (int j = 0; j < J; j++)
            for (int m = 0; m < PD; m++) s[m] += t[m * JP + j];
        memcpy(out, s, sizeof s);
        return;
    }
    vec4 s[4] = {{0}, {0}, {0}, {0}};
    for (int j = 0; j < J; j += 4) /* JP is a multiple of 4: the last block reads padding lanes, not added */
        for (int m = 0; m < 4; m++) {
            const vec4 p0 = load4(t + 4 * m * JP + j), p1 = load4(t + (4 * m + 1) * JP + j);
            const vec4 p2 = load4(t + (4 * m + 2) * JP + j), p3 = load4(t + (4 * m + 3) * JP + j);
            const vec4 t0 = SHUFFLE4(p0, p1, 0, 4, 1, 5), t1 = SHUFFLE4(p2, p3, 0, 4, 1, 5); /* columns 0, 1 */
            const vec4 t2 = SHUFFLE4(p0, p1, 2, 6, 3, 7), t3 = SHUFFLE4(p2, p3, 2, 6, 3, 7); /* columns 2, 3 */
            s[m] += SHUFFLE4(t0, t1, 0, 1, 4, 5);
            if (j + 1 < J) s[m] += SHUFFLE4(t0, t1, 2, 3, 6, 7);
            if (j + 2 < J) s[m] += SHUFFLE4(t2, t3, 0, 1, 4, 5);
            if (j + 3 < J) s[m] += SHUFFLE4(t2, t3, 2, 3, 6, 7);
        }
    for (int m = 0; m < 4; m++) memcpy(out + 4 * m, &s[m], sizeof s[m]);
}

/* One sweep over the children: each vote's gradient (through the E-step when have_g, through the sums
 * over children always), formed in lanes (gv, in registers) and sent on to the child pose (g_u [I, 16])
 * and the weights (added into w->gw when wanted); dL/dR [J, I] (g_coef) and dL/da [I] (g_a). The sums
 * over parent types (g_u, g_a) are formed per lane, then added in parent order. */
static void gradient_sweep(Window *restrict w, const REAL *u, const REAL *a, int have_g, REAL *g_u, REAL *g_a,
                           REAL *g_coef) {
    const int I = w->I, J = w->J, JP = w->JP, JD = PD * JP;
    REAL *restrict gu = w->gu;
    for (int i = 0; i < I; i++) {
        const REAL *ui = u + (size_t)i * PD, *xi = w->x + (size_t)i * JD, *wi = w->wl + (size_t)i * JD;
        REAL *gwi = w->gw ? w->gw + (size_t)i * JD : NULL;
        for (int q = 0; q < JP; q += VL) {
            const vec rij = V(w->coef + (size_t)i * JP + q), wt = rij * a[i];
            vec g_q2 = {0}; /* 2 dL/dq; +0 without an E-step, as the row version's */
            if (have_g) g_q2 = -V(w->nu + q) * V(w->g + (size_t)i * JP + q);
            vec part[4] = {{0}, {0}, {0}, {0}}, gv[PD]; /* gv: the vote's gradient, entry 4r + c */
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) {
                    const int k = (4 * r + c) * JP + q;
                    const vec xr = V(xi + k), a1 = V(w->g_s1 + k), a2 = V(w->g_s2 + k);
                    part[c] += (a1 + a2 * xr) * xr;
                    gv[4 * r + c] = g_q2 * V(w->prec + k) * (xr - V(w->mean + k)) + wt * (a1 + 2 * a2 * xr);
                }
            const vec g_w = V(w->g_mass + q) + ((part[0] + part[1]) + (part[2] + part[3]));
            V(w->g + (size_t)i * JP + q) = g_w * a[i]; /* dL/dR, over this child's dL/d ln rho (read above) */
            V(w->terms + q) = g_w * rij;
            /* parent j's term of dU[r, k]: ((gv[r, 0] W[k, 0] + gv[r, 1] W[k, 1]) + gv[r, 2] W[k, 2])
             * + gv[r, 3] W[k, 3] */
            UNROLL16 for (int rk = 0; rk < PD; rk++) {
                const int r = rk / 4, k = rk % 4;
                V(gu + rk * JP + q) = gv[4 * r] * V(wi + 4 * k * JP + q) +
                                      gv[4 * r + 1] * V(wi + (4 * k + 1) * JP + q) +
                                      gv[4 * r + 2] * V(wi + (4 * k + 2) * JP + q) +
                                      gv[4 * r + 3] * V(wi + (4 * k + 3) * JP + q);
            }
            if (!gwi) continue;
            /* dW[k, c] += U[0, k] gv[0, c] + ..., the four terms added one by one: the row version's order */
            UNROLL16 for (int kc = 0; kc < PD; kc++) {
                const int k = kc / 4, c = kc % 4;
                V(gwi + kc * JP + q) = V(gwi + kc * JP + q) + ui[k] * gv[c] + ui[4 + k] * gv[4 + c] +
                                       ui[8 + k] * gv[8 + c] + ui[12 + k] * gv[12 + c];
            }
        }
        REAL acc = 0;
        for (int j = 0; j < J; j++) acc += w->terms[j]; /* in parent order from zero */
        g_a[i] = acc;
        sum_rows_in_order(g_u + (size_t)i * PD, gu, J, JP); /* dU: the parents' terms in parent order */
    }
    from_lanes(g_coef, w->g, I, J, JP);
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
    if (window_alloc(&w, I, J, weight, g_weight != NULL)) return -1;
    const int JP = w.JP;
    const size_t JD = (size_t)J * PD, JI = (size_t)J * I;
    if (w.gw) memset(w.gw, 0, sizeof(REAL) * I * PD * JP);
    for (long p = p0; p < p1; p++) {
        window_forward(&w, p, wishart, pose, act, offsets, coef, prior, centre, NULL);
        const REAL *g = g_logits ? g_logits + p * JI : NULL;
        if (g) {
            to_lanes(w.g, g, I, J, JP);
            e_step_backward(&w, wishart);
        } else {
            for (int j = 0; j < J; j++) {
                w.g_mass[j] = g_mass[p * J + j];
                for (int d = 0; d < PD; d++) {
                    w.g_mean[d * JP + j] = g_mean[p * JD + (size_t)j * PD + d];
                    w.g_prec[d * JP + j] = g_prec[p * JD + (size_t)j * PD + d];
                }
            }
        }
        m_step_backward(&w, prior);
        gradient_sweep(&w, pose + (size_t)p * I * PD, act + (size_t)p * I, g != NULL, g_pose + (size_t)p * I * PD,
                       g_act + (size_t)p * I, g_coef + p * JI);
    }
    if (g_weight)
        for (int i = 0; i < I; i++)
            for (int j = 0; j < J; j++)
                for (int kc = 0; kc < PD; kc++)
                    g_weight[((size_t)i * J + j) * PD + kc] = w.gw[((size_t)i * PD + kc) * JP + j];
    free(w.base);
    return 0;
}

#define EXPORTED(name) EXPORT(name)
#include "vector_width.h"
