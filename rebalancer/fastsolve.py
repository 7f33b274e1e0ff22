"""The fast household solver: a primal-dual interior-point method in numpy, batched over
households, on the structure of the household problem (DESIGN section 4).

The iterations run in one of two kernels (``KERNEL``). By default, where numba is installed,
:mod:`.fastkernel` runs them compiled, one household after another in one call per batch (the
same method, start, steps and stopping; LU solves of the small systems where the batched
kernel inverts them): measured on 400 households of the 10,000-account book, direct-indexed
first solves 1.66 -> 0.66 s in the same iterations, fund households 0.41 -> 0.22 s with more of
them optimal (279 against 229-236 of 299), the job's solve time 5.5 -> 2.5 s. The batched numpy
kernel below stays for machines without numba and as the kernel's reference in the tests.

Problems are grouped by size (dense or low-rank risk, rank r, securities n); in a group the
free variables of all households are one flat vector, each household's contiguous, and every
per-variable operation is one numpy operation over the group (segment sums and minima by
``reduceat``, scatters to securities and rows by ``bincount``); every per-household one (a
small dense system) is one batched product or inverse. There is no Python loop over
households in the iterations. A household that has converged (or stalled) is dropped from
the arrays once a fifth of the group has finished.

The Newton matrix on a household's free variables is ``K = E + A' P A``: E diagonal (barrier
terms and the impact term), A the incidence of variables on securities (one +-1 per column),
P = 2 lambda (X F X' + L D L') the risk matrix on the household's n securities. With
``S = A E^-1 A'`` (diagonal: each variable moves one security),

    K^-1 = E^-1 - E^-1 A' P (I + S P)^-1 A E^-1                         (push-through)

so each Newton step needs one n x n system. P is split once per problem into a diagonal
plus a low-rank part, ``P = Dp + W Z'`` (W, Z: n x r): the factor model gives rank k, and
the look-through of an ETF to its constituents couples it with the stocks it holds (rank 2
per such ETF, r = k + 2 |E|). Then ``I + S P = Delta + (S W) Z'`` with Delta diagonal and
Woodbury leaves an r x r system; half of an ETF's rank-2 pair is a unit vector, so that
system is reduced exactly to order k + |E| (``_Ops._lowrank_core``): O(n (k + |E|)^2) per
iteration instead of O(n^3). Where the low-rank part would not be smaller than n (small fund
households), W = P and Z = I: the dense n x n system.

The coupling rows (cash per account, the tax budget) are few: their Schur complement
``G K^-1 G' + diag(s / y)`` (m x m per household) is formed from scatters of E^-1 onto
(security, row) pairs, without solving for each row. Mehrotra's predictor-corrector, one step
length for primal and dual per household (the dual residual of a QP depends on x), a primal
regularization of 1e-8 with one round of iterative refinement of the corrector step in dense
groups of the numpy iterations (none in low-rank ones, nor in the compiled kernel, which
solves by LU factors: ``_REFINE``, ``_REFINE_COMPILED``). Direct-indexed households starting cold start
from Mehrotra's recentred point after one affine step (``_recentre``, ``_RECENTRE``).

Stopping, per household, in units of household value with ``tol`` the tolerance asked: dual
residual <= 100 tol, row residual <= tol, duality gap <= 100 tol (1e-6 V at the default
1e-8: $1 on $1M, a hundredth of the agreement asked of it against the reference). The best
iterate is kept; a household whose iterates stall (rounding takes over near the solution)
stops there and is ``optimal_inaccurate`` if its best iterate is within 10x those
tolerances, else ``failed`` (the job then solves it with the reference). The solver does
not certify infeasibility: an infeasible problem ends ``failed``.

Warm starts: every result carries its final iterate (:class:`~rebalancer.solution.WarmStart`);
a problem with the same variables (the job's wash-sale re-solve, which fixes some of them at
0) can start from it: x pushed ``_WARM_SHIFT`` inside its bounds, every complementarity
product at least ``_WARM_MU``, row slacks at least ``_WARM_ROW``. Direct-indexed re-solves
take about half the iterations (18.6 -> 10 on average); small fund households start cold
(see ``_group_start``). A warm start that ends anything but optimal is solved again cold and
the better result kept, so a poor start costs time, never the answer.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from . import fastkernel
from .problem import HouseholdProblem
from .solution import SolveResult, SolveStatus, WarmStart

__all__ = ["SOLVER_NAME", "solve_fast", "solve_batch", "risk_structure", "warm_up"]

SOLVER_NAME = "fast"
# How the households iterate: "compiled" (fastkernel, numba) where numba is installed, else
# "numpy" (the batched iterations here); REBALANCER_FAST_KERNEL overrides it (for comparisons).
KERNEL = os.environ.get("REBALANCER_FAST_KERNEL") or ("compiled" if fastkernel.AVAILABLE else "numpy")
MAX_ITER = 80
# B * n * r of one group's dense blocks. Small fund households (dense, n of a few dozen) gain
# from large batches (numpy's per-call overhead is shared); direct-indexed ones (low-rank, n
# about 530, r about 50) from blocks that stay in cache: measured on the 101 of them in 400
# households of the 10,000-account book, 2.42 s at 4M cells (B about 150), 2.06 at 500k,
# 1.84-1.89 at 150k (B about 6), 2.25 at 30k, 2.30 one at a time.
_GROUP_CELLS = {"dense": 4_000_000, "lowrank": 150_000}
_STEP = 0.99  # fraction to the boundary
_REG = 1e-8
# The starting point: trades at min(half their range, x0), complementarity mu0 (units of V).
# Dense groups are small fund households; low-rank groups direct-indexed ones, whose many
# small lots start at half their value and whose buys need a larger, better-centred start
# (measured on a 300-account book: 18 iterations on average instead of 27, no new failures).
_START = {"dense": (1e-3, 1e-3), "lowrank": (3e-3, 3e-5)}
# Low-rank (direct-indexed) households starting cold then take one affine Newton step from
# that point and start from it recentred (Mehrotra's starting-point heuristic; _recentre),
# where that point is no further from feasible: from the fixed start their first steps were
# short (a third of the first 8 under 0.3: the many buys at x0 leave the cash rows far off).
# Measured on the 296 of them in three buckets of 400 households of the 10,000-account book:
# 20.1 / 19.2 / 19.1 -> 16.0 / 14.9 / 15.1 iterations (the recentring step counted), 1.80 /
# 1.51 / 1.64 -> 1.37 / 1.20 / 1.29 s, all optimal, objectives within 0.073 of the agreement
# allowance. Not for dense groups (small fund households: no fewer iterations, 0 -> 4
# failures of 299) nor for warm starts (10.9 -> 10.4 iterations for as much time), nor for
# low-rank households of few variables (fund households with a few ETFs, a few hundred
# variables: 6 such in 400 households took 15-24 iterations from the fixed start, 10-45
# recentred).
_RECENTRE = {"dense": None, "lowrank": (2.0, 1e-8)}
_RECENTRE_MIN_VARS = 1000
# Rounds of iterative refinement of each corrector step. Dense groups (small fund households)
# need one; without it low-rank ones (direct-indexed) took the same iterations to the same
# optima (101 households of the 10,000-account book: all optimal both ways, objectives within
# 0.009 of the agreement allowance) in 27% less time.
_REFINE = {"dense": 1, "lowrank": 0}
# The compiled kernel, which solves its small systems by LU factors where the numpy iterations
# invert them, needs no refinement in dense groups either: on the 904 fund households of three
# buckets of the 10,000-account book, the same iterations (12.02 on average) to the same
# statuses and objectives without it, in a quarter less time (0.19 -> 0.14 s per 300).
_REFINE_COMPILED = {"dense": 0, "lowrank": 0}
# A small fund household that fails (most have no impact cost: a flat optimal face, where the
# Newton systems lose accuracy and the dual residual jumps near the end) is solved once more
# with three rounds of refinement from a start closer to its bounds, before the job falls
# back to the reference (about 35 ms each): of the 9 of 299 small households of the
# 10,000-account book that failed, 7 then solved (22 of the 62 inaccurate ones became optimal).
_ROBUST = {"refine": 3, "start": (1e-4, 1e-4)}
# Stopping, in multiples of the tolerance asked (units of household value): dual residual,
# duality gap (a gap of 1e-6 V is $1 per $1M, far inside the agreement asked of the
# solver), and the merit up to which a stalled solve is still usable, flagged inaccurate.
_DUAL_TOL = 100.0
_GAP_TOL = 100.0
_INACCURATE = 10.0
# A warm start: margin inside the bounds (units of V) and least complementarity product.
_WARM_SHIFT = 1e-5
_WARM_MU = 1e-7
_WARM_ROW = 1e-3
_STALL_FROM = 6  # iterations before a rise of the merit counts as a stall (a warm start may rise first)


def _risk_parts(p: HouseholdProblem) -> tuple:
    """(lam2, XC, dg, E, V1) with ``P = lam2 (XC XC' + diag(dg) + I_E V1' + U2 I_E')``: XC (n, k)
    the factor part (X F X' = XC XC'); dg the diagonal of L D L'; E the hubs, a vertex cover of
    the off-diagonal coupling of L D L' (securities that look through to several risk assets,
    ETFs, and of other securities on one risk asset with a specific variance all but one);
    V1 (n, |E|) the hubs' columns of L D L' off its diagonal; U2 = V1 off the hubs' rows.
    Where that rank (k + 2 |E|) would be no smaller than n (a small fund household: dense
    products are the cheaper), (lam2, XC, None, None, None) and P is made dense (_dense_P).

    From L's entries row by row, where L is sparse: the dense route (L != 0, (L * L) @ d,
    L[E] D L') cost 1.2 ms of a direct-indexed household's 512 x 523 L with 2,900 entries, and
    V1 by one reduceat over every entry 0.47 ms of the rest (line-profiled); made by rows here,
    the kernel's whole risk form takes 0.28-0.41 ms against 0.50-0.59."""
    lam2 = 2.0 * p.risk_aversion
    n = len(p.securities)
    XC = p.exposures @ p.factor_chol
    d = p.specific_var
    rows, cols, vals = p.look.rows, p.look.cols, p.look.vals
    count = np.bincount(rows, minlength=n)
    first = np.cumsum(count) - count  # each row's first entry
    hub = count > 1
    if XC.shape[1] + 2 * int(np.count_nonzero(hub)) >= n:
        return lam2, XC, None, None, None
    r1 = np.flatnonzero(count == 1)
    c1 = cols[first[r1]]  # the one risk asset of each
    keep = d[c1] != 0.0
    r1, c1 = r1[keep], c1[keep]
    order = np.lexsort((r1, c1))
    r1, c1 = r1[order], c1[order]
    hub[r1[:-1][c1[1:] == c1[:-1]]] = True
    E = np.flatnonzero(hub)
    e = len(E)
    if XC.shape[1] + 2 * e >= n:
        return lam2, XC, None, None, None
    dg = np.bincount(rows, weights=vals * vals * d[cols], minlength=n)
    # The rows of L with several entries (ETFs) and the hubs' rows, dense: (|R|, m)
    multi = np.flatnonzero(count > 1)
    R = np.union1d(multi, E)
    pos = np.full(n, -1)
    pos[R] = np.arange(len(R))
    onR = np.flatnonzero(pos[rows] >= 0)
    m = len(d)
    LR = np.zeros((len(R), m))
    LR.reshape(-1)[pos[rows[onR]] * m + cols[onR]] = vals[onR]
    LEt = (LR[pos[E]] * d).T  # the hubs' rows of L D, transposed: (m, |E|)
    # V1 = L LEt: a row of one entry (a, v) is v LEt[a]; the rows of several, one product
    V1 = np.empty((n, e))
    one = np.flatnonzero(count == 1)
    V1[one] = vals[first[one], None] * LEt[cols[first[one]]]
    V1[count == 0] = 0.0
    V1[multi] = LR[pos[multi]] @ LEt
    V1[E, np.arange(e)] = 0.0
    return lam2, XC, dg, E, V1


def _dense_P(p: HouseholdProblem, parts) -> np.ndarray:
    """P (n, n), exactly symmetric, from the dense L (a fund household's: 15% entries, and
    already made for its other products)."""
    lam2, XC = parts[:2]
    Ld = p.lookthrough
    P = lam2 * (XC @ XC.T + (Ld * p.specific_var) @ Ld.T)
    return 0.5 * (P + P.T)


def risk_structure(p: HouseholdProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Dp, W, Z) with the risk matrix ``P = 2 lambda (X F X' + L D L') = diag(Dp) + W Z'``:
    W = lam2 [XC, I_E, U2], Z = [XC, V1, I_E] (see _risk_parts); where that rank would be no
    smaller than n, the dense form Dp = 0, W = P, Z = I."""
    parts = _risk_parts(p)
    n = len(p.securities)
    if parts[2] is None:
        return np.zeros(n), _dense_P(p, parts), np.eye(n)
    lam2, XC, dg, E, V1 = parts
    U2 = V1.copy()
    U2[E, :] = 0.0
    I_E = np.zeros((n, len(E)))
    I_E[E, np.arange(len(E))] = 1.0
    W = lam2 * np.hstack([XC, I_E, U2])
    Z = np.hstack([XC, V1, I_E])
    return lam2 * dg, W, Z


@dataclass
class _Group:
    """Flat arrays of a group of problems' free variables, households contiguous, and
    per-household blocks padded to the group's n (securities), m (rows) and, in a low-rank group,
    k (factors) and e (hubs)."""
    ids: np.ndarray     # (B,) index of each household in the caller's list
    start: np.ndarray   # (B,) offset of each household's first variable
    hh: np.ndarray      # (Nt,) household of each variable, nondecreasing
    fsec: np.ndarray    # (Nt,) hh * n + security slot
    frow: np.ndarray    # (Nt,) hh * m + cash row
    fbrow: np.ndarray   # (Nt,) hh * m + budget row (the cash row, with gainb 0, where none)
    sign: np.ndarray    # (Nt,) +1 buy, -1 sell
    gainb: np.ndarray   # (Nt,) budget coefficient, 0 without a budget
    lb: np.ndarray
    ub: np.ndarray      # 0 where there is no upper bound (see fin)
    fin: np.ndarray     # (Nt,) float 1.0 where the upper bound is finite
    c: np.ndarray       # linear cost
    q2: np.ndarray      # 2 * impact
    d0: np.ndarray      # (B, n) active weights at x = 0 (fixed variables folded in)
    Dp: np.ndarray      # (B, n)
    W: np.ndarray       # (B, n, n) P in a dense group; (B, n, k + e) [W1 W3] in a low-rank one
    Zt: np.ndarray | None  # (B, k + e, n) [Z1 Z2]'; None in a dense group
    h: np.ndarray       # (B, m) row right-hand sides (1 on padded rows)
    rv: np.ndarray      # (B, m) float 1.0 where the row exists
    # Low-rank groups: the hubs (padded to e, the group's most; see _Ops._lowrank_core), None in a
    # dense group. The padding's slot is the group's last security slot, which no household uses.
    hub: np.ndarray | None = None  # (B, e) security slot of each hub
    w2: np.ndarray | None = None   # (B, e) W2's entry of each hub (2 lambda), 0 on padding
    Wh: np.ndarray | None = None   # (B, e, k) W1's rows of the hubs

    @property
    def B(self) -> int:
        return len(self.ids)

    def take(self, keep: np.ndarray) -> tuple["_Group", np.ndarray]:
        """The group restricted to households ``keep`` (bool (B,)), and the variable mask."""
        vm = keep[self.hh]
        new_b = np.cumsum(keep) - 1
        n, m = self.d0.shape[1], self.h.shape[1]
        hh = new_b[self.hh[vm]]
        counts = np.bincount(hh, minlength=int(keep.sum()))
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return _Group(
            ids=self.ids[keep], start=start, hh=hh, fsec=hh * n + self.fsec[vm] % n, frow=hh * m + self.frow[vm] % m,
            fbrow=hh * m + self.fbrow[vm] % m, sign=self.sign[vm], gainb=self.gainb[vm], lb=self.lb[vm], ub=self.ub[vm],
            fin=self.fin[vm], c=self.c[vm], q2=self.q2[vm], d0=self.d0[keep], Dp=self.Dp[keep], W=self.W[keep],
            Zt=None if self.Zt is None else self.Zt[keep], h=self.h[keep], rv=self.rv[keep],
            **({} if self.hub is None else {"hub": self.hub[keep], "w2": self.w2[keep], "Wh": self.Wh[keep]})), vm


def _is_dense(struct) -> bool:
    """risk_structure gave the dense form (W = P, Z = I)."""
    _, w, z = struct
    return z.shape[0] == z.shape[1] and not np.any(struct[0]) and np.array_equal(z, np.eye(len(z)))


def _group(problems, structs, ids) -> tuple[_Group, list]:
    """Stack problems ``ids`` (each with at least one free variable) into one group."""
    dense = all(_is_dense(structs[i]) for i in ids)
    # a low-rank group has one security slot more than its largest household: the hubs' padding
    n = max(len(problems[i].securities) for i in ids) + (0 if dense else 1)
    m = max(problems[i].n_accounts + 1 for i in ids)
    B = len(ids)
    d0, Dp = np.zeros((B, n)), np.zeros((B, n))
    h, rv = np.ones((B, m)), np.zeros((B, m))
    if dense:
        W, Zt, hubs = np.zeros((B, n, n)), None, {}
    else:
        # P = Dp + W1 Z1' + W2 Z2' + W3 Z3' (risk_structure): W1 = 2 lambda XC = 2 lambda Z1,
        # W2 = 2 lambda I_E, W3 = U2, Z2 = V1, Z3 = I_E; k factors, E hubs.
        ks = [problems[i].factor_chol.shape[1] for i in ids]
        es = [(structs[i][1].shape[1] - kb) // 2 for i, kb in zip(ids, ks)]
        kg, eg = max(ks), max(es)
        W, Zt = np.zeros((B, n, kg + eg)), np.zeros((B, kg + eg, n))
        hubs = {"hub": np.full((B, eg), n - 1), "w2": np.zeros((B, eg)), "Wh": np.zeros((B, eg, kg))}
    parts, free_idx = [], []
    for b, i in enumerate(ids):
        p = problems[i]
        dp, w, z = structs[i]
        ni, A = len(p.securities), p.n_accounts
        free = p.ub > p.lb + 1e-15
        fixed_x = np.where(free, 0.0, p.lb)
        fi = np.flatnonzero(free)
        # by (account, security): each cash row and each (security, row) pair is one run of
        # consecutive variables, which _Ops sums with reduceat (scatters to few bins are slow)
        fi = fi[np.lexsort((p.security[fi], p.account[fi]))]
        free_idx.append(fi)
        sign = p.sign
        d0[b, :ni] = p.w0 - p.target + np.bincount(p.security, weights=sign * fixed_x, minlength=ni)
        Dp[b, :ni] = dp
        if dense:
            W[b, :ni, :ni] = w
        else:
            kb, eb = ks[b], es[b]
            hub = np.argmax(z[:, kb + eb:], axis=0)
            W[b, :ni, :kb], W[b, :ni, kg:kg + eb] = w[:, :kb], w[:, kb + eb:]
            Zt[b, :kb, :ni], Zt[b, kg:kg + eb, :ni] = z[:, :kb].T, z[:, kb:kb + eb].T
            hubs["hub"][b, :eb] = hub
            hubs["w2"][b, :eb] = w[hub, kb + np.arange(eb)]
            hubs["Wh"][b, :eb, :kb] = w[hub, :kb]
        h[b, :A] = p.cash_rhs - np.bincount(p.account, weights=sign * fixed_x, minlength=A)
        rv[b, :A] = 1.0
        has_b = math.isfinite(p.budget)
        if has_b:
            h[b, A] = p.budget - float(p.gain @ fixed_x)
            rv[b, A] = 1.0
        k = len(fi)
        row = p.account[fi]
        parts.append((np.full(k, b), b * n + p.security[fi], b * m + row, b * m + (np.full(k, A) if has_b else row), sign[fi],
                      p.gain[fi] if has_b else np.zeros(k), p.lb[fi], p.ub[fi], p.cost[fi], 2.0 * p.impact[fi]))
    cols = [np.concatenate(c) for c in zip(*parts)]
    hh = cols[0].astype(np.int64)
    ub = cols[7].astype(float)
    fin = np.isfinite(ub)
    counts = np.bincount(hh, minlength=B)
    g = _Group(ids=np.asarray(ids), start=np.concatenate([[0], np.cumsum(counts)[:-1]]), hh=hh,
               fsec=cols[1].astype(np.int64), frow=cols[2].astype(np.int64), fbrow=cols[3].astype(np.int64),
               sign=cols[4].astype(float), gainb=cols[5].astype(float), lb=cols[6].astype(float),
               ub=np.where(fin, ub, 0.0), fin=fin.astype(float), c=cols[8].astype(float), q2=cols[9].astype(float),
               d0=d0, Dp=Dp, W=W, Zt=Zt, h=h, rv=rv, **hubs)
    return g, free_idx


class _Ops:
    """The linear algebra of one group (see the module docstring)."""

    def __init__(self, g: _Group):
        self.g = g
        self.B, self.n = g.d0.shape
        self.m = g.h.shape[1]
        self.gs = g.gainb * g.sign
        m = self.m
        # Runs of consecutive variables on one cash row (rs: starts, rid: the row, rbud: the
        # household's budget row): row sums by reduceat, then a scatter of the runs (correct
        # whatever the order; fast when variables come sorted, see _group).
        self.rs = _run_starts(g.frow)
        self.rid, self.rbud = g.frow[self.rs], g.fbrow[self.rs]
        self.mcell = g.fsec * m + g.frow % m  # cells of M = A E^-1 G' (B, n, m), flat
        self.mbud = g.fsec * m + g.fbrow % m
        # Delta^-1 S W (dense) or [Z1 Z2]' Delta^-1 S (low-rank) of the current iteration:
        # written in place each time (a new array of this size costs more in page faults than
        # the product itself)
        self._buf = np.empty_like(g.W if g.hub is None else g.Zt)
        if g.hub is not None:
            self.k = g.Wh.shape[2]
            self.hflat = np.arange(self.B)[:, None] * self.n + g.hub  # (B, e) into (B * n)
        # households with a budget row, and that row
        self.bh = np.flatnonzero(np.logical_or.reduceat(g.fbrow != g.frow, g.start))
        self.brow = g.fbrow[g.start[self.bh]]

    def segsum(self, v):
        return np.add.reduceat(v, self.g.start)

    def segmin(self, v):
        return np.minimum.reduceat(v, self.g.start)

    def A(self, v):
        """(Nt,) -> (B, n): sum of sign * v per security."""
        return np.bincount(self.g.fsec, weights=self.g.sign * v, minlength=self.B * self.n).reshape(self.B, self.n)

    def At(self, u):
        """(B, n) -> (Nt,)."""
        return self.g.sign * u.ravel()[self.g.fsec]

    def P(self, u):
        """Risk matrix times (B, n) or (B, n, c)."""
        g = self.g
        if g.hub is None:
            return g.Dp * u + (g.W @ u[:, :, None])[:, :, 0] if u.ndim == 2 else g.Dp[:, :, None] * u + g.W @ u
        U = u[:, :, None] if u.ndim == 2 else u
        z = g.Zt @ U  # [Z1 Z2]' u; Z3' u is u at the hubs
        out = g.Dp[:, :, None] * U + self._w(z[:, :self.k], self._at_hubs(U), z[:, self.k:])
        return out[:, :, 0] if u.ndim == 2 else out

    def _at_hubs(self, U):
        """(B, n, c) -> (B, e, c): the hubs' rows."""
        return U.reshape(self.B * self.n, -1)[self.hflat]

    def _w(self, v1, v3, v2):
        """W v for v in W's column blocks (W1: v1, W3: v3, W2 = 2 lambda I_E: v2), (B, n, c)."""
        out = self.g.W @ np.concatenate([v1, v3], axis=1)
        # the hubs of a household are distinct; its padding (w2 = 0) all on the unused last slot
        out.reshape(self.B * self.n, -1)[self.hflat] += self.g.w2[:, :, None] * v2
        return out

    def G(self, v):
        """(Nt,) -> (B, m): cash rows and budget row."""
        g = self.g
        out = np.bincount(self.rid, weights=np.add.reduceat(g.sign * v, self.rs), minlength=self.B * self.m)
        if len(self.bh):
            out[self.brow] += self.segsum(g.gainb * v)[self.bh]
        return out.reshape(self.B, self.m)

    def Gt(self, y):
        """(B, m) -> (Nt,)."""
        f = y.ravel()
        return self.g.sign * f[self.g.frow] + self.g.gainb * f[self.g.fbrow]

    def factor(self, E):
        """Everything the Newton solves of this iteration share, for the diagonal E (Nt,)."""
        g, B, n, m = self.g, self.B, self.n, self.m
        Einv = 1.0 / E
        S = np.bincount(g.fsec, weights=Einv, minlength=B * n).reshape(B, n)
        Delta = 1.0 + S * g.Dp
        if g.hub is None:
            SWd = np.multiply((S / Delta)[:, :, None], g.W, out=self._buf)  # Delta^-1 S P
            core = SWd.copy()
            core[:, np.arange(n), np.arange(n)] += 1.0
            fac = (Einv, Delta, SWd, _inv(core))
        else:
            fac = (Einv, Delta, *self._lowrank_core(S / Delta))
        # M = A E^-1 G' (B, n, m) and G E^-1 G' (B, m, m), by scatter: each variable is on one
        # security, one cash row and (with its gain) the budget row.
        # M by scatters to its many cells; G E^-1 G' from sums over the runs of each row (its
        # few cells would serialize a scatter). The budget row's cells get 0 where a household
        # has none (gainb = 0).
        egs = Einv * self.gs
        nm = B * n * m
        M = (np.bincount(self.mcell, weights=Einv, minlength=nm)
             + np.bincount(self.mbud, weights=egs, minlength=nm)).reshape(B, n, m)
        r_e, r_g = np.add.reduceat(Einv, self.rs), np.add.reduceat(egs, self.rs)
        rid, rbud = self.rid, self.rbud
        cells = [rid * m + rid % m, rid * m + rbud % m, rbud * m + rid % m]
        vals = [r_e, r_g, r_g]
        if len(self.bh):
            cells.append(self.brow * m + self.brow % m)
            vals.append(self.segsum(Einv * g.gainb * g.gainb)[self.bh])
        GEG = np.bincount(np.concatenate(cells), weights=np.concatenate(vals), minlength=B * m * m).reshape(B, m, m)
        PMs = self.P(self.solve_sec(fac, M))  # P (I + S P)^-1 A E^-1 G'
        schur = GEG - np.swapaxes(M, 1, 2) @ PMs
        return fac, M, PMs, schur

    def _lowrank_core(self, t):
        """The Woodbury core ``I + Z' T W`` (T = diag(t), t = Delta^-1 S) of a low-rank group,
        reduced to what solve_sec needs. In Z's row blocks [Z1 Z2 | Z3] and W's column blocks
        [W1 W2 | W3] the core is [[Adq, Adp], [Ahq, I]]: Z3 = I_E pairs with W3 = U2, which is
        0 on the hubs' rows, so that block is exactly I, and Ahq = [t_E W1[E], diag(t_E w2)].
        Eliminating it leaves the Schur complement ``Adq - Adp Ahq`` of order k + e (35 for a
        direct-indexed household against 50: (k+e)^2 n flops for the product instead of
        (k+2e)^2 n, a third of the inverse), with a unit pivot: no loss of accuracy. Measured
        against the r x r core on the 101 direct-indexed households of 400 of the 10,000-account
        book: first solves 7% and warm re-solves 11% faster (medians of 3 interleaved), the same
        iterations, objectives within 0.0007 of the agreement allowance."""
        g, B, k = self.g, self.B, self.k
        ZT = np.multiply(g.Zt, t[:, None, :], out=self._buf)  # [Z1 Z2]' T
        prod = ZT @ g.W  # [Z1 Z2]' T [W1 W3]
        th = t.reshape(-1)[self.hflat]  # (B, e)
        tw = th * g.w2
        adq = prod  # written in place: its W1 columns are Adq's, its W3 columns Adp
        adp = prod[:, :, k:].copy()
        adq[:, :, k:] = np.take_along_axis(ZT, g.hub[:, None, :], axis=2) * g.w2[:, None, :]  # Z' T W2
        d = np.arange(adq.shape[1])
        adq[:, d, d] += 1.0
        e = g.hub.shape[1]
        ahq = np.zeros((B, e, adq.shape[1]))
        ahq[:, :, :k] = th[:, :, None] * g.Wh
        ahq[:, np.arange(e), k + np.arange(e)] = tw
        return t, _inv(adq - adp @ ahq), adp, ahq

    def solve_sec(self, fac, rhs):
        """(I + S P)^-1 rhs for rhs (B, n) or (B, n, c) (Woodbury on P = Dp + W Z')."""
        Delta = fac[1]
        U = (rhs / Delta)[:, :, None] if rhs.ndim == 2 else rhs / Delta[:, :, None]
        if self.g.hub is None:
            SWd, coreinv = fac[2:]
            out = U - SWd @ (coreinv @ U)
        else:
            t, sinv, adp, ahq = fac[2:]
            bd, bh = self.g.Zt @ U, self._at_hubs(U)  # Z' U in Z's row blocks
            vq = sinv @ (bd - adp @ bh)
            vp = bh - ahq @ vq
            out = U - t[:, :, None] * self._w(vq[:, :self.k], vp, vq[:, self.k:])
        return out[:, :, 0] if rhs.ndim == 2 else out


def _run_starts(key: np.ndarray) -> np.ndarray:
    """Starts of the runs of equal consecutive values of ``key`` (non-empty)."""
    return np.concatenate([[0], np.flatnonzero(key[1:] != key[:-1]) + 1])


def _inv(a: np.ndarray) -> np.ndarray:
    """Inverses of a stack of matrices; a singular one gets its pseudo-inverse (its household
    then fails to converge and is reported, never an exception for the whole batch)."""
    try:
        return np.linalg.inv(a)
    except np.linalg.LinAlgError:
        out = np.empty_like(a)
        for i, x in enumerate(a):
            try:
                out[i] = np.linalg.inv(x)
            except np.linalg.LinAlgError:
                try:
                    out[i] = np.linalg.pinv(x)
                except np.linalg.LinAlgError:  # not even an SVD (non-finite entries)
                    out[i] = np.nan
        return out


def _solve_group(g: _Group, tolerance: float, start=None, robust: bool = False):
    """Interior-point iterations on one group. Returns the best iterate (x, zl, zu flat in the
    group's original variable order; y (B, m)) and per household (in ``g.ids`` order of the
    original group) merit, iterations, dual residual, status. ``start``: (x, zl, zu, y, warm)
    in the same layout, ``warm`` (B,) the households that start from it (see ``_warm``)."""
    B0, m = g.B, g.h.shape[1]
    x_out = np.zeros(len(g.hh))
    zl_out, zu_out, y_out = np.zeros(len(g.hh)), np.zeros(len(g.hh)), np.zeros((B0, m))
    var_ids = np.arange(len(g.hh))  # position of each current variable in the original group
    res = {"merit": np.full(B0, np.inf), "iters": np.zeros(B0, int), "best_it": np.zeros(B0, int),
           "rd": np.full(B0, np.inf), "optimal": np.zeros(B0, bool)}
    pos = np.arange(B0)  # position of each current household in the original group

    ops = _Ops(g)
    fin = g.fin
    span = np.where(fin > 0, g.ub - g.lb, np.inf)
    kind = "dense" if g.Zt is None else "lowrank"
    x0, mu0 = _ROBUST["start"] if robust else _START[kind]
    refine = _ROBUST["refine"] if robust else _REFINE[kind]
    x = g.lb + np.minimum(0.5 * span, x0)
    s = np.where(g.rv > 0, np.maximum(g.h - ops.G(x), 1e-2), 1.0)
    zl = mu0 / (x - g.lb)
    zu = fin * mu0 / np.where(fin > 0, g.ub - x, 1.0)
    y = g.rv * mu0 / s
    if start is not None:
        x, s, zl, zu, y = _warm(g, ops, start, (x, s, zl, zu, y))
    tol_d, tol_gap = _DUAL_TOL * tolerance, _GAP_TOL * tolerance
    best_x, best_zl, best_zu, best_y = x.copy(), zl.copy(), zu.copy(), y.copy()
    best_merit = np.full(B0, np.inf)
    eye_m = np.eye(m)

    def n_comp_of(gg):
        return np.bincount(gg.hh, minlength=gg.B) * 1.0 + np.add.reduceat(gg.fin, gg.start) + gg.rv.sum(1)

    n_comp = n_comp_of(g)
    live = np.ones(B0, bool)
    recentre = None if robust or _RECENTRE[kind] is None else \
        ((np.ones(B0, bool) if start is None else ~start[-1])  # the households starting cold
         & (np.bincount(g.hh, minlength=B0) >= _RECENTRE_MIN_VARS))
    if recentre is not None and not recentre.any():
        recentre = None
    for it in range(MAX_ITER + 1):
        tl = x - g.lb
        tu = fin * (g.ub - x) + (1.0 - fin)
        rd, rp = _residuals(g, ops, (x, s, zl, zu, y))
        comp = ops.segsum(tl * zl + tu * zu) + np.sum(s * y * g.rv, axis=1)
        mu = comp / n_comp
        rd_max = np.maximum.reduceat(np.abs(rd), g.start)
        rp_max = np.max(np.abs(rp), axis=1)
        merit = np.maximum(np.maximum(rd_max / tol_d, rp_max / tolerance), comp / tol_gap)
        better = live & (merit < best_merit)
        if better.any():
            sel = better[g.hh]
            for best, now in ((best_x, x), (best_zl, zl), (best_zu, zu)):
                np.copyto(best, now, where=sel)  # no gather and scatter of the masked entries
            best_y[better] = y[better]
            best_merit[better] = merit[better]
            res["best_it"][pos[better]] = it
            res["rd"][pos[better]] = rd_max[better]
        done = live & (merit <= 1.0)
        # Rounding has taken over (the Newton systems of a nearly solved problem are very
        # ill-conditioned): stop and keep the best iterate.
        stop = live & (done | ((merit > 1e3 * best_merit) & (it >= _STALL_FROM)) | (it == MAX_ITER)
                       | ~np.isfinite(merit))  # an iterate gone non-finite (at a bound in rounding)
        if stop.any():
            sel = stop[g.hh]
            x_out[var_ids[sel]] = best_x[sel]
            zl_out[var_ids[sel]], zu_out[var_ids[sel]] = best_zl[sel], best_zu[sel]
            y_out[pos[stop]] = best_y[stop]
            res["merit"][pos[stop]] = best_merit[stop]
            res["iters"][pos[stop]] = it
            res["optimal"][pos[done]] = True
            live &= ~stop
            if not live.any():
                break
            if live.sum() < 0.8 * len(live):  # drop finished households from the arrays
                g, vm = g.take(live)
                ops = _Ops(g)
                fin = g.fin
                x, zl, zu, best_x, var_ids = x[vm], zl[vm], zu[vm], best_x[vm], var_ids[vm]
                best_zl, best_zu, best_y = best_zl[vm], best_zu[vm], best_y[live]
                tl, tu, rd = tl[vm], tu[vm], rd[vm]
                s, y, rp, comp, mu, best_merit, pos = s[live], y[live], rp[live], comp[live], mu[live], best_merit[live], pos[live]
                n_comp = n_comp[live]
                live = np.ones(g.B, bool)
        # A small primal regularization keeps K^-1 bounded where the problem is degenerate
        # (several free trades moving one security): the residuals, always computed exactly,
        # decide convergence; iterative refinement corrects the step.
        E_true = g.q2 + zl / tl + zu / tu
        E = E_true + _REG
        fac, M, PMs, schur = ops.factor(E)
        Mt = np.swapaxes(M, 1, 2)
        Wrow = np.where(g.rv > 0, s / np.where(g.rv > 0, y, 1.0), 1.0)
        schur = schur + Wrow[:, :, None] * eye_m
        schur = np.where((g.rv[:, :, None] * g.rv[:, None, :] > 0) | (eye_m[None] > 0), schur, 0.0)
        schur_inv = _inv(schur)
        Einv = fac[0]

        def reduced(r1, r2):
            er = Einv * r1
            zz = ops.solve_sec(fac, ops.A(er))
            Pzz = ops.P(zz)
            gk = ops.G(er) - (Mt @ Pzz[:, :, None])[:, :, 0]  # G K^-1 r1
            dy = g.rv * (schur_inv @ (gk - r2)[:, :, None])[:, :, 0]
            # dx = K^-1 (r1 - G' dy)
            back = Pzz - (PMs @ dy[:, :, None])[:, :, 0]
            dx = Einv * (r1 - ops.Gt(dy)) - Einv * ops.At(back)
            return dx, dy

        def direction(rl, ru, rs, refine):
            r1 = -rd + rl / tl - ru / tu
            r2 = -rp - rs / np.where(g.rv > 0, y, 1.0) * g.rv
            dx, dy = reduced(r1, r2)
            for _ in range(refine):  # iterative refinement against the unregularized system
                e1 = r1 - (E_true * dx + ops.At(ops.P(ops.A(dx))) + ops.Gt(dy))
                e2 = g.rv * (r2 - (ops.G(dx) - Wrow * dy))
                cx, cy = reduced(e1, e2)
                dx, dy = dx + cx, dy + cy
            dzl = (rl - zl * dx) / tl
            dzu = (ru + zu * dx) / tu
            ds = g.rv * (rs - s * dy) / np.where(g.rv > 0, y, 1.0)
            return dx, dy, dzl, dzu, ds

        zu1 = zu + (1.0 - fin)  # zu, 1 where there is no upper bound (its dzu is 0)

        def step(dx, dy, dzl, dzu, ds):
            # The largest step keeping every bound slack and dual >= 0, as 1 / the fastest rate
            # at which any of them shrinks (one division per vector; fmax skips NaN rates as the
            # ratios did).
            rate = np.fmax(np.fmax(-dx / tl, dx * fin / tu), np.fmax(-dzl / zl, -dzu / zu1))
            top = np.fmax.reduceat(rate, g.start)
            rows = np.where(g.rv > 0, np.fmax(-ds / s, -dy / np.where(g.rv > 0, y, 1.0)), 0.0)
            top = np.fmax(top, np.max(rows, axis=1))
            return np.divide(1.0, top, out=np.full(top.shape, np.inf), where=top > 0)

        # predictor
        # The predictor only sets the centering: no refinement (the corrector's step is taken).
        aff = direction(-tl * zl, -tu * zu, -s * y * g.rv, 0)
        dx, dy, dzl, dzu, ds = aff
        if recentre is not None:  # the first iteration only
            new = _recentre(g, ops, recentre[pos] & live, (x, s, zl, zu, y), aff, _RECENTRE[kind])
            # kept where it is no further from feasible than the start (the affine step past
            # the bounds, clipped, can leave the rows much further off: 1 of 101 of the 10k
            # book's third bucket then failed)
            ok = _infeasibility(g, ops, new, tol_d, tolerance) <= np.maximum(rd_max / tol_d, rp_max / tolerance)
            x, s, zl, zu, y = (np.where(ok[g.hh], a, b) if a.ndim == 1 else np.where(ok[:, None], a, b)
                               for a, b in zip(new, (x, s, zl, zu, y)))
            recentre = None
            continue
        al = np.minimum(1.0, step(*aff))
        alh = al[g.hh]
        comp_aff = (ops.segsum((tl + alh * dx) * (zl + alh * dzl) + (tu - alh * dx) * (zu + alh * dzu))
                    + np.sum(g.rv * (s + al[:, None] * ds) * (y + al[:, None] * dy), axis=1))
        sigma = np.clip((comp_aff / np.maximum(comp, 1e-300)) ** 3, 0.0, 1.0)
        smu = sigma * mu
        smh = smu[g.hh]
        # corrector
        rl = smh - tl * zl - dx * dzl
        ru = fin * (smh - tu * zu + dx * dzu)
        rs = g.rv * (smu[:, None] - s * y - ds * dy)
        dx, dy, dzl, dzu, ds = direction(rl, ru, rs, refine)
        # One step length for primal and dual: the dual residual of a QP depends on x.
        al = np.minimum(1.0, _STEP * step(dx, dy, dzl, dzu, ds))
        al = np.where(live, al, 0.0)
        alh = al[g.hh]
        x = x + alh * dx
        zl = zl + alh * dzl
        zu = zu + alh * dzu
        s = np.where(g.rv > 0, s + al[:, None] * ds, 1.0)
        y = g.rv * (y + al[:, None] * dy)
    return (x_out, zl_out, zu_out, y_out), res


def _recentre(g: _Group, ops: _Ops, which: np.ndarray, point, aff, params):
    """Mehrotra's starting point, for the households ``which`` (B,): the full affine step from
    ``point``, its negative slacks and duals set to 0, then every slack (x from its bounds,
    row slacks) shifted up by ``shift * (t'z) / sum(z)`` and every dual by
    ``shift * (t'z) / sum(t)`` (plus ``floor``, units of V), per household; x kept at least
    that shift inside its bounds (at most half its range). The others keep ``point``."""
    shift, floor = params
    x, s, zl, zu, y = point
    dx, dy, dzl, dzu, ds = aff
    fin, rv = g.fin, g.rv
    xa = x + dx
    tl = np.maximum(xa - g.lb, 0.0)
    tu = fin * np.maximum(g.ub - xa, 0.0)
    zla = np.maximum(zl + dzl, 0.0)
    zua = fin * np.maximum(zu + dzu, 0.0)
    sa = rv * np.maximum(s + ds, 0.0)
    ya = rv * np.maximum(y + dy, 0.0)
    tz = ops.segsum(tl * zla + tu * zua) + np.sum(sa * ya, axis=1)
    dt = shift * tz / np.maximum(ops.segsum(zla + zua) + np.sum(ya, axis=1), 1e-300) + floor
    dz = shift * tz / np.maximum(ops.segsum(tl + tu) + np.sum(sa, axis=1), 1e-300) + floor
    span = np.where(fin > 0, g.ub - g.lb, np.inf)
    theta = np.minimum(0.5 * span, dt[g.hh])
    xn = np.clip(xa, g.lb + theta, np.where(fin > 0, g.ub - theta, np.inf))
    wv, wb = which[g.hh], which[:, None]
    return (np.where(wv, xn, x), np.where(wb, np.where(rv > 0, sa + dt[:, None], 1.0), s),
            np.where(wv, zla + dz[g.hh], zl), np.where(wv, fin * (zua + dz[g.hh]), zu),
            np.where(wb, rv * (ya + dz[:, None]), y))


def _residuals(g: _Group, ops: _Ops, point) -> tuple[np.ndarray, np.ndarray]:
    """The dual residual (Nt,) and the row residual (B, m) at ``point`` (x, s, zl, zu, y)."""
    x, s, zl, zu, y = point
    rd = g.c + g.q2 * x + ops.At(ops.P(g.d0 + ops.A(x))) + ops.Gt(y) - zl + zu
    return rd, g.rv * (ops.G(x) + s - g.h)


def _infeasibility(g: _Group, ops: _Ops, point, tol_d: float, tol: float) -> np.ndarray:
    """Per household, max(dual residual / tol_d, row residual / tol) at ``point``."""
    rd, rp = _residuals(g, ops, point)
    return np.maximum(np.maximum.reduceat(np.abs(rd), g.start) / tol_d, np.max(np.abs(rp), axis=1) / tol)


def _warm(g: _Group, ops: _Ops, start, cold):
    """The starting point of households that have an earlier iterate of a problem with the
    same variables (a re-solve with some of them fixed, or yesterday's): its x pushed inside
    the bounds by a small margin, every complementarity product at least ``_WARM_MU``; the
    others keep the cold start ``cold``."""
    wx, wzl, wzu, wy, warm = start
    x, s, zl, zu, y = cold
    fin = g.fin
    span = np.where(fin > 0, g.ub - g.lb, np.inf)
    theta = np.minimum(0.5 * span, _WARM_SHIFT)
    xw = np.clip(wx, g.lb + theta, np.where(fin > 0, g.ub - theta, np.inf))
    tl = xw - g.lb
    tu = np.where(fin > 0, g.ub - xw, 1.0)
    zlw = np.maximum(wzl, _WARM_MU / tl)
    zuw = fin * np.maximum(wzu, _WARM_MU / tu)
    sw = np.where(g.rv > 0, np.maximum(g.h - ops.G(xw), _WARM_ROW), 1.0)
    yw = g.rv * np.maximum(wy, _WARM_MU / sw)
    wv = warm[g.hh]
    wb = warm[:, None]
    return (np.where(wv, xw, x), np.where(wb, sw, s), np.where(wv, zlw, zl), np.where(wv, zuw, zu),
            np.where(wb, yw, y))


def _chunks(problems, structs, ids):
    """Groups of similar size: sorted by (rank, securities), cut where the padded blocks would
    grow by more than a quarter or exceed the cell budget."""
    dense = {i: _is_dense(structs[i]) for i in ids}
    order = sorted(ids, key=lambda i: (dense[i], structs[i][1].shape[1], len(problems[i].securities)))
    out, cur = [], []
    for i in order:
        n, r = len(problems[i].securities), structs[i][1].shape[1]
        if cur:
            n0 = len(problems[cur[0]].securities)
            r0 = structs[cur[0]][1].shape[1]
            if (dense[i] != dense[cur[0]] or n > 1.25 * n0 + 8 or r > 1.25 * r0 + 8
                    or (len(cur) + 1) * n * r > _GROUP_CELLS["dense" if dense[i] else "lowrank"]):
                out.append(cur)
                cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def solve_batch(problems: list[HouseholdProblem], tolerance: float = 1e-8,
                starts: list[WarmStart | None] | None = None, *, robust: bool = False,
                kernel: str | None = None) -> list[SolveResult]:
    """Solve every problem of the batch together; one :class:`SolveResult` per problem, each
    with its final iterate as ``start``. ``starts[i]``, where given, is a warm start for
    problem i: the final iterate of a problem with the same variables. ``kernel``: how the
    households iterate, ``"compiled"`` (:mod:`.fastkernel`) or ``"numpy"`` (the batched
    iterations here); by default :data:`KERNEL`."""
    if not problems:
        return []
    if starts is not None and len(starts) != len(problems):
        raise ValueError(f"{len(starts)} warm starts for {len(problems)} problems")
    t0 = time.perf_counter()
    xs = [np.where(p.ub > p.lb + 1e-15, 0.0, p.lb) for p in problems]
    zls = [np.zeros(len(p.lb)) for p in problems]
    zus = [np.zeros(len(p.lb)) for p in problems]
    ys = [np.zeros(p.n_accounts + 1) for p in problems]
    merit = np.zeros(len(problems))
    iters = np.zeros(len(problems), int)
    best_it = np.zeros(len(problems), int)
    rd = np.zeros(len(problems))
    optimal = np.ones(len(problems), bool)  # a problem with nothing free is solved
    todo = [i for i, p in enumerate(problems) if np.any(p.ub > p.lb + 1e-15)]
    dense = np.zeros(len(problems), bool)
    compiled, groups = [], []
    if _use_compiled(kernel):
        compiled = todo
        items = [_kernel_item(problems[i], None if starts is None else starts[i], robust) for i in compiled]
        dense[compiled] = [item["dense"] for item in items]
    else:
        structs = [p.derived_risk("fastsolve.risk_structure", risk_structure) for p in problems]
        groups = [_group(problems, structs, ids) for ids in _chunks(problems, structs, todo)]
        dense[:] = [_is_dense(st) for st in structs]
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    warmed = np.zeros(len(problems), bool)
    if compiled:
        for i, item, (x, zl, zu, y, mr, it, bi, r, opt) in zip(
                compiled, items, fastkernel.solve_households(items, tolerance, _kernel_params())):
            fi = item["free"]
            xs[i][fi], zls[i][fi], zus[i][fi] = x, zl, zu
            ys[i][:len(y)] = y
            merit[i], iters[i], best_it[i], rd[i], optimal[i], warmed[i] = mr, it, bi, r, opt, item["warm"]
    for g, free_idx in groups:
        start = _group_start(g, free_idx, problems, starts)
        if start is not None:
            warmed[g.ids] = start[-1]
        # A household whose iterate reaches a bound in rounding divides by zero: it stops at the
        # next iterate and keeps its best one (see _solve_group); numpy need not warn about it.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            (x, zl, zu, y), res = _solve_group(g, tolerance, start, robust)
        for b, i in enumerate(g.ids):
            sl = slice(g.start[b], g.start[b] + len(free_idx[b]))
            xs[i][free_idx[b]], zls[i][free_idx[b]], zus[i][free_idx[b]] = x[sl], zl[sl], zu[sl]
            ys[i][:] = y[b, :len(ys[i])]
        merit[g.ids], iters[g.ids], best_it[g.ids] = res["merit"], res["iters"], res["best_it"]
        rd[g.ids], optimal[g.ids] = res["rd"], res["optimal"]
    solve_s = time.perf_counter() - t1
    out = []
    B = len(problems)
    for i, p in enumerate(problems):
        x = xs[i]
        if optimal[i]:
            st = SolveStatus.OPTIMAL
        else:
            # close enough for use, flagged, when the best iterate is within 100x the tolerances
            st = SolveStatus.OPTIMAL_INACCURATE if merit[i] <= _INACCURATE else SolveStatus.FAILED
        primal = max(p.violation(x).values())
        start = WarmStart(x=x, zl=zls[i], zu=zus[i], y=ys[i])
        x = np.clip(x, p.lb, np.where(np.isfinite(p.ub), p.ub, np.inf))
        out.append(SolveResult(solver=SOLVER_NAME, status=st, x=x,
                               objective=p.objective(x) if st.usable else float("nan"),
                               primal_residual=primal, dual_residual=float(rd[i]) if st.usable else float("nan"),
                               iterations=int(best_it[i]), setup_seconds=setup_s / B, solve_seconds=solve_s / B,
                               message=f"{st} after {int(iters[i])} iterations", start=start))
    # A warm start that did not reach an optimum gets a cold one; a small fund household that
    # failed gets the robust settings. The better result is kept, with the time of both.
    again = [i for i, r in enumerate(out) if warmed[i] and r.status != SolveStatus.OPTIMAL]
    if again:
        _keep_better(out, again, solve_batch([problems[i] for i in again], tolerance, kernel=kernel),
                     "cold, after a warm start")
    again = [] if robust else [i for i, r in enumerate(out) if r.status == SolveStatus.FAILED and dense[i]]
    if again:
        _keep_better(out, again, solve_batch([problems[i] for i in again], tolerance, robust=True, kernel=kernel),
                     "robust settings, after")
    return out


def _use_compiled(kernel: str | None) -> bool:
    kernel = kernel or KERNEL
    if kernel not in ("compiled", "numpy"):
        raise ValueError(f"unknown fast-solver kernel {kernel!r}: 'compiled' or 'numpy'")
    if kernel == "compiled" and not fastkernel.AVAILABLE:
        raise RuntimeError("the compiled kernel needs numba, which is not installed")
    return kernel == "compiled"


def _kernel_params() -> tuple:
    """The iteration settings shared by every household, in the order fastkernel._household
    takes them."""
    shift, floor = _RECENTRE["lowrank"] or (0.0, 0.0)
    return (int(MAX_ITER), float(_STEP), float(_REG), float(_WARM_SHIFT), float(_WARM_MU), float(_WARM_ROW),
            float(_DUAL_TOL), float(_GAP_TOL), int(_STALL_FROM), float(shift), float(floor))


def _kernel_item(p: HouseholdProblem, start: WarmStart | None, robust: bool) -> dict:
    """One household's arrays and settings for fastkernel.solve_households: its free variables
    (in their order in p); the risk structure as P = Dp + W Z' with W's blocks [W1 W3], Z's
    [Z1 Z2] (transposed), the hubs and W2's entries (a dense household: Dp = 0, W = P, Z = I
    given as a (0, n) Zct, no hubs, k = n); the rows (cash per account, then the budget row
    where there is one); its warm start (low-rank households only, as _group_start) and its
    kind's start and refinement."""
    free = p.ub > p.lb + 1e-15
    fixed_x = np.where(free, 0.0, p.lb)
    fi = np.flatnonzero(free)
    n, A = len(p.securities), p.n_accounts
    dp, k, hub, w2, Wc, Zct = p.derived_risk("fastsolve._kernel_risk", _kernel_risk)
    dense = Zct.shape[0] == 0
    has_b = math.isfinite(p.budget)
    sign = p.sign
    h = p.cash_rhs - np.bincount(p.account, weights=sign * fixed_x, minlength=A)
    if has_b:
        h = np.append(h, p.budget - float(p.gain @ fixed_x))
    ub = p.ub[fi]
    fin = np.isfinite(ub)
    kind = "dense" if dense else "lowrank"
    x0, mu0 = _ROBUST["start"] if robust else _START[kind]
    item = dict(
        dense=dense, free=fi, sec=p.security[fi], row=p.account[fi], sign=sign[fi].astype(float),
        gb=p.gain[fi].astype(float) if has_b else np.zeros(len(fi)), lb=p.lb[fi].astype(float),
        ub=np.where(fin, ub, 0.0), fin=fin.astype(float), c=p.cost[fi].astype(float), q2=2.0 * p.impact[fi],
        d0=p.w0 - p.target + np.bincount(p.security, weights=sign * fixed_x, minlength=n), Dp=dp,
        Wc=Wc, Zct=Zct, hub=hub, w2=w2, k=k, h=h,
        brow=A if has_b else -1, warm=False, x0=x0, mu0=mu0, refine=_ROBUST["refine"] if robust else _REFINE_COMPILED[kind])
    nv, m = len(fi), len(h)
    item.update(wx=np.zeros(nv), wzl=np.zeros(nv), wzu=np.zeros(nv), wy=np.zeros(m))
    if start is not None and not dense:
        if len(start.x) != len(p.lb) or len(start.y) != A + 1:
            raise ValueError(f"household {p.household_id}: warm start of {len(start.x)} variables and "
                             f"{len(start.y)} rows for a problem of {len(p.lb)} and {A + 1}")
        parts = (start.x[fi], start.zl[fi], start.zu[fi], start.y[:m])
        if all(np.all(np.isfinite(v)) for v in parts):  # else an iterate that went astray: start cold
            item.update(wx=parts[0], wzl=parts[1], wzu=parts[2], wy=parts[3], warm=True)
    item["recentre"] = (not robust and _RECENTRE[kind] is not None and not item["warm"]
                        and nv >= _RECENTRE_MIN_VARS)
    return item


def _kernel_risk(p: HouseholdProblem) -> tuple:
    """The risk structure of ``p`` as the compiled kernel takes it, P = Dp + W Z' with W's
    blocks [W1 W3], Z's [Z1 Z2] (transposed) and W2 = w2 I_E on the hubs: (Dp, k, hubs, w2,
    [W1 W3], [Z1 Z2]') = (lam2 dg, k, E, lam2, lam2 [XC U2], [XC V1]') (risk_structure's W and
    Z without their unit blocks, made from the parts directly); a dense household's
    (0, n, no hubs, -, P, a (0, n) Zct: Z = I). Once per problem and the problems restricted
    from it (derived_risk)."""
    parts = _risk_parts(p)
    n = len(p.securities)
    if parts[2] is None:
        return np.zeros(n), n, np.zeros(0, np.int64), np.zeros(0), _dense_P(p, parts), np.zeros((0, n))
    lam2, XC, dg, E, V1 = parts
    k, e = XC.shape[1], len(E)
    Wc = np.empty((n, k + e))
    np.multiply(XC, lam2, out=Wc[:, :k])
    np.multiply(V1, lam2, out=Wc[:, k:])
    Wc[E, k:] = 0.0  # U2: V1 off the hubs' rows
    Zct = np.empty((k + e, n))
    Zct[:k] = XC.T
    Zct[k:] = V1.T
    return lam2 * dg, k, E.astype(np.int64), np.full(e, lam2), Wc, Zct


def _keep_better(out: list[SolveResult], again: list[int], second: list[SolveResult], how: str) -> None:
    """``out[i]`` for each i of ``again``: the better of it and its second solve, carrying the
    seconds of both (a household's solve time is every attempt's)."""
    for i, r in zip(again, second):
        first = out[i]
        best = dataclasses.replace(r, message=f"{r.message} ({how}: {first.message})") \
            if _RANK[r.status] < _RANK[first.status] else first
        out[i] = dataclasses.replace(best, setup_seconds=first.setup_seconds + r.setup_seconds,
                                     solve_seconds=first.solve_seconds + r.solve_seconds)


_RANK = {SolveStatus.OPTIMAL: 0, SolveStatus.OPTIMAL_INACCURATE: 1, SolveStatus.FAILED: 2, SolveStatus.INFEASIBLE: 2}


def _group_start(g: _Group, free_idx, problems, starts):
    """The warm starts of a group's households in its layout, or None if none has one. Dense
    groups (small fund households, a dozen iterations from a cold start) start cold: from the
    iterate of a restricted problem they took more iterations and failed more often (measured
    on 80 such re-solves: 12 -> 20 iterations, 1 -> 40 failed), the low-rank ones fewer
    (47 direct-index re-solves: 18.6 -> 10 iterations, none failed)."""
    if starts is None or g.Zt is None or all(starts[i] is None for i in g.ids):
        return None
    n_var = len(g.hh)
    x, zl, zu = np.zeros(n_var), np.zeros(n_var), np.zeros(n_var)
    y = np.zeros(g.h.shape)
    warm = np.zeros(g.B, bool)
    for b, i in enumerate(g.ids):
        w = starts[i]
        if w is None:
            continue
        p = problems[i]
        if len(w.x) != len(p.lb) or len(w.y) != p.n_accounts + 1:
            raise ValueError(f"household {p.household_id}: warm start of {len(w.x)} variables and {len(w.y)} rows "
                             f"for a problem of {len(p.lb)} and {p.n_accounts + 1}")
        sl = slice(g.start[b], g.start[b] + len(free_idx[b]))
        parts = (w.x[free_idx[b]], w.zl[free_idx[b]], w.zu[free_idx[b]], w.y)
        if not all(np.all(np.isfinite(v)) for v in parts):
            continue  # an iterate that went astray: start cold
        x[sl], zl[sl], zu[sl], y[b, :len(w.y)] = parts
        warm[b] = True
    return x, zl, zu, y, warm


def warm_up() -> float:
    """Compile the compiled kernel, or load it from numba's cache (``__pycache__`` beside
    fastkernel.py, else the user's cache folder), by solving a one-variable household; returns
    the seconds it took (about 40 to compile, under 1 to load; nothing without numba). A
    process compiles on its first solve anyway: the job's driver calls this before it starts
    any shard, so that the workers of its machine find the cache written, and the container
    image calls it when it is built."""
    t = time.perf_counter()
    if fastkernel.AVAILABLE:
        one = np.ones(1)
        # min -x + x^2 / 2 + x^2 (impact, risk P = 1 + 1 * 1) on [0, 1]: x = 1/3
        item = dict(sec=np.zeros(1, np.int64), row=np.zeros(1, np.int64), sign=one, gb=0 * one, lb=0 * one, ub=one,
                    fin=one, c=-one, q2=one, d0=0 * one, Dp=one, Wc=np.ones((1, 1)), Zct=np.ones((1, 1)),
                    hub=np.zeros(0, np.int64), w2=np.zeros(0), k=1, h=one, brow=-1, warm=False, x0=1e-3, mu0=1e-3,
                    refine=1, recentre=False, wx=0 * one, wzl=0 * one, wzu=0 * one, wy=0 * one)
        (x, *_), = fastkernel.solve_households([item], 1e-8, _kernel_params())
        if abs(x[0] - 1.0 / 3.0) > 1e-6:
            raise RuntimeError(f"the compiled kernel solved its warm-up problem to x = {x[0]!r}, not 1/3")
    return time.perf_counter() - t


def solve_fast(p: HouseholdProblem, tolerance: float = 1e-8) -> SolveResult:
    """One problem (a batch of one): the same signature as the reference solver."""
    return solve_batch([p], tolerance)[0]
