"""The fast household solver: a primal-dual interior-point method in numpy, batched over
households, on the structure of the household problem (DESIGN section 4).

For a batch of problems the variables of all households are one flat vector; every
per-variable operation is one numpy operation over the batch, and every per-household one
(a small dense system) is one batched ``np.linalg.solve``. There is no Python loop over
households in the iterations.

The Newton matrix on a household's free variables is ``K = E + A' P A``: E diagonal (barrier
terms and the impact term), A the incidence of variables on securities (one +-1 per column),
P = 2 lambda (X F X' + L D L') the risk matrix on the household's n securities. With
``S = A E^-1 A'`` (diagonal: each variable moves one security),

    K^-1 = E^-1 - E^-1 A' P (I + S P)^-1 A E^-1                         (push-through)

so each Newton step needs one n x n system. P is split once per problem into a diagonal
plus a low-rank part, ``P = Dp + W Z'`` (W, Z: n x r): the factor model gives rank k, and
the look-through of an ETF to its constituents couples it with the stocks it holds (rank 2
per such ETF). Then ``I + S P = Delta + (S W) Z'`` with Delta diagonal and Woodbury leaves an
r x r system: O(n r^2) per iteration instead of O(n^3). Where the low-rank part would not be
smaller than n (small fund households), W = P and Z = I: the dense n x n system.

The coupling rows (cash per account, the tax budget) are few: their Schur complement
``G K^-1 G' + diag(s / y)`` is an m x m system per household. Mehrotra's predictor-corrector
with a step length per household; a household stops when its residuals and its gap are below
the tolerance.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .problem import HouseholdProblem
from .solution import SolveResult, SolveStatus

__all__ = ["SOLVER_NAME", "solve_fast", "solve_batch", "risk_structure"]

SOLVER_NAME = "fast"
MAX_ITER = 80
_STEP = 0.99  # fraction to the boundary
_REG = 1e-8
_REFINE = 2


def risk_structure(p: HouseholdProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Dp, W, Z) with the risk matrix ``P = 2 lambda (X F X' + L D L') = diag(Dp) + W Z'``."""
    lam2 = 2.0 * p.risk_aversion
    n = len(p.securities)
    XC = p.exposures @ p.factor_chol  # (n, k): X F X' = XC XC'
    L = sp.csr_matrix(p.lookthrough)
    S = (L @ sp.diags(p.specific_var) @ L.T).tocsr()  # (n, n) L D L'
    dg = S.diagonal().copy()
    R = (S - sp.diags(dg)).tocoo()
    off = R.row != R.col
    rows, cols, vals = R.row[off], R.col[off], R.data[off]
    keep = vals != 0.0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    # A vertex cover of the off-diagonal coupling: securities that look through to several
    # assets (ETFs) first, then one end of any pair left.
    hub = np.zeros(n, bool)
    hub[np.asarray((L != 0).sum(axis=1)).ravel() > 1] = True
    left = ~hub[rows] & ~hub[cols]
    for i, j in zip(rows[left], cols[left]):
        if not (hub[i] or hub[j]):
            hub[i] = True
    E = np.flatnonzero(hub)
    k = XC.shape[1]
    if k + 2 * len(E) >= n:
        P = lam2 * (XC @ XC.T + S.toarray())
        return np.zeros(n), P, np.eye(n)
    Rd = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    I_E = np.zeros((n, len(E)))
    I_E[E, np.arange(len(E))] = 1.0
    V1 = Rd[E, :].toarray().T  # rows in E: R = I_E R[E, :] + (rows outside E) I_E'
    U2 = Rd[:, E].toarray()
    U2[E, :] = 0.0
    W = lam2 * np.hstack([XC, I_E, U2])
    Z = np.hstack([XC, V1, I_E])
    return lam2 * dg, W, Z


@dataclass
class _Batch:
    """Flat arrays of a batch of problems' free variables, and per-household padded blocks."""
    B: int
    hh: np.ndarray      # (Nt,) household of each variable
    sec: np.ndarray     # (Nt,) security slot within the household's padded block
    sign: np.ndarray    # (Nt,) +1 buy, -1 sell
    row: np.ndarray     # (Nt,) cash row (account) within the household
    gain: np.ndarray    # (Nt,) budget coefficient
    lb: np.ndarray
    ub: np.ndarray      # inf where none
    c: np.ndarray       # linear cost
    q2: np.ndarray      # 2 * impact
    d0: np.ndarray      # (B, n) active weights at x = 0 (fixed variables folded in)
    Dp: np.ndarray      # (B, n)
    W: np.ndarray       # (B, n, r)
    Z: np.ndarray       # (B, n, r)
    h: np.ndarray       # (B, m) row right-hand sides
    rvalid: np.ndarray  # (B, m) the row exists
    budget_row: np.ndarray  # (B,) index of the budget row, -1 if none


def _prepare(problems: list[HouseholdProblem]):
    free_idx, parts = [], []
    n_max = max(len(p.securities) for p in problems)
    structs = [risk_structure(p) for p in problems]
    r_max = max(s[1].shape[1] for s in structs)
    m_max = max(p.n_accounts + (1 if math.isfinite(p.budget) else 0) for p in problems)
    B = len(problems)
    d0 = np.zeros((B, n_max))
    Dp = np.zeros((B, n_max))
    W = np.zeros((B, n_max, r_max))
    Z = np.zeros((B, n_max, r_max))
    h = np.ones((B, m_max))
    rvalid = np.zeros((B, m_max), bool)
    budget_row = np.full(B, -1)
    for b, (p, (dp, w, z)) in enumerate(zip(problems, structs)):
        n = len(p.securities)
        free = p.ub > p.lb + 1e-15
        fixed_x = np.where(free, 0.0, p.lb)
        fi = np.flatnonzero(free)
        free_idx.append(fi)
        sign = p.sign
        d0[b, :n] = p.w0 - p.target + np.bincount(p.security, weights=sign * fixed_x, minlength=n)
        Dp[b, :n] = dp
        W[b, :n, :w.shape[1]] = w
        Z[b, :n, :z.shape[1]] = z
        A = p.n_accounts
        h[b, :A] = p.cash_rhs - np.bincount(p.account, weights=sign * fixed_x, minlength=A)
        rvalid[b, :A] = True
        if math.isfinite(p.budget):
            h[b, A] = p.budget - float(p.gain @ fixed_x)
            rvalid[b, A] = True
            budget_row[b] = A
        parts.append((np.full(len(fi), b), p.security[fi], sign[fi], p.account[fi], p.gain[fi], p.lb[fi], p.ub[fi],
                      p.cost[fi], 2.0 * p.impact[fi]))
    cols = [np.concatenate(c) for c in zip(*parts)]
    batch = _Batch(B, cols[0].astype(np.int64), cols[1].astype(np.int64), cols[2].astype(float),
                   cols[3].astype(np.int64), cols[4].astype(float), cols[5].astype(float), cols[6].astype(float),
                   cols[7].astype(float), cols[8].astype(float), d0, Dp, W, Z, h, rvalid, budget_row)
    return batch, free_idx


class _Ops:
    """The linear algebra of one batch (see the module docstring)."""

    def __init__(self, bt: _Batch):
        self.bt = bt
        B, n = bt.d0.shape
        self.n, self.m = n, bt.h.shape[1]
        self.flat_sec = bt.hh * n + bt.sec  # into (B * n)
        self.flat_row = bt.hh * self.m + bt.row  # into (B * m)
        has_b = bt.budget_row[bt.hh] >= 0
        self.flat_brow = np.where(has_b, bt.hh * self.m + np.maximum(bt.budget_row[bt.hh], 0), -1)
        self.has_b = has_b
        self.Nt = len(bt.hh)

    # security space <-> variables
    def A(self, v: np.ndarray) -> np.ndarray:
        """(Nt, ...) -> (B, n, ...): sum of sign * v per security."""
        B, n = self.bt.d0.shape
        extra = v.shape[1:]
        out = np.zeros((B * n,) + extra)
        np.add.at(out, self.flat_sec, self.bt.sign.reshape((-1,) + (1,) * len(extra)) * v)
        return out.reshape((B, n) + extra)

    def At(self, u: np.ndarray) -> np.ndarray:
        """(B, n, ...) -> (Nt, ...)."""
        B, n = self.bt.d0.shape
        flat = u.reshape((B * n,) + u.shape[2:])
        return self.bt.sign.reshape((-1,) + (1,) * (u.ndim - 2)) * flat[self.flat_sec]

    def P(self, u: np.ndarray) -> np.ndarray:
        """Risk matrix times (B, n) or (B, n, R)."""
        bt = self.bt
        if u.ndim == 2:
            return bt.Dp * u + np.einsum("bnr,br->bn", bt.W, np.einsum("bnr,bn->br", bt.Z, u))
        return bt.Dp[:, :, None] * u + np.einsum("bnr,brk->bnk", bt.W, np.einsum("bnr,bnk->brk", bt.Z, u))

    # rows
    def G(self, v: np.ndarray) -> np.ndarray:
        """(Nt, ...) -> (B, m, ...)."""
        B, m = self.bt.h.shape
        extra = v.shape[1:]
        out = np.zeros((B * m,) + extra)
        bshape = (-1,) + (1,) * len(extra)
        np.add.at(out, self.flat_row, self.bt.sign.reshape(bshape) * v)
        if self.has_b.any():
            np.add.at(out, self.flat_brow[self.has_b], (self.bt.gain.reshape(bshape) * v)[self.has_b])
        return out.reshape((B, m) + extra)

    def Gt(self, y: np.ndarray) -> np.ndarray:
        """(B, m) -> (Nt,)."""
        flat = y.reshape(-1)
        out = self.bt.sign * flat[self.flat_row]
        out[self.has_b] += self.bt.gain[self.has_b] * flat[self.flat_brow[self.has_b]]
        return out

    def Gt_cols(self) -> np.ndarray:
        """G' as (Nt, m): the columns of every row, for the Schur complement."""
        out = np.zeros((self.Nt, self.m))
        out[np.arange(self.Nt), self.bt.row] = self.bt.sign
        hb = np.flatnonzero(self.has_b)
        out[hb, self.bt.budget_row[self.bt.hh[hb]]] += self.bt.gain[hb]
        return out

    def factor(self, E: np.ndarray):
        """Prepare K^-1 for the barrier diagonal E (Nt,)."""
        bt = self.bt
        B, n = bt.d0.shape
        Einv = 1.0 / E
        S = np.zeros(B * n)
        np.add.at(S, self.flat_sec, Einv)
        S = S.reshape(B, n)
        Delta = 1.0 + S * bt.Dp
        SW = (S / Delta)[:, :, None] * bt.W  # Delta^-1 S W
        r = bt.W.shape[2]
        core = np.eye(r)[None] + np.einsum("bnr,bns->brs", bt.Z, SW)
        return Einv, S, Delta, SW, core

    def Kinv(self, fac, v: np.ndarray) -> np.ndarray:
        """K^-1 v for v (Nt,) or (Nt, R)."""
        Einv, S, Delta, SW, core = fac
        ev = Einv.reshape((-1,) + (1,) * (v.ndim - 1)) * v
        rhs = self.A(ev)  # (B, n, ...)
        if rhs.ndim == 2:
            t = rhs / Delta
            zz = t - np.einsum("bnr,br->bn", SW, np.linalg.solve(core, np.einsum("bnr,bn->br", self.bt.Z, t)[..., None])[..., 0])
        else:
            t = rhs / Delta[:, :, None]
            zz = t - np.einsum("bnr,brk->bnk", SW, np.linalg.solve(core, np.einsum("bnr,bnk->brk", self.bt.Z, t)))
        return ev - Einv.reshape(ev.shape[:1] + (1,) * (v.ndim - 1)) * self.At(self.P(zz))


def _seg_min(values: np.ndarray, groups: np.ndarray, B: int) -> np.ndarray:
    out = np.full(B, np.inf)
    np.minimum.at(out, groups, values)
    return out


def solve_batch(problems: list[HouseholdProblem], tolerance: float = 1e-8) -> list[SolveResult]:
    """Solve every problem of the batch together; one :class:`SolveResult` per problem."""
    if not problems:
        return []
    t0 = time.perf_counter()
    bt, free_idx = _prepare(problems)
    ops = _Ops(bt)
    B, m = bt.h.shape
    hh = bt.hh
    fin_u = np.isfinite(bt.ub)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()

    # Start: inside the box, rows with some slack, duals balancing a small mu.
    span = np.where(fin_u, bt.ub - bt.lb, np.inf)
    x = bt.lb + np.minimum(0.5 * span, 1e-3)
    Gx = ops.G(x)
    s = np.where(bt.rvalid, np.maximum(bt.h - Gx, 1e-2), 1.0)
    mu0 = 1e-2
    zl = np.full(len(x), mu0) / (x - bt.lb)
    zu = np.where(fin_u, mu0 / np.where(fin_u, bt.ub - x, 1.0), 0.0)
    y = np.where(bt.rvalid, mu0 / s, 0.0)
    rv = bt.rvalid
    n_comp = np.bincount(hh, minlength=B) + np.bincount(hh, weights=fin_u.astype(float), minlength=B) + rv.sum(1)

    tol_d, tol_gap = 100.0 * tolerance, 10.0 * tolerance
    best_x = x.copy()
    best_merit = np.full(B, np.inf)
    best_it = np.zeros(B, int)
    best_rd = np.full(B, np.inf)
    active = np.ones(B, bool)
    status = np.full(B, SolveStatus.FAILED, object)
    iters = np.zeros(B, int)
    GtC = ops.Gt_cols()
    for it in range(MAX_ITER):
        tl = x - bt.lb
        tu = np.where(fin_u, bt.ub - x, 1.0)
        a = bt.d0 + ops.A(x)
        grad = bt.c + bt.q2 * x + ops.At(ops.P(a))
        rd = grad + ops.Gt(y) - zl + np.where(fin_u, zu, 0.0)
        rp = np.where(rv, ops.G(x) + s - bt.h, 0.0)
        comp = (np.bincount(hh, weights=tl * zl, minlength=B) + np.bincount(hh, weights=np.where(fin_u, tu * zu, 0.0), minlength=B)
                + np.sum(np.where(rv, s * y, 0.0), axis=1))
        mu = comp / np.maximum(n_comp, 1)
        rd_max = _seg_max(np.abs(rd), hh, B)
        rp_max = np.max(np.abs(rp), axis=1, initial=0.0)
        merit = np.maximum(np.maximum(rd_max / tol_d, rp_max / tolerance), comp / tol_gap)
        better = active & (merit < best_merit)
        if better.any():
            sel = better[hh]
            best_x[sel] = x[sel]
            best_merit[better] = merit[better]
            best_it[better] = it
            best_rd[better] = rd_max[better]
        done = active & (merit <= 1.0)
        status[done] = SolveStatus.OPTIMAL
        # Rounding has taken over (the Newton systems of a nearly solved problem are very
        # ill-conditioned): stop and keep the best iterate.
        stuck = active & ~done & (merit > 1e3 * best_merit)
        iters[active] = it
        active &= ~done & ~stuck
        if not active.any():
            break
        # A small primal regularization keeps K^-1 bounded where the problem is degenerate
        # (several free trades moving one security): the step stays a descent direction and
        # the residuals, always computed exactly, decide convergence.
        E = bt.q2 + zl / tl + np.where(fin_u, zu / tu, 0.0) + _REG
        fac = ops.factor(E)
        KiGt = ops.Kinv(fac, GtC)  # (Nt, m)
        Wrow = np.where(rv, s / np.where(rv, y, 1.0), 1.0)
        schur = ops.G(KiGt) + np.einsum("bm,mk->bmk", Wrow, np.eye(m))
        schur = np.where((rv[:, :, None] & rv[:, None, :]) | np.eye(m, dtype=bool)[None], schur, 0.0)

        E_true = E - _REG

        def reduced(r1, r2):
            Kr1 = ops.Kinv(fac, r1)
            dy = np.linalg.solve(schur, (ops.G(Kr1) - r2)[..., None])[..., 0]
            dy = np.where(rv, dy, 0.0)
            return Kr1 - np.einsum("jm,jm->j", KiGt, dy[hh]), dy

        def direction(rl, ru, rs):
            r1 = -rd + rl / tl - np.where(fin_u, ru / tu, 0.0)
            r2 = np.where(rv, -rp - rs / np.where(rv, y, 1.0), 0.0)
            dx, dy = reduced(r1, r2)
            for _ in range(_REFINE):  # iterative refinement against the unregularized system
                e1 = r1 - (E_true * dx + ops.At(ops.P(ops.A(dx))) + ops.Gt(dy))
                e2 = np.where(rv, r2 - (ops.G(dx) - Wrow * dy), 0.0)
                cx, cy = reduced(e1, e2)
                dx, dy = dx + cx, dy + cy
            dzl = (rl - zl * dx) / tl
            dzu = np.where(fin_u, (ru + zu * dx) / tu, 0.0)
            ds = np.where(rv, (rs - s * dy) / np.where(rv, y, 1.0), 0.0)
            return dx, dy, dzl, dzu, ds

        def step(dx, dy, dzl, dzu, ds):
            def ratio(v, dv):
                return np.where(dv < 0, -v / np.where(dv < 0, dv, -1.0), np.inf)
            ap = np.minimum(_seg_min(ratio(tl, dx), hh, B),
                            _seg_min(np.where(fin_u, ratio(tu, -dx), np.inf), hh, B))
            ap = np.minimum(ap, np.min(np.where(rv, ratio(s, ds), np.inf), axis=1, initial=np.inf))
            ad = np.minimum(_seg_min(ratio(zl, dzl), hh, B), _seg_min(np.where(fin_u, ratio(zu, dzu), np.inf), hh, B))
            ad = np.minimum(ad, np.min(np.where(rv, ratio(y, dy), np.inf), axis=1, initial=np.inf))
            return np.minimum(1.0, ap), np.minimum(1.0, ad)

        # predictor
        zero_l, zero_u, zero_s = -tl * zl, -np.where(fin_u, tu * zu, 0.0), np.where(rv, -s * y, 0.0)
        aff = direction(zero_l, zero_u, zero_s)
        ap, ad = step(*aff)
        ap = ad = np.minimum(ap, ad)
        dx, dy, dzl, dzu, ds = aff
        comp_aff = (np.bincount(hh, weights=(tl + ap[hh] * dx) * (zl + ad[hh] * dzl), minlength=B)
                    + np.bincount(hh, weights=np.where(fin_u, (tu - ap[hh] * dx) * (zu + ad[hh] * dzu), 0.0), minlength=B)
                    + np.sum(np.where(rv, (s + ap[:, None] * ds) * (y + ad[:, None] * dy), 0.0), axis=1))
        sigma = np.clip((comp_aff / np.maximum(comp, 1e-300)) ** 3, 0.0, 1.0)
        smu = (sigma * mu)
        # corrector
        rl = smu[hh] - tl * zl - dx * dzl
        ru = np.where(fin_u, smu[hh] - tu * zu + dx * dzu, 0.0)
        rs = np.where(rv, smu[:, None] - s * y - ds * dy, 0.0)
        dx, dy, dzl, dzu, ds = direction(rl, ru, rs)
        ap, ad = step(dx, dy, dzl, dzu, ds)
        # One step length for primal and dual: the dual residual of a QP depends on x.
        ap = ad = np.where(active, np.minimum(1.0, _STEP * np.minimum(ap, ad)), 0.0)
        x = x + ap[hh] * dx
        s = np.where(rv, s + ap[:, None] * ds, 1.0)
        zl = zl + ad[hh] * dzl
        zu = np.where(fin_u, zu + ad[hh] * dzu, 0.0)
        y = np.where(rv, y + ad[:, None] * dy, 0.0)
    else:
        iters[active] = MAX_ITER

    solve_s = time.perf_counter() - t1
    # Results, in the problems' own variables
    out = []
    x = best_x
    for b, p in enumerate(problems):
        fi = free_idx[b]
        xs = np.where(p.ub > p.lb + 1e-15, 0.0, p.lb)
        xs[fi] = x[hh == b]
        st = status[b]
        if st != SolveStatus.OPTIMAL:
            # close enough for use, flagged, when the best iterate is within 100x the tolerances
            st = SolveStatus.OPTIMAL_INACCURATE if best_merit[b] <= 100.0 else SolveStatus.FAILED
        primal = max(p.violation(xs).values())
        xs = np.clip(xs, p.lb, np.where(np.isfinite(p.ub), p.ub, np.inf))
        out.append(SolveResult(solver=SOLVER_NAME, status=st, x=xs,
                               objective=p.objective(xs) if st.usable else float("nan"),
                               primal_residual=primal, dual_residual=float(best_rd[b]), iterations=int(best_it[b]),
                               setup_seconds=setup_s / B, solve_seconds=solve_s / B,
                               message=f"{st} after {int(iters[b])} iterations"))
    return out


def _seg_max(values: np.ndarray, groups: np.ndarray, B: int) -> np.ndarray:
    out = np.zeros(B)
    np.maximum.at(out, groups, values)
    return out


def solve_fast(p: HouseholdProblem, tolerance: float = 1e-8) -> SolveResult:
    """One problem (a batch of one): the same signature as the reference solver."""
    return solve_batch([p], tolerance)[0]
