"""The fast solver's interior-point iterations compiled with numba: the same method, start,
steps, stopping and best iterate as :func:`rebalancer.fastsolve._solve_group`, for every
household (low-rank: direct-indexed; dense: small fund households), one household after
another in one compiled call over the whole batch.

Why compiled: a direct-indexed household (about 2,300 free variables on 530 securities, a
risk matrix of rank 35 + 15) costs the numpy iteration about 150 array operations, each a
pass over the group's variables or a small batched product; in numpy those were bound by
calls and memory traffic, not arithmetic (about 1 ms per household per iteration against
about 0.1 ms of flops). Here each household's arrays stay in cache, the per-variable passes
are loops and the one heavy product (``[Z1 Z2]' T [W1 W3]``, (k+e)^2 n flops) is BLAS.

The Newton system is the one in fastsolve's docstring: K^-1 by push-through, (I + S P)^-1 by
Woodbury with the core ``I + Z' T W`` (r = k + 2e), built from the one product above and
gathers (Z3 = I_E and W2 = 2 lambda I_E are unit blocks on the hubs) and reduced exactly to
order k + e (``_factor``); P times the Woodbury solution is read off the core's solution
(``_P_solve_sec``), not a second product with Z and W. A dense household is the case Z = I
(W = P, no hubs): the core is I + T P. The core and the row Schur complement are solved by LU
factors with partial pivoting (``_lu``), not inverted: fund households, whose flat optimal
faces make the last iterations sensitive to rounding, end optimal more often that way.

A household whose core or row Schur complement is singular, or whose iterate goes
non-finite, stops with its best iterate, as in the numpy iterations.
"""
from __future__ import annotations

import numpy as np

try:  # the compiled kernel is used where numba is installed (a dependency of the package)
    from numba import njit
    from numba.typed import List
    AVAILABLE = True
except ImportError:  # pragma: no cover - the numpy iterations are used instead
    AVAILABLE = False

    def njit(*args, **kwargs):
        return (lambda f: f) if not args or not callable(args[0]) else args[0]

__all__ = ["AVAILABLE", "solve_households"]

_JIT = dict(cache=True, error_model="numpy", nogil=True)


@njit(**_JIT)
def _lu(a, piv):
    """LU factors of ``a`` with partial pivoting, in place (LAPACK's getrf, unblocked: the
    matrices are at most about 50 x 50, where LAPACK's calls cost more than the arithmetic).
    False where a pivot is 0 or not finite (a singular or non-finite matrix)."""
    n = a.shape[0]
    for c in range(n):
        p, best = c, abs(a[c, c])
        for i in range(c + 1, n):
            if abs(a[i, c]) > best:
                p, best = i, abs(a[i, c])
        if not (best > 0.0 and best < np.inf):
            return False
        piv[c] = p
        if p != c:
            for j in range(n):
                a[c, j], a[p, j] = a[p, j], a[c, j]
        f = 1.0 / a[c, c]
        for i in range(c + 1, n):
            a[i, c] *= f
            l = a[i, c]
            if l != 0.0:
                for j in range(c + 1, n):
                    a[i, j] -= l * a[c, j]
    return True


@njit(**_JIT)
def _lu_solve(lu, piv, b):
    """Solve lu x = b for b (n, c) in place (getrs)."""
    n, c = b.shape
    for i in range(n):
        p = piv[i]
        if p != i:
            for q in range(c):
                b[i, q], b[p, q] = b[p, q], b[i, q]
    for i in range(n):
        for j in range(i):
            l = lu[i, j]
            for q in range(c):
                b[i, q] -= l * b[j, q]
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, n):
            u = lu[i, j]
            for q in range(c):
                b[i, q] -= u * b[j, q]
        f = 1.0 / lu[i, i]
        for q in range(c):
            b[i, q] *= f


@njit(**_JIT)
def _keep(x, zl, zu, y, x_out, zl_out, zu_out, y_out):
    x_out[:] = x
    zl_out[:] = zl
    zu_out[:] = zu
    y_out[:] = y


@njit(**_JIT)
def _P(U, Dp, Wc, Zct, hub, w2, k):
    """P U for U (n, c): P = Dp + W Z' (W = [W1 w2 I_E W3], Z = [Z1 Z2 I_E]). Row operations
    are written as loops over the columns: a row expression would allocate an array per row."""
    e, c = len(hub), U.shape[1]
    z = np.dot(Zct, U) if Zct.shape[0] else U  # [Z1 Z2]' U (Z = I: a dense household)
    V = np.empty((k + e, c))
    V[:k] = z[:k]
    for i in range(e):
        for q in range(c):
            V[k + i, q] = U[hub[i], q]
    out = np.dot(Wc, V)
    for j in range(out.shape[0]):
        for q in range(c):
            out[j, q] += Dp[j] * U[j, q]
    for i in range(e):
        for q in range(c):
            out[hub[i], q] += w2[i] * z[k + i, q]
    return out


@njit(**_JIT)
def _P_solve_sec(R, Delta, t, Dp, core, piv, adp, Wc, Zct, hub, w2, k):
    """P zz with zz = (I + S P)^-1 R for R (n, c), by Woodbury (what every caller needs; zz
    itself none). ``core``: the LU factors (pivots ``piv``) of the core reduced to order k + e,
    ``adp`` its block Adp (see _factor). The core's solution v is [Z1 Z2 Z3]' zz exactly
    (core v = Z' Delta^-1 R), so P zz = Dp zz + W v, and W v is the product zz needs anyway:
    no second pass over Z and W."""
    n, c = R.shape
    e = len(hub)
    q = k + e
    Ud = np.empty((n, c))
    for j in range(n):
        f = 1.0 / Delta[j]
        for b in range(c):
            Ud[j, b] = R[j, b] * f
    v = np.empty((q + e, c))  # [vq; vp]: vq on [W1 W2]'s columns, vp on W3's
    if Zct.shape[0]:
        v[:q] = np.dot(Zct, Ud)  # [Z1 Z2]' Ud
    else:
        v[:q] = Ud  # Z = I (a dense household)
    for i in range(e):
        hi = hub[i]
        for b in range(c):
            bh = Ud[hi, b]  # Z3' Ud
            v[q + i, b] = bh
            for a in range(q):
                v[a, b] -= adp[a, i] * bh
    _lu_solve(core, piv, v[:q])
    for i in range(e):  # vp = bh - Ahq vq
        hi = hub[i]
        th = t[hi]
        for b in range(c):
            acc = w2[i] * v[k + i, b]
            for a in range(k):
                acc += Wc[hi, a] * v[a, b]
            v[q + i, b] -= th * acc
    V = np.empty((q, c))  # [vq on W1; vp]: the columns of Wc = [W1 W3]
    V[:k] = v[:k]
    V[k:] = v[q:]
    wv = np.dot(Wc, V)
    for i in range(e):
        for b in range(c):
            wv[hub[i], b] += w2[i] * v[k + i, b]  # W2 = w2 I_E
    P = np.empty((n, c))
    for j in range(n):
        for b in range(c):
            P[j, b] = Dp[j] * (Ud[j, b] - t[j] * wv[j, b]) + wv[j, b]
    return P


@njit(**_JIT)
def _A(sec, sign, v, n):
    u = np.zeros((n, 1))
    for j in range(len(v)):
        u[sec[j], 0] += sign[j] * v[j]
    return u


# Sums over a household's variables may be reassociated: a sum in one running total waits on
# every add before it (4 cycles each), where partial sums in vector lanes do not.
_SUM = dict(_JIT, fastmath={"reassoc"})


@njit(**_SUM)
def _G(row, sign, gb, brow, v, m):
    """G v: the cash rows (one per account), then the budget row where there is one. One masked
    sum per row (a household has at most a handful), each vectorized: a scatter into the rows
    chained every add through memory, and a running total per run of rows through a register."""
    out = np.zeros(m)
    na = m - 1 if brow >= 0 else m
    for i in range(na):
        acc = 0.0
        for j in range(len(v)):
            acc += sign[j] * v[j] if row[j] == i else 0.0
        out[i] = acc
    if brow >= 0:
        acc = 0.0
        for j in range(len(v)):
            acc += gb[j] * v[j]
        out[brow] = acc
    return out


@njit(**_SUM)
def _comp(tl, zl, tu, zu):
    """sum tl zl + tu zu: the bounds' complementarity."""
    acc = 0.0
    for j in range(len(tl)):
        acc += tl[j] * zl[j] + tu[j] * zu[j]
    return acc


@njit(**_SUM)
def _comp_after(tl, zl, tu, zu, al, dx, dzl, dzu):
    """The bounds' complementarity a step al along (dx, dzl, dzu)."""
    acc = 0.0
    for j in range(len(tl)):
        acc += (tl[j] + al * dx[j]) * (zl[j] + al * dzl[j]) + (tu[j] - al * dx[j]) * (zu[j] + al * dzu[j])
    return acc


@njit(**_JIT)
def _residuals(x, s, zl, zu, y, sec, row, sign, gb, brow, c, q2, d0, h, Dp, Wc, Zct, hub, w2, k, rd, rp):
    """rd (nv,) and rp (m,) in place, as fastsolve._residuals."""
    n, m = len(d0), len(h)
    u = _A(sec, sign, x, n)
    for j in range(n):
        u[j, 0] += d0[j]
    pu = _P(u, Dp, Wc, Zct, hub, w2, k)
    yb = y[brow] if brow >= 0 else 0.0
    for j in range(len(x)):
        rd[j] = c[j] + q2[j] * x[j] + sign[j] * pu[sec[j], 0] + sign[j] * y[row[j]] + gb[j] * yb - zl[j] + zu[j]
    g = _G(row, sign, gb, brow, x, m)
    for i in range(m):
        rp[i] = g[i] + s[i] - h[i]


@njit(**_JIT)
def _factor(Einv, s, y, sec, row, sign, gb, brow, Dp, Wc, Zct, hub, w2, k, core, piv, adp, spiv):
    """What the Newton solves of an iteration share: Delta, t = Delta^-1 S, the LU factors of
    the Woodbury core (in ``core``, pivots ``piv``; its block Adp in ``adp``), M = A E^-1 G',
    P (I + S P)^-1 M and the LU factors of the row Schur complement (returned, pivots
    ``spiv``). False where either matrix is singular.

    The core ``I + Z' T W`` in Z's row blocks [Z1 Z2 | Z3] and W's column blocks [W1 W2 | W3]
    is [[Adq, Adp], [Ahq, I]]: Z3 = I_E pairs with W3 = U2, 0 on the hubs' rows, so that
    block is exactly I, and Ahq = [t_E W1[E], diag(t_E w2)]. Eliminating it leaves
    ``Adq - Adp Ahq`` of order k + e (35 for a direct-indexed household against 50) with a
    unit pivot, as fastsolve._Ops._lowrank_core: a third of the LU's work."""
    nv, n, m, e = len(Einv), len(Dp), len(s), len(hub)
    q = k + e
    S = np.zeros(n)
    for j in range(nv):
        S[sec[j]] += Einv[j]
    Delta = np.empty(n)
    t = np.empty(n)
    for j in range(n):
        Delta[j] = 1.0 + S[j] * Dp[j]
        t[j] = S[j] / Delta[j]
    if Zct.shape[0]:
        ZT = np.empty(Zct.shape)
        for a in range(Zct.shape[0]):
            for j in range(n):
                ZT[a, j] = Zct[a, j] * t[j]
        prod = np.dot(ZT, Wc)  # [Z1 Z2]' T [W1 W3]
        for a in range(q):
            for b in range(k):
                core[a, b] = prod[a, b]  # [Z1 Z2]' T W1
            for i in range(e):
                core[a, k + i] = ZT[a, hub[i]] * w2[i]  # [Z1 Z2]' T W2
                adp[a, i] = prod[a, k + i]  # [Z1 Z2]' T W3
            core[a, a] += 1.0
        for i in range(e):  # core = Adq - Adp Ahq
            hi = hub[i]
            for a in range(q):
                f = adp[a, i] * t[hi]
                if f != 0.0:
                    for b in range(k):
                        core[a, b] -= f * Wc[hi, b]
                    core[a, k + i] -= f * w2[i]
    else:  # Z = I (a dense household, no hubs): I + T P
        for a in range(n):
            for j in range(n):
                core[a, j] = t[a] * Wc[a, j]
            core[a, a] += 1.0
    M = np.zeros((n, m))
    if not _lu(core, piv):
        return Delta, t, M, M, M, False
    GEG = np.zeros((m, m))
    for j in range(nv):
        M[sec[j], row[j]] += Einv[j]
        GEG[row[j], row[j]] += Einv[j]
        if brow >= 0:
            eg = Einv[j] * gb[j] * sign[j]
            M[sec[j], brow] += eg
            GEG[row[j], brow] += eg
            GEG[brow, row[j]] += eg
            GEG[brow, brow] += Einv[j] * gb[j] * gb[j]
    PMs = _P_solve_sec(M, Delta, t, Dp, core, piv, adp, Wc, Zct, hub, w2, k)
    schur = GEG - np.dot(M.T, PMs)
    for i in range(m):
        schur[i, i] += s[i] / y[i]
    return Delta, t, M, PMs, schur, _lu(schur, spiv)


@njit(**_JIT)
def _household(sec, row, sign, gb, brow, lb, ub, fin, c, q2, d0, Dp, Wc, Zct, hub, w2, k, h,
               warm, wx, wzl, wzu, wy, recentre, x0, mu0, refine, tol, params, x_out, zl_out, zu_out, y_out):
    """One household's iterations. Returns (merit, iterations, best iteration, dual residual
    at the best iterate, optimal); its best iterate is written to the *_out arrays."""
    max_iter, step_frac, reg, warm_shift, warm_mu, warm_row, dual_tol, gap_tol, stall_from, rc_shift, rc_floor = params
    nv, n, m, e = len(lb), len(d0), len(h), len(hub)
    r = k + 2 * e
    tol_d, tol_gap = dual_tol * tol, gap_tol * tol
    x, zl, zu = np.empty(nv), np.empty(nv), np.empty(nv)
    s, y = np.empty(m), np.empty(m)
    span = np.empty(nv)
    for j in range(nv):
        span[j] = ub[j] - lb[j] if fin[j] > 0 else np.inf
    # the start (fastsolve._solve_group and _warm)
    if warm:
        for j in range(nv):
            th = min(0.5 * span[j], warm_shift)
            hi = ub[j] - th if fin[j] > 0 else np.inf
            x[j] = min(max(wx[j], lb[j] + th), hi)
            zl[j] = max(wzl[j], warm_mu / (x[j] - lb[j]))
            zu[j] = fin[j] * max(wzu[j], warm_mu / (ub[j] - x[j] if fin[j] > 0 else 1.0))
        g = _G(row, sign, gb, brow, x, m)
        for i in range(m):
            s[i] = max(h[i] - g[i], warm_row)
            y[i] = max(wy[i], warm_mu / s[i])
    else:
        for j in range(nv):
            x[j] = lb[j] + min(0.5 * span[j], x0)
            zl[j] = mu0 / (x[j] - lb[j])
            zu[j] = fin[j] * mu0 / (ub[j] - x[j] if fin[j] > 0 else 1.0)
        g = _G(row, sign, gb, brow, x, m)
        for i in range(m):
            s[i] = max(h[i] - g[i], 1e-2)
            y[i] = mu0 / s[i]
    n_comp = nv + np.sum(fin) + m
    best_merit, best_it, best_rd = np.inf, 0, np.inf
    iters, optimal = 0, False
    _keep(x, zl, zu, y, x_out, zl_out, zu_out, y_out)
    tl, tu, rd, rp = np.empty(nv), np.empty(nv), np.empty(nv), np.empty(m)
    itl, itu, izl, izu1 = np.empty(nv), np.empty(nv), np.empty(nv), np.empty(nv)
    Einv, E_true = np.empty(nv), np.empty(nv)
    core, piv, spiv = np.empty((k + e, k + e)), np.empty(k + e, np.int64), np.empty(m, np.int64)
    adp = np.empty((k + e, e))
    dx, dy, dzl, dzu, ds = np.empty(nv), np.empty(m), np.empty(nv), np.empty(nv), np.empty(m)
    rl, ru, rs = np.empty(nv), np.empty(nv), np.empty(m)
    for it in range(max_iter + 1):
        for j in range(nv):
            tl[j] = x[j] - lb[j]
            tu[j] = fin[j] * (ub[j] - x[j]) + (1.0 - fin[j])
        for j in range(nv):  # the reciprocals every pass below needs, in one loop that vectorizes
            itl[j] = 1.0 / tl[j]
            itu[j] = 1.0 / tu[j]
        _residuals(x, s, zl, zu, y, sec, row, sign, gb, brow, c, q2, d0, h, Dp, Wc, Zct, hub, w2, k, rd, rp)
        comp = _comp(tl, zl, tu, zu)
        rd_max = 0.0
        for j in range(nv):
            a = abs(rd[j])
            if a > rd_max or a != a:
                rd_max = a
        rp_max = 0.0
        for i in range(m):
            comp += s[i] * y[i]
            a = abs(rp[i])
            if a > rp_max or a != a:
                rp_max = a
        mu = comp / n_comp
        merit = max(max(rd_max / tol_d, rp_max / tol), comp / tol_gap)
        if rd_max != rd_max or rp_max != rp_max or comp != comp:
            merit = np.nan  # as numpy's maximum gives it
        if merit < best_merit:
            _keep(x, zl, zu, y, x_out, zl_out, zu_out, y_out)
            best_merit, best_it, best_rd = merit, it, rd_max
        done = merit <= 1.0
        if (done or (merit > 1e3 * best_merit and it >= stall_from) or it == max_iter
                or not np.isfinite(merit)):
            iters, optimal = it, done
            break
        # the Newton system
        for j in range(nv):
            E_true[j] = q2[j] + zl[j] * itl[j] + zu[j] * itu[j]
            Einv[j] = 1.0 / (E_true[j] + reg)
        Delta, t, M, PMs, schur, ok = _factor(Einv, s, y, sec, row, sign, gb, brow, Dp, Wc, Zct, hub, w2, k, core,
                                              piv, adp, spiv)
        if not ok:
            iters = it
            break

        # the predictor (affine) direction, then Mehrotra's corrector
        for j in range(nv):
            rl[j] = -tl[j] * zl[j]
            ru[j] = -tu[j] * zu[j]
        for i in range(m):
            rs[i] = -s[i] * y[i]
        _direction(rl, ru, rs, rd, rp, itl, itu, zl, zu, s, y, E_true, Einv, sec, row, sign, gb, brow, Delta, t,
                   core, piv, adp, M, PMs, schur, spiv, Dp, Wc, Zct, hub, w2, k, 0, dx, dy, dzl, dzu, ds)
        if recentre and it == 0:
            _recentre(x, s, zl, zu, y, dx, dy, dzl, dzu, ds, lb, ub, fin, span, rc_shift, rc_floor,
                      rd_max, rp_max, tol_d, tol, sec, row, sign, gb, brow, c, q2, d0, h, Dp, Wc, Zct, hub, w2, k)
            continue
        for j in range(nv):
            izl[j] = 1.0 / zl[j]
            izu1[j] = 1.0 / (zu[j] + (1.0 - fin[j]))
        al = min(1.0, _step(dx, dy, dzl, dzu, ds, itl, itu, izl, izu1, fin, s, y))
        comp_aff = _comp_after(tl, zl, tu, zu, al, dx, dzl, dzu)
        for i in range(m):
            comp_aff += (s[i] + al * ds[i]) * (y[i] + al * dy[i])
        sigma = min(max((comp_aff / max(comp, 1e-300)) ** 3, 0.0), 1.0)
        smu = sigma * mu
        for j in range(nv):
            rl[j] = smu - tl[j] * zl[j] - dx[j] * dzl[j]
            ru[j] = fin[j] * (smu - tu[j] * zu[j] + dx[j] * dzu[j])
        for i in range(m):
            rs[i] = smu - s[i] * y[i] - ds[i] * dy[i]
        _direction(rl, ru, rs, rd, rp, itl, itu, zl, zu, s, y, E_true, Einv, sec, row, sign, gb, brow, Delta, t,
                   core, piv, adp, M, PMs, schur, spiv, Dp, Wc, Zct, hub, w2, k, refine, dx, dy, dzl, dzu, ds)
        al = min(1.0, step_frac * _step(dx, dy, dzl, dzu, ds, itl, itu, izl, izu1, fin, s, y))
        for j in range(nv):
            x[j] += al * dx[j]
            zl[j] += al * dzl[j]
            zu[j] += al * dzu[j]
        for i in range(m):
            s[i] += al * ds[i]
            y[i] += al * dy[i]
    return best_merit, iters, best_it, best_rd, optimal


@njit(**_JIT)
def _reduced(r1, r2, Einv, sec, row, sign, gb, brow, Delta, t, core, piv, adp, M, PMs, schur, spiv, Dp, Wc, Zct, hub,
             w2, k, dx, dy):
    """(dx, dy) of the Newton system [[K, G'], [G, -diag(s / y)]] (dx, dy) = (r1, r2), in place."""
    nv, n, m = len(r1), len(Delta), len(r2)
    er = np.empty(nv)
    for j in range(nv):
        er[j] = Einv[j] * r1[j]
    Pzz = _P_solve_sec(_A(sec, sign, er, n), Delta, t, Dp, core, piv, adp, Wc, Zct, hub, w2, k)
    gk = _G(row, sign, gb, brow, er, m) - np.dot(M.T, Pzz)[:, 0]
    rhs = np.empty((m, 1))
    for i in range(m):
        rhs[i, 0] = gk[i] - r2[i]
    _lu_solve(schur, spiv, rhs)
    dy[:] = rhs[:, 0]
    back = Pzz[:, 0] - np.dot(PMs, dy)
    yb = dy[brow] if brow >= 0 else 0.0
    for j in range(nv):
        gt = sign[j] * dy[row[j]] + gb[j] * yb
        dx[j] = Einv[j] * (r1[j] - gt) - Einv[j] * (sign[j] * back[sec[j]])


@njit(**_JIT)
def _direction(rl, ru, rs, rd, rp, itl, itu, zl, zu, s, y, E_true, Einv, sec, row, sign, gb, brow, Delta, t, core, piv,
               adp, M, PMs, schur, spiv, Dp, Wc, Zct, hub, w2, k, refine, dx, dy, dzl, dzu, ds):
    """The Newton direction for complementarity right-hand sides rl, ru, rs (in place), with
    ``refine`` rounds of iterative refinement against the unregularized system. ``itl``,
    ``itu``: the reciprocals of the distances to the bounds."""
    nv, n, m = len(rl), len(Delta), len(rs)
    r1 = np.empty(nv)
    for j in range(nv):
        r1[j] = -rd[j] + rl[j] * itl[j] - ru[j] * itu[j]
    r2 = np.empty(m)
    for i in range(m):
        r2[i] = -rp[i] - rs[i] / y[i]
    _reduced(r1, r2, Einv, sec, row, sign, gb, brow, Delta, t, core, piv, adp, M, PMs, schur, spiv, Dp, Wc, Zct, hub,
             w2, k, dx, dy)
    if refine > 0:
        e1, e2, cx, cy = np.empty(nv), np.empty(m), np.empty(nv), np.empty(m)
        for _ in range(refine):
            pa = _P(_A(sec, sign, dx, n), Dp, Wc, Zct, hub, w2, k)
            yb = dy[brow] if brow >= 0 else 0.0
            for j in range(nv):
                e1[j] = r1[j] - (E_true[j] * dx[j] + sign[j] * pa[sec[j], 0] + sign[j] * dy[row[j]] + gb[j] * yb)
            g = _G(row, sign, gb, brow, dx, m)
            for i in range(m):
                e2[i] = r2[i] - (g[i] - s[i] / y[i] * dy[i])
            _reduced(e1, e2, Einv, sec, row, sign, gb, brow, Delta, t, core, piv, adp, M, PMs, schur, spiv, Dp, Wc, Zct,
                     hub, w2, k, cx, cy)
            for j in range(nv):
                dx[j] += cx[j]
            for i in range(m):
                dy[i] += cy[i]
    for j in range(nv):
        dzl[j] = (rl[j] - zl[j] * dx[j]) * itl[j]
        dzu[j] = (ru[j] + zu[j] * dx[j]) * itu[j]
    for i in range(m):
        ds[i] = (rs[i] - s[i] * dy[i]) / y[i]


@njit(**_JIT)
def _step(dx, dy, dzl, dzu, ds, itl, itu, izl, izu1, fin, s, y):
    """The largest step keeping every slack and dual >= 0 (NaN rates skipped, as np.fmax), from
    the reciprocals of the slacks and duals (zu1: zu, 1 where there is no upper bound). A
    running maximum per kind of rate: one maximum over all four chained every compare."""
    t0, t1, t2, t3 = -np.inf, -np.inf, -np.inf, -np.inf
    for j in range(len(dx)):
        a = -dx[j] * itl[j]
        b = dx[j] * fin[j] * itu[j]
        c = -dzl[j] * izl[j]
        d = -dzu[j] * izu1[j]
        if a > t0:
            t0 = a
        if b > t1:
            t1 = b
        if c > t2:
            t2 = c
        if d > t3:
            t3 = d
    top = max(max(t0, t1), max(t2, t3))
    for i in range(len(s)):
        for v in (-ds[i] / s[i], -dy[i] / y[i]):
            if v > top:
                top = v
    return 1.0 / top if top > 0 else np.inf


@njit(**_JIT)
def _recentre(x, s, zl, zu, y, dx, dy, dzl, dzu, ds, lb, ub, fin, span, shift, floor, rd_max, rp_max, tol_d, tol,
              sec, row, sign, gb, brow, c, q2, d0, h, Dp, Wc, Zct, hub, w2, k):
    """Mehrotra's starting point (fastsolve._recentre), kept where it is no further from
    feasible than the current point (in place)."""
    nv, m = len(x), len(s)
    tl, tu = np.empty(nv), np.empty(nv)
    zla, zua = np.empty(nv), np.empty(nv)
    sa, ya = np.empty(m), np.empty(m)
    tz, sz, st = 0.0, 0.0, 0.0
    for j in range(nv):
        xa = x[j] + dx[j]
        tl[j] = max(xa - lb[j], 0.0)
        tu[j] = fin[j] * max(ub[j] - xa, 0.0)
        zla[j] = max(zl[j] + dzl[j], 0.0)
        zua[j] = fin[j] * max(zu[j] + dzu[j], 0.0)
        tz += tl[j] * zla[j] + tu[j] * zua[j]
        sz += zla[j] + zua[j]
        st += tl[j] + tu[j]
    for i in range(m):
        sa[i] = max(s[i] + ds[i], 0.0)
        ya[i] = max(y[i] + dy[i], 0.0)
        tz += sa[i] * ya[i]
        sz += ya[i]
        st += sa[i]
    dt = shift * tz / max(sz, 1e-300) + floor
    dz = shift * tz / max(st, 1e-300) + floor
    xn, zln, zun = np.empty(nv), np.empty(nv), np.empty(nv)
    sn, yn = np.empty(m), np.empty(m)
    for j in range(nv):
        th = min(0.5 * span[j], dt)
        hi = ub[j] - th if fin[j] > 0 else np.inf
        xn[j] = min(max(x[j] + dx[j], lb[j] + th), hi)
        zln[j] = zla[j] + dz
        zun[j] = fin[j] * (zua[j] + dz)
    for i in range(m):
        sn[i] = sa[i] + dt
        yn[i] = ya[i] + dz
    rd, rp = np.empty(nv), np.empty(m)
    _residuals(xn, sn, zln, zun, yn, sec, row, sign, gb, brow, c, q2, d0, h, Dp, Wc, Zct, hub, w2, k, rd, rp)
    a, b = 0.0, 0.0
    for j in range(nv):
        a = max(a, abs(rd[j]))
    for i in range(m):
        b = max(b, abs(rp[i]))
    if max(a / tol_d, b / tol) <= max(rd_max / tol_d, rp_max / tol):
        _keep(xn, zln, zun, yn, x, zl, zu, y)
        s[:] = sn


@njit(**_JIT)
def _batch(voff, sec, row, sign, gb, lb, ub, fin, c, q2, wx, wzl, wzu,
           soff, d0, Dp, Wl, Zl, eoff, hub, w2, roff, h, wy, brow, kk, warm, recentre, x0, mu0, refine,
           tol, params, x_out, zl_out, zu_out, y_out, merit, iters, best_it, rd, optimal):
    """Every household of the batch, one after another: each one's slices of the flat arrays
    (offsets: voff variables, soff securities, eoff hubs, roff rows) and its own [W1 W3] and
    [Z1 Z2]' (Wl, Zl: typed lists; copying them into flat arrays cost more than the lists)."""
    for b in range(len(kk)):
        v0, v1 = voff[b], voff[b + 1]
        s0, s1 = soff[b], soff[b + 1]
        n, k = s1 - s0, kk[b]
        e0, e1 = eoff[b], eoff[b + 1]
        r0, r1 = roff[b], roff[b + 1]
        wc, zct = Wl[b], Zl[b]  # zct (0, n) where Z = I
        out = _household(sec[v0:v1], row[v0:v1], sign[v0:v1], gb[v0:v1], brow[b], lb[v0:v1], ub[v0:v1], fin[v0:v1],
                         c[v0:v1], q2[v0:v1], d0[s0:s1], Dp[s0:s1], wc, zct, hub[e0:e1], w2[e0:e1], k, h[r0:r1],
                         warm[b], wx[v0:v1], wzl[v0:v1], wzu[v0:v1], wy[r0:r1], recentre[b], x0[b], mu0[b],
                         refine[b], tol, params,
                         x_out[v0:v1], zl_out[v0:v1], zu_out[v0:v1], y_out[r0:r1])
        merit[b], iters[b], best_it[b], rd[b], optimal[b] = out


def solve_households(items, tolerance: float, params: tuple):
    """Solve households one after another in one compiled call. ``items``: per household a
    dict of its arrays and settings (see fastsolve._kernel_item). Returns per household (x, zl,
    zu, y, merit, iterations, best iteration, dual residual at it, optimal)."""
    B = len(items)
    cat = lambda key: np.ascontiguousarray(np.concatenate([it[key] for it in items]))  # noqa: E731
    off = lambda key: np.concatenate([[0], np.cumsum([len(it[key]) for it in items])]).astype(np.int64)  # noqa: E731
    voff, soff, eoff, roff = off("lb"), off("d0"), off("hub"), off("h")
    # The households' [W1 W3] and [Z1 Z2]' as they are: concatenating them copied 29 MB (0.07 s)
    # for the 101 direct-indexed households of a 400-household batch.
    Wl, Zl = List(), List()
    for it in items:
        Wl.append(np.ascontiguousarray(it["Wc"], dtype=float))
        Zl.append(np.ascontiguousarray(it["Zct"], dtype=float))
    nv, nr = int(voff[-1]), int(roff[-1])
    x, zl, zu, y = np.zeros(nv), np.zeros(nv), np.zeros(nv), np.zeros(nr)
    merit, iters, best_it, rd = np.zeros(B), np.zeros(B, np.int64), np.zeros(B, np.int64), np.zeros(B)
    optimal = np.zeros(B, np.bool_)
    _batch(voff, cat("sec").astype(np.int64), cat("row").astype(np.int64), cat("sign"), cat("gb"), cat("lb"), cat("ub"),
           cat("fin"), cat("c"), cat("q2"), cat("wx"), cat("wzl"), cat("wzu"), soff, cat("d0"), cat("Dp"), Wl, Zl, eoff,
           cat("hub").astype(np.int64), cat("w2"), roff, cat("h"), cat("wy"),
           np.array([it["brow"] for it in items], np.int64), np.array([it["k"] for it in items], np.int64),
           np.array([it["warm"] for it in items], np.bool_), np.array([it["recentre"] for it in items], np.bool_),
           np.array([it["x0"] for it in items], float), np.array([it["mu0"] for it in items], float),
           np.array([it["refine"] for it in items], np.int64),
           float(tolerance), params, x, zl, zu, y, merit, iters, best_it, rd, optimal)
    out = []
    for b in range(B):
        v, rr = slice(voff[b], voff[b + 1]), slice(roff[b], roff[b + 1])
        out.append((x[v], zl[v], zu[v], y[rr], float(merit[b]), int(iters[b]), int(best_it[b]), float(rd[b]),
                    bool(optimal[b])))
    return out

