"""Factor risk model: exposures X (n x k), factor covariance F (k x k), specific variances d.

Security covariance is ``X F X' + diag(d)`` (annualised). Estimated the way fundamental
models are (Barra-style; Menchero, Orr & Wang, "The Barra US Equity Model (USE4)", 2011):

1. exposures are known characteristics: one GICS sector dummy per stock, two style
   z-scores (12-1 month momentum, 1-year volatility), and for non-equity funds their asset
   class (international, emerging), duration (rates), spread duration (credit), muni and
   inflation loadings;
2. factor returns are daily cross-sectional least-squares regressions of security returns on
   those exposures, over a window (default 2 years);
3. F is the exponentially weighted covariance of the factor returns (half-life 126 days), d the
   exponentially weighted mean square of each security's residual, both times 252;
4. index ETFs and the active equity fund are not regressed: their exposures are the weighted
   exposures of their index constituents (look-through), and their specific variance is that
   of their own return net of the look-through factor return.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .schema import FactorKind
from .universe import Universe, fund_characteristics

__all__ = ["RiskModel", "estimate_risk_model"]

SPECIFIC_VARIANCE_FLOOR = 0.005 ** 2  # 0.5% annual volatility: no security is riskless
_ASSET_FACTORS = ("intl_developed", "emerging_markets", "rates", "credit", "muni", "inflation")


@dataclass(frozen=True)
class RiskModel:
    """factor_names, factor_kinds : k names and kinds.
    exposures : ndarray (n, k); factor_cov : ndarray (k, k), annual; specific_var : ndarray (n,), annual.
    Row i is security_id i.
    """
    factor_names: tuple[str, ...]
    factor_kinds: tuple[str, ...]
    exposures: np.ndarray
    factor_cov: np.ndarray
    specific_var: np.ndarray

    def __post_init__(self):
        n, k = self.exposures.shape
        if self.factor_cov.shape != (k, k) or self.specific_var.shape != (n,) or len(self.factor_names) != k:
            raise ValueError(f"risk model shapes disagree: X {self.exposures.shape}, F {self.factor_cov.shape}, "
                             f"d {self.specific_var.shape}, {len(self.factor_names)} names")

    def covariance(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Dense security covariance for ``ids`` (all securities by default): X F X' + diag(d)."""
        X = self.exposures if ids is None else self.exposures[ids]
        d = self.specific_var if ids is None else self.specific_var[ids]
        return X @ self.factor_cov @ X.T + np.diag(d)

    def to_tables(self) -> dict[str, pa.Table]:
        n, k = self.exposures.shape
        rows, cols = np.nonzero(self.exposures)
        fr, fc = np.divmod(np.arange(k * k), k)
        return {
            "risk_factors": pa.table({"factor_id": pa.array(np.arange(k), pa.int16()),
                                      "name": list(self.factor_names), "kind": list(self.factor_kinds)}),
            "risk_covariance": pa.table({"factor_row": pa.array(fr, pa.int16()), "factor_col": pa.array(fc, pa.int16()),
                                         "covariance": self.factor_cov.ravel()}),
            "risk_exposures": pa.table({"security_id": pa.array(rows, pa.int32()), "factor_id": pa.array(cols, pa.int16()),
                                        "exposure": self.exposures[rows, cols]}),
            "risk_specific": pa.table({"security_id": pa.array(np.arange(n), pa.int32()), "specific_variance": self.specific_var}),
        }

    @classmethod
    def from_tables(cls, factors: pa.Table, covariance: pa.Table, exposures: pa.Table, specific: pa.Table) -> "RiskModel":
        order = np.argsort(factors["factor_id"].to_numpy())
        k = len(order)
        F = np.zeros((k, k))
        F[covariance["factor_row"].to_numpy(), covariance["factor_col"].to_numpy()] = covariance["covariance"].to_numpy()
        sid = specific["security_id"].to_numpy()
        n = int(sid.max()) + 1 if len(sid) else 0
        d = np.zeros(n)
        d[sid] = specific["specific_variance"].to_numpy()
        X = np.zeros((n, k))
        X[exposures["security_id"].to_numpy(), exposures["factor_id"].to_numpy()] = exposures["exposure"].to_numpy()
        return cls(tuple(np.asarray(factors["name"].to_pylist())[order]), tuple(np.asarray(factors["kind"].to_pylist())[order]), X, F, d)


def _zscore(x: np.ndarray) -> np.ndarray:
    x = np.where(np.isfinite(x), x, np.nanmedian(x))
    z = (x - x.mean()) / (x.std() or 1.0)
    return np.clip(z, -3.0, 3.0)


def _ewma_weights(n: int, half_life: float) -> np.ndarray:
    w = 0.5 ** (np.arange(n)[::-1] / half_life)
    return w / w.sum()


def estimate_risk_model(u: Universe, window: int = 504, half_life: float = 126.0) -> RiskModel:
    """Estimate the model from the universe's history up to its as-of date."""
    sec = u.securities
    kind = np.asarray(sec["kind"].to_pylist())
    sector = np.asarray([s or "" for s in sec["sector"].to_pylist()])
    symbol = sec["symbol"].to_pylist()
    index_id = sec["index_id"].to_pylist()
    n = len(kind)
    stock = kind == "stock"
    sectors = sorted(set(sector[stock]))
    names = [f"sector:{s}" for s in sectors] + ["style:momentum", "style:volatility"] + [f"asset:{a}" for a in _ASSET_FACTORS]
    kinds = [FactorKind.SECTOR.value] * len(sectors) + [FactorKind.STYLE.value] * 2 + [FactorKind.ASSET_CLASS.value] * len(_ASSET_FACTORS)
    k = len(names)
    col = {nm: j for j, nm in enumerate(names)}

    R = u.total_return[-window:]
    P = u.price
    X = np.zeros((n, k))
    regressed = np.zeros(n, bool)
    for i in np.flatnonzero(stock):
        X[i, col[f"sector:{sector[i]}"]] = 1.0
        regressed[i] = True
    # Styles from data up to as-of (held constant over the window: a simplification).
    with np.errstate(invalid="ignore", divide="ignore"):
        mom = P[-22, stock] / P[-253, stock] - 1.0
        vol = np.log(np.nanstd(u.total_return[-252:, stock], axis=0))
    X[stock, col["style:momentum"]] = _zscore(mom)
    X[stock, col["style:volatility"]] = _zscore(vol)
    for i in range(n):
        if stock[i] or index_id[i] is not None:
            continue
        c = fund_characteristics(symbol[i])
        ac = sec["asset_class"][i].as_py()
        if ac == "intl_equity":
            X[i, col["asset:intl_developed"]] = 1.0
        elif ac == "em_equity":
            X[i, col["asset:emerging_markets"]] = 1.0
        elif ac == "us_equity":
            continue  # an active equity fund: look-through below
        else:
            X[i, col["asset:rates"]] = c.get("dur", 0.0)
            X[i, col["asset:credit"]] = c.get("sdur", 0.0)
            X[i, col["asset:muni"]] = c.get("muni", 0.0) * c.get("dur", 0.0)
            X[i, col["asset:inflation"]] = c.get("infl", 0.0) * c.get("dur", 0.0)
        regressed[i] = True

    # Daily cross-sectional regressions over the securities that trade that day.
    est = np.flatnonzero(regressed)
    Xe = X[est]
    Re = R[:, est]
    f = np.zeros((len(R), k))
    for t in range(len(R)):
        ok = np.isfinite(Re[t])
        f[t] = np.linalg.lstsq(Xe[ok], Re[t, ok], rcond=None)[0]
    w = _ewma_weights(len(R), half_life)
    fc = f - w @ f
    F = 252.0 * (fc * w[:, None]).T @ fc
    F = 0.5 * (F + F.T)

    # Look-through: index ETFs on their index, the active equity fund on the SP500 index.
    cons = u.index_constituents
    cid = np.asarray(cons["index_id"].to_pylist())
    for i in range(n):
        if regressed[i]:
            continue
        idx = index_id[i] if index_id[i] is not None else "SP500"
        m = cid == idx
        X[i] = cons["weight"].to_numpy()[m] @ X[cons["security_id"].to_numpy()[m]]

    resid = R - f @ X.T
    ok = np.isfinite(resid)
    wt = np.where(ok, w[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 252.0 * (np.where(ok, resid, 0.0) ** 2 * wt).sum(axis=0) / wt.sum(axis=0)
    d = np.where(np.isfinite(d), d, np.nanmedian(d))
    d = np.maximum(d, SPECIFIC_VARIANCE_FLOOR)
    return RiskModel(tuple(names), tuple(kinds), X, F, d)
