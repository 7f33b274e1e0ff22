"""The batched interior-point solver against the reference (cvxpy + Clarabel) on generated
households of every kind: same objective within max(1e-3 x |reference|, 1e-5 x value)."""
from __future__ import annotations

import numpy as np
import pytest

from rebalancer.book import Book
from rebalancer.fastsolve import risk_structure, solve_batch
from rebalancer.generate import GeneratorSettings, generate_book
from rebalancer.household import split_households
from rebalancer.market import Market
from rebalancer.problem import LookThrough, build_problem
from rebalancer.reference import solve_reference
from rebalancer.schema import HOUSEHOLD_TABLES, REFERENCE_TABLES
from rebalancer.settings import OptimizerSettings


@pytest.fixture(scope="module")
def households(tmp_path_factory):
    """(market, households) of a generated 120-account book."""
    uri = str(tmp_path_factory.mktemp("book"))
    generate_book(GeneratorSettings(accounts=120, seed=21, accounts_per_bucket=120), uri)
    book = Book.open(uri)
    market = Market.from_tables({t.name: book.read(t.name) for t in REFERENCE_TABLES}, book.as_of)
    hhs, _ = split_households(market, {t.name: book.read(t.name, 0) for t in HOUSEHOLD_TABLES})
    return market, hhs


@pytest.fixture(scope="module")
def problems(households):
    market, hhs = households
    return [build_problem(market, h, OptimizerSettings()) for h in hhs]


@pytest.fixture(params=["compiled", "numpy"])
def kernel(request, monkeypatch):
    """Both ways the fast solver iterates: the compiled kernel (fastkernel, the default) and
    the batched numpy iterations (where numba is missing)."""
    from rebalancer import fastsolve
    monkeypatch.setattr(fastsolve, "KERNEL", request.param)
    return request.param


def test_lookthrough_products_from_its_entries_equal_the_dense_ones(problems):
    """L' a and a L from L's entries (sparse households) or its dense matrix (the rest) agree
    with the dense products, and the dense matrix rebuilt from the entries is L."""
    seen = set()
    for p in problems[:60]:
        L, look = p.lookthrough, p.look
        a = np.random.default_rng(p.household_id).normal(size=(3, L.shape[0]))
        assert np.allclose(look.t_dot(a[0]), L.T @ a[0], rtol=1e-12, atol=1e-14)
        assert np.allclose(look.rows_dot(a), a @ L, rtol=1e-12, atol=1e-14)
        assert np.array_equal(LookThrough.of_dense(L).dense, L)
        seen.add(look.sparse)
    assert seen == {True, False}  # both routes ran


def test_risk_structure_is_exact(problems):
    import dataclasses
    big = next(p for p in problems if len(p.securities) >= 100)
    lt = big.lookthrough.copy()
    single = np.flatnonzero(np.count_nonzero(lt, axis=1) == 1)
    # three securities on one risk asset (share classes): coupled off the diagonal outside the
    # ETFs, so two of them must join the hubs
    lt[single[:3]] = 0.0
    lt[single[:3], np.argmax(big.lookthrough[single[0]] != 0)] = [1.0, 0.5, 2.0]
    shared = dataclasses.replace(big, look=LookThrough.of_dense(lt))
    for p in [*problems[:10], big, shared]:
        Dp, W, Z = risk_structure(p)
        P = 2 * p.risk_aversion * (p.exposures @ p.factor_cov @ p.exposures.T
                                   + p.lookthrough @ np.diag(p.specific_var) @ p.lookthrough.T)
        assert np.abs(np.diag(Dp) + W @ Z.T - P).max() <= 1e-10 * max(1.0, np.abs(P).max())
    assert risk_structure(shared)[1].shape[1] == risk_structure(big)[1].shape[1] + 4  # rank k + 2 |E|


def test_the_compiled_kernels_risk_form_is_the_risk_matrix(problems):
    """fastsolve._kernel_risk (Dp, k, hubs, w2, [W1 W3], [Z1 Z2]'), made from the risk parts
    directly, is P = Dp + W1 Z1' + W2 Z2' + W3 Z3' with W2 = w2 I_E and Z3 = I_E on the hubs; a
    dense household's is P itself."""
    from rebalancer.fastsolve import _kernel_risk
    seen = set()
    for p in problems:
        dp, k, hub, w2, Wc, Zct = _kernel_risk(p)
        n = len(p.securities)
        P = 2 * p.risk_aversion * (p.exposures @ p.factor_cov @ p.exposures.T
                                   + p.lookthrough @ np.diag(p.specific_var) @ p.lookthrough.T)
        if Zct.shape[0] == 0:
            seen.add("dense")
            got = Wc
            assert not np.any(dp) and len(hub) == 0
        else:
            seen.add("lowrank")
            e = len(hub)
            I_E = np.zeros((n, e))
            I_E[hub, np.arange(e)] = 1.0
            got = (np.diag(dp) + Wc[:, :k] @ Zct[:k] + (I_E * w2) @ Zct[k:] + Wc[:, k:] @ I_E.T)
        assert np.abs(got - P).max() <= 1e-10 * max(1.0, np.abs(P).max()), p.household_id
    assert seen == {"dense", "lowrank"}


def test_batched_solver_agrees_with_the_reference(problems, kernel):
    small = [p for p in problems if len(p.securities) < 100]
    big = [p for p in problems if len(p.securities) >= 100]
    assert small and big  # fund households and direct-indexed ones
    usable = 0
    for group in (small, big):
        for p, f in zip(group, solve_batch(group)):
            r = solve_reference(p)
            if not f.status.usable:
                continue
            usable += 1
            assert f.primal_residual <= 1e-7
            assert abs(f.objective - r.objective) <= max(1e-3 * abs(r.objective), 1e-5), p.household_id
    assert usable >= 0.95 * len(problems)


def test_the_low_rank_newton_solves_are_exact(problems):
    """P u and (I + S P)^-1 u of a low-rank group (the Woodbury core reduced to order k + |E|,
    fastsolve._Ops._lowrank_core) against dense algebra, households of different hub counts
    padded in one group."""
    from rebalancer import fastsolve as F
    lowrank = {}  # one household of each rank: direct-indexed ones and fund households with ETFs
    for p in problems:
        st = F.risk_structure(p)
        if not F._is_dense(st):
            lowrank.setdefault(st[1].shape[1], (p, st))
    assert len(lowrank) >= 2
    big, structs = zip(*lowrank.values())
    g, _ = F._group(big, structs, list(range(len(big))))
    ops = F._Ops(g)
    rng = np.random.default_rng(3)
    E = rng.uniform(1e-3, 1e3, len(g.hh))
    fac = ops.factor(E)[0]
    u = rng.normal(size=(g.B, ops.n))
    Pu, sol = ops.P(u), ops.solve_sec(fac, u)
    S = np.bincount(g.fsec, weights=1.0 / E, minlength=g.B * ops.n).reshape(g.B, ops.n)
    for b, (dp, w, z) in enumerate(structs):
        n = len(dp)
        P = np.diag(dp) + w @ z.T
        assert np.allclose(Pu[b, :n], P @ u[b, :n], rtol=1e-12, atol=1e-12 * np.abs(P).max())
        want = np.linalg.solve(np.eye(n) + S[b, :n, None] * P, u[b, :n])
        assert np.abs(sol[b, :n] - want).max() <= 1e-9 * np.abs(want).max()


def test_the_recentred_start_is_strictly_inside_and_only_where_asked(problems):
    """Mehrotra's start (fastsolve._recentre) from any affine direction, however far past the
    bounds: every bound slack, row slack and dual strictly positive; households not asked
    keep their point exactly."""
    from rebalancer import fastsolve as F
    big = [p for p in problems if len(p.securities) >= 100][:3]
    g, _ = F._group(big, [F.risk_structure(p) for p in big], list(range(len(big))))
    ops = F._Ops(g)
    span = np.where(g.fin > 0, g.ub - g.lb, np.inf)
    x = g.lb + np.minimum(0.5 * span, 1e-3)
    s = np.where(g.rv > 0, 1e-2, 1.0)
    point = (x, s, 1e-3 / (x - g.lb), g.fin * 1e-3 / np.where(g.fin > 0, g.ub - x, 1.0), g.rv * 1e-1)
    rng = np.random.default_rng(5)
    which = np.array([True, False, True])
    for scale in (1e-4, 1.0, 1e3):
        aff = tuple(rng.normal(scale=scale, size=v.shape) for v in point)
        xn, sn, zln, zun, yn = F._recentre(g, ops, which, point, aff, F._RECENTRE["lowrank"])
        on, rows = which[g.hh], g.rv > 0
        assert np.all(xn[on] > g.lb[on]) and np.all(((xn < g.ub) | (g.fin == 0))[on])
        assert np.all(zln[on] > 0) and np.all(zun[on & (g.fin > 0)] > 0) and not np.any(zun[g.fin == 0])
        assert np.all(sn[which][rows[which]] > 0) and np.all(yn[which][rows[which]] > 0)
        for new, old in zip((xn, zln, zun), point[:1] + point[2:4]):
            assert np.array_equal(new[~on], old[~on])
        assert np.array_equal(sn[~which], s[~which]) and np.array_equal(yn[~which], point[4][~which])


def _resolves(problems):
    """The wash-sale re-solves the job makes: each problem whose first solve both buys and
    sells a group at a loss, with the directions fixed, and that first solve."""
    from rebalancer.optimize import _WashGroups
    out = []
    for p, r in zip(problems, solve_batch(problems)):
        wg = _WashGroups(p)
        if r.status.usable and wg.conflicts(r.x):
            out.append((p.restrict(wg.mode_mask(wg.directions(p, r.x))), r))
    return out


def test_warm_restart_agrees_with_a_cold_one_in_fewer_iterations(problems, kernel):
    big = [p for p in problems if len(p.securities) >= 100]
    pairs = _resolves(big)
    assert len(pairs) >= 5
    qs = [q for q, _ in pairs]
    cold = solve_batch(qs)
    warm = solve_batch(qs, starts=[r.start for _, r in pairs])
    for q, c, w in zip(qs, cold, warm):
        assert w.status.usable, q.household_id
        assert w.primal_residual <= 1e-7
        if c.status.usable:
            assert abs(w.objective - c.objective) <= max(1e-3 * abs(c.objective), 1e-5), q.household_id
    # 0.83 measured with the cash factor (OptimizerSettings.cash_active_vol: one more dense
    # factor, 177 warm iterations against 212 cold on these households); 0.75 before it.
    assert sum(w.iterations for w in warm) <= 0.85 * sum(c.iterations for c in cold)


def test_a_bad_warm_start_costs_time_not_the_answer(problems, kernel):
    from rebalancer.solution import WarmStart
    big = [p for p in problems if len(p.securities) >= 100][:4]
    cold = solve_batch(big)
    n = [len(p.lb) for p in big]
    bad = [WarmStart(x=np.full(k, np.nan), zl=np.zeros(k), zu=np.zeros(k), y=np.zeros(p.n_accounts + 1))
           for k, p in zip(n, big[:2])]
    # far from the solution: every trade at its upper bound (or 1), huge duals
    bad += [WarmStart(x=np.where(np.isfinite(p.ub), p.ub, 1.0), zl=np.full(k, 1e6), zu=np.full(k, 1e6),
                      y=np.full(p.n_accounts + 1, 1e6)) for k, p in zip(n[2:], big[2:])]
    for p, c, w in zip(big, cold, solve_batch(big, starts=bad)):
        assert w.status.usable, p.household_id
        assert abs(w.objective - c.objective) <= max(1e-3 * abs(c.objective), 1e-5), p.household_id
    p = big[0]
    wrong = WarmStart(x=np.zeros(3), zl=np.zeros(3), zu=np.zeros(3), y=np.zeros(2))
    with pytest.raises(ValueError, match=f"household {p.household_id}: warm start of 3 variables"):
        solve_batch([p], starts=[wrong])
    with pytest.raises(ValueError, match="1 warm starts for 2 problems"):
        solve_batch(big[:2], starts=[None])


def test_the_job_restarts_a_resolve_where_its_first_solve_ended(households):
    """rebalance_households hands the solver each wash-sale re-solve with the first solve's
    final iterate, and every first solve without one."""
    from rebalancer.optimize import rebalance_households
    from rebalancer.solvers import fast_with_fallback
    market, hhs = households
    seen = []

    def recording(ps, tol, starts):
        seen.append([(p.household_id, s is not None) for p, s in zip(ps, starts)])
        return fast_with_fallback(ps, tol, starts)

    res = rebalance_households(market, hhs, OptimizerSettings(), recording)
    assert not any(isinstance(r, Exception) for r in res)
    assert all(not warm for _, warm in seen[0])  # first solves: nothing to start from
    resolves = [hid for batch in seen[1:] for hid, warm in batch if warm]
    assert resolves, "no re-solve got a warm start"
    assert sum(r.solves for r in res) == sum(len(b) for b in seen)


def _stall(kernel: str, monkeypatch, robust_too: bool = False) -> list:
    """Make ``kernel``'s solves end as if every household stalled far from its optimum (not
    optimal, merit 1e6): those with the plain settings, and with ``robust_too`` the robust ones
    too. Returns the list it fills with whether each household solved had the robust settings."""
    from rebalancer import fastkernel, fastsolve
    calls = []
    if kernel == "numpy":
        plain = fastsolve._solve_group

        def stalling(g, tolerance, start=None, robust=False):
            calls.append(robust)
            out, res = plain(g, tolerance, start, robust)
            if robust_too or not robust:
                res["optimal"][:] = False
                res["merit"][:] = 1e6
            return out, res

        monkeypatch.setattr(fastsolve, "_solve_group", stalling)
    else:
        plain = fastkernel.solve_households

        def stalling(items, tolerance, params):
            robust = [it["refine"] == fastsolve._ROBUST["refine"] and it["x0"] == fastsolve._ROBUST["start"][0]
                      for it in items]
            calls.extend(robust)
            return [o if r and not robust_too else (*o[:4], 1e6, *o[5:8], False)
                    for o, r in zip(plain(items, tolerance, params), robust)]

        monkeypatch.setattr(fastkernel, "solve_households", stalling)
    return calls


def test_a_failed_fund_household_is_solved_again_with_the_robust_settings(problems, kernel, monkeypatch):
    """A small fund household that fails gets a second solve with more refinement (the job's
    fallback to the reference is the last resort); its result agrees with the reference."""
    small = [p for p in problems if len(p.securities) < 100][:5]
    with monkeypatch.context() as m:
        calls = _stall(kernel, m)
        out = solve_batch(small)
    assert True in calls and False in calls
    for p, r in zip(small, out):
        assert r.status.usable and "robust settings" in r.message, (p.household_id, r.message)
        ref = solve_reference(p)
        assert abs(r.objective - ref.objective) <= max(1e-3 * abs(ref.objective), 1e-5), p.household_id
    # a household that fails with the robust settings too stays failed: the job's fallback decides
    _stall(kernel, monkeypatch, robust_too=True)
    assert all(r.status == "failed" for r in solve_batch(small[:2]))


def test_the_compiled_kernel_iterates_as_the_numpy_one(problems):
    """The same method: direct-indexed households take the same iterations to the same optima
    (their arithmetic differs only in order); fund households, whose flat optimal faces make
    the last iterations sensitive to rounding, reach the same optima, and no fewer of them
    optimal (the compiled kernel solves by LU factors where numpy inverts)."""
    big = [p for p in problems if len(p.securities) >= 100]
    small = [p for p in problems if len(p.securities) < 100]
    for group in (big, small):
        c, n = solve_batch(group, kernel="compiled"), solve_batch(group, kernel="numpy")
        ok = 0
        for p, a, b in zip(group, c, n):
            if a.status.usable and b.status.usable:
                ok += 1
                assert abs(a.objective - b.objective) <= max(1e-3 * abs(b.objective), 1e-5), p.household_id
        assert ok >= 0.95 * len(group)
        assert sum(a.status == "optimal" for a in c) >= sum(b.status == "optimal" for b in n)
        if group is big:
            same = sum(a.message == b.message for a, b in zip(c, n))
            assert same >= 0.9 * len(group), [(a.message, b.message) for a, b in zip(c, n)]
    with pytest.raises(ValueError, match="unknown fast-solver kernel 'fortran'"):
        solve_batch(big[:1], kernel="fortran")


def test_the_kernels_lu_factors_solve_and_refuse_singular_matrices():
    from rebalancer.fastkernel import _lu, _lu_solve
    rng = np.random.default_rng(3)
    for n in (1, 5, 50):
        a = rng.normal(size=(n, n))
        a[0] *= 1e-3  # a small leading pivot: pivoting must swap
        b = rng.normal(size=(n, 4))
        lu, piv, x = a.copy(), np.zeros(n, np.int64), b.copy()
        assert _lu(lu, piv)
        _lu_solve(lu, piv, x)
        assert np.abs(a @ x - b).max() <= 1e-10 * np.abs(b).max() * np.linalg.cond(a)
    for bad in (np.zeros((3, 3)), np.array([[1.0, 2.0], [2.0, 4.0]]), np.full((2, 2), np.nan), np.diag([np.inf, 1.0])):
        assert not _lu(bad.copy(), np.zeros(len(bad), np.int64))


def test_one_broken_household_does_not_take_the_batch_down(problems, kernel):
    """A household whose Newton matrices go singular or non-finite ends ``failed`` (the job
    then solves it with the reference); the others of its batch are solved as without it."""
    import dataclasses

    from rebalancer.fastsolve import _inv
    good = np.eye(3) * 2.0
    stack = np.stack([good, np.zeros((3, 3)), np.full((3, 3), np.nan)])
    out = _inv(stack)
    assert np.allclose(out[0], np.eye(3) / 2.0)
    assert np.array_equal(out[1], np.zeros((3, 3)))  # the pseudo-inverse of 0
    assert np.isnan(out[2]).all()
    small = [p for p in problems if len(p.securities) < 100][:6]
    broken = dataclasses.replace(small[2], cost=np.full(len(small[2].cost), np.nan))
    alone = solve_batch(small[:2] + small[3:])
    together = solve_batch(small[:2] + [broken] + small[3:])
    assert together[2].status == "failed"
    for a, b in zip(alone, together[:2] + together[3:]):
        assert a.status == b.status and abs(a.objective - b.objective) <= 1e-9


def test_a_resolve_reuses_the_risk_structure_and_only_of_the_same_risk_model(problems):
    import dataclasses
    p = next(p for p in problems if len(p.securities) >= 100)
    made = []

    def make(q):
        made.append(q)
        return risk_structure(q)

    s1 = p.derived_risk("test", make)
    q = p.restrict(np.zeros(p.n_vars, bool)).with_budget(0.01)
    assert q.derived_risk("test", make) is s1 and len(made) == 1
    other = dataclasses.replace(p, specific_var=2.0 * p.specific_var)  # another risk model
    s2 = other.derived_risk("test", make)
    assert len(made) == 2 and not np.allclose(s2[1], s1[1])
    # other shares p's cache (replace copies it) and took its entry: p recomputes its own
    assert np.array_equal(p.derived_risk("test", make)[1], s1[1]) and len(made) == 3
