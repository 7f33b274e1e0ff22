"""The investable universe of a synthetic book: stocks, index ETFs, bond and international funds,
indexes, ~20 models and screens, with a daily price history for every security.

Stocks and their sectors are real (the shipped S&P 500 history). Everything else is derived
with a fixed seed, the same for every book:

- index weights: the data has no market caps, so each stock gets a fixed pseudo-capitalisation
  (log-normal, seeded); cap-weighted indexes use it, the equal-weight index does not;
- equity ETFs are priced from their index (total return of the weighted constituents, less the
  dividend yield, plus a little tracking noise), so look-through is exact up to that noise;
- international, emerging, bond, muni, TIPS and high-yield ETFs and two active funds have
  simulated returns driven by the real US market return, a simulated yield-change factor and
  a credit-spread factor, with realistic volatilities. Their prices are synthetic; they are
  what makes multi-asset models, asset location and substitutes possible.

Wash groups: ETFs on the same index are substantially identical (one group per index); ETFs
on different indexes are not, which makes them loss-harvest substitutes for each other.
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .marketdata import PriceHistory, load_history, sector_table
from .schema import IncomeTaxClass, SecurityKind

__all__ = ["Universe", "build_universe", "UNIVERSE_SEED", "SCREEN_ATTRIBUTES", "MODEL_FAMILIES", "fund_characteristics"]

UNIVERSE_SEED = 20210421
MIN_HISTORY_DAYS = 252  # a stock needs a year of history to be in the universe (risk model)

SCREEN_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "fossil_free": ("fossil_fuels",),
    "sin_free": ("alcohol", "gambling", "tobacco"),
    "faith_based": ("alcohol", "gambling", "tobacco", "weapons"),
    "no_weapons": ("weapons",),
}

# sub-industry (or sector) -> screen attribute
_SUB_INDUSTRY_ATTRIBUTES = {
    "Tobacco": "tobacco",
    "Brewers": "alcohol",
    "Distillers & Vintners": "alcohol",
    "Casinos & Gaming": "gambling",
    "Aerospace & Defense": "weapons",
}

# Synthetic non-equity funds: symbol -> (name, kind, asset class, wash group, yield,
# income tax class, spread, return recipe). Recipe keys: mkt (beta to the US market),
# idio (daily idiosyncratic vol), dur (duration to the yield factor), sdur (spread duration),
# muni / infl (loading on the muni-spread or breakeven factors), base (shared base series:
# funds on the same index share it and differ only by tracking noise).
_FUNDS = {
    "INTL-A": ("International Developed Index ETF A", "etf", "intl_equity", "INTL_DEV", 0.028, "qualified", 0.0003, dict(base="intl", mkt=0.80, idio=0.0070)),
    "INTL-B": ("International Developed Index ETF B", "etf", "intl_equity", "INTL_DEV", 0.028, "qualified", 0.0003, dict(base="intl", mkt=0.80, idio=0.0070)),
    "INTL-C": ("International Developed All-Cap ETF", "etf", "intl_equity", "INTL_DEV_ALLCAP", 0.027, "qualified", 0.0004, dict(base="intl", mkt=0.80, idio=0.0070, alt=0.0015)),
    "EM-A": ("Emerging Markets Index ETF A", "etf", "em_equity", "EM", 0.022, "qualified", 0.0005, dict(base="em", mkt=0.90, idio=0.0100)),
    "EM-B": ("Emerging Markets Core ETF", "etf", "em_equity", "EM_CORE", 0.023, "qualified", 0.0005, dict(base="em", mkt=0.90, idio=0.0100, alt=0.0020)),
    "AGG-A": ("US Aggregate Bond ETF A", "etf", "us_bond", "US_AGG", 0.025, "ordinary", 0.0002, dict(base="agg", dur=6.0, sdur=1.5)),
    "AGG-B": ("US Aggregate Bond ETF B", "etf", "us_bond", "US_AGG", 0.025, "ordinary", 0.0002, dict(base="agg", dur=6.0, sdur=1.5)),
    "AGG-C": ("US Core Plus Bond ETF", "etf", "us_bond", "US_CORE_PLUS", 0.029, "ordinary", 0.0003, dict(base="agg", dur=6.2, sdur=2.2, alt=0.0005)),
    "TSY-S": ("Short Treasury ETF", "etf", "us_bond", "UST_SHORT", 0.010, "ordinary", 0.0001, dict(base="tsys", dur=1.9)),
    "TSY-I": ("Intermediate Treasury ETF", "etf", "us_bond", "UST_INTER", 0.018, "ordinary", 0.0001, dict(base="tsyi", dur=6.5)),
    "TSY-L": ("Long Treasury ETF", "etf", "us_bond", "UST_LONG", 0.024, "ordinary", 0.0002, dict(base="tsyl", dur=17.0)),
    "TIPS": ("TIPS ETF", "etf", "tips", "TIPS", 0.015, "ordinary", 0.0002, dict(base="tips", dur=7.0, infl=1.0)),
    "MUNI-A": ("National Muni Bond ETF", "etf", "muni_bond", "MUNI_NATIONAL", 0.022, "tax_exempt", 0.0003, dict(base="muni", dur=5.5, muni=1.0)),
    "MUNI-B": ("Intermediate Muni Bond ETF", "etf", "muni_bond", "MUNI_INTER", 0.019, "tax_exempt", 0.0004, dict(base="muni", dur=4.5, muni=0.8, alt=0.0004)),
    "HY-A": ("High Yield Corporate Bond ETF", "etf", "high_yield", "US_HY", 0.050, "ordinary", 0.0004, dict(base="hy", dur=3.5, sdur=4.0, mkt=0.05)),
    "ACT-LC": ("Active US Large Cap Fund", "fund", "us_equity", "ACT-LC", 0.012, "qualified", 0.0, dict(base="sp500", alt=0.0030)),
    "ACT-BD": ("Active Core Bond Fund", "fund", "us_bond", "ACT-BD", 0.030, "ordinary", 0.0, dict(base="agg", dur=5.8, sdur=2.0, alt=0.0006)),
}

# Index ETFs on the shipped stocks: symbol -> (name, index id, spread). Sector ETFs are added
# per GICS sector.
_INDEX_ETFS = {
    "USLC-A": ("US Large Cap 500 Index ETF A", "SP500", 0.0001),
    "USLC-B": ("US Large Cap 500 Index ETF B", "SP500", 0.0001),
    "USLC-C": ("US Large Cap 500 Index ETF C", "SP500", 0.0001),
    "USEW": ("US Large Cap 500 Equal Weight ETF", "SP500EW", 0.0003),
}

_SECTOR_ABBREV = {
    "Communication Services": "COMM", "Consumer Discretionary": "DISC", "Consumer Staples": "STPL",
    "Energy": "ENRG", "Financials": "FINL", "Health Care": "HLTH", "Industrials": "INDU",
    "Information Technology": "TECH", "Materials": "MATL", "Real Estate": "REIT", "Utilities": "UTIL",
}

# Model families: name -> (US large-cap ETF, equity sleeve, bond sleeve), sleeves as
# {symbol: share of the sleeve}. "SECTORS" expands to the sector ETFs (pseudo-cap weighted).
MODEL_FAMILIES = {
    "Core": ("USLC-A", {"USLC-A": 0.60, "INTL-A": 0.28, "EM-A": 0.12},
             {"AGG-A": 0.60, "TSY-S": 0.20, "TSY-I": 0.20}),
    "Tax-Managed": ("USLC-B", {"USLC-B": 0.55, "USEW": 0.10, "INTL-B": 0.25, "EM-B": 0.10},
                    {"MUNI-A": 0.60, "MUNI-B": 0.30, "TSY-S": 0.10}),
    "Sector": (None, {"SECTORS": 0.68, "INTL-C": 0.22, "EM-A": 0.10},
               {"AGG-B": 0.50, "TSY-I": 0.25, "TIPS": 0.25}),
    "Diversified Income": ("USLC-C", {"USLC-C": 0.45, "ACT-LC": 0.15, "INTL-A": 0.25, "EM-B": 0.15},
                           {"AGG-C": 0.30, "ACT-BD": 0.20, "HY-A": 0.20, "TIPS": 0.15, "TSY-L": 0.15}),
}
RISK_LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)  # equity share of a model


def fund_characteristics(symbol: str) -> dict[str, float]:
    """Known characteristics of a synthetic non-equity fund: duration (``dur``), spread
    duration (``sdur``), muni and inflation loadings, market beta. Empty for other symbols."""
    rec = _FUNDS.get(symbol)
    return {k: v for k, v in rec[7].items() if k not in ("base", "idio", "alt")} if rec else {}


@dataclass(frozen=True)
class Universe:
    """Securities with their history, indexes, models and screens, as of one date.

    Security ids are column indices: ``security_id == j`` for column ``j`` of the arrays.

    dates : ndarray (T,) datetime64[D]; ``dates[-1]`` is the as-of date.
    price : ndarray (T, S) split-adjusted close, NaN before listing.
    total_return : ndarray (T, S) daily total return, NaN where not listed.
    securities, index_constituents, models, screens : Arrow tables of the data contract.
    sp500 : (security_ids, weights) of the SP500 index, for direct indexing.
    model_family, model_risk : ndarray (M,) family name index and equity share per model.
    model_di_etf : ndarray (M,) security id of the model's direct-indexable ETF, or -1.
    """
    dates: np.ndarray
    price: np.ndarray
    total_return: np.ndarray
    securities: pa.Table
    index_constituents: pa.Table
    models: pa.Table
    screens: pa.Table
    sp500: tuple[np.ndarray, np.ndarray]
    model_family: np.ndarray
    model_risk: np.ndarray
    model_di_etf: np.ndarray

    @property
    def as_of(self) -> dt.date:
        return self.dates[-1].astype(dt.date)

    @property
    def n_securities(self) -> int:
        return self.price.shape[1]


def _stock_universe(h: PriceHistory):
    listed = np.isfinite(h.close[-1]) & (np.isfinite(h.close).sum(axis=0) > MIN_HISTORY_DAYS)
    return np.flatnonzero(listed)


def _index_series(weights: np.ndarray, cols: np.ndarray, tr: np.ndarray, dividend_yield: float,
                  noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Daily total return and price path (starting at 1) of a weighted index of ``cols``.

    Stocks not yet listed on a day drop out and the others are renormalised that day.
    """
    r = tr[:, cols]
    ok = np.isfinite(r)
    w = np.where(ok, weights[None, :], 0.0)
    wsum = w.sum(axis=1)
    ret = np.where(wsum > 0, (np.where(ok, r, 0.0) * w).sum(axis=1) / np.where(wsum > 0, wsum, 1.0), 0.0)
    ret = ret + noise
    ret[0] = 0.0
    price_ret = ret - dividend_yield / 252.0
    return ret, np.cumprod(1.0 + price_ret)


@functools.lru_cache(maxsize=2)
def build_universe(as_of: dt.date | None = None) -> Universe:
    """Build the universe as of ``as_of`` (default: the last shipped day). Deterministic."""
    h = load_history(as_of)
    rng = np.random.default_rng(UNIVERSE_SEED)
    sectors = sector_table()
    cols = _stock_universe(h)
    T = len(h.dates)
    n_stocks = len(cols)

    sym = [h.symbols[c] for c in cols]
    stock_sector = [sectors.get(s, (s, "Unclassified", ""))[1] for s in sym]
    pseudo_cap = np.exp(rng.normal(0.0, 1.0, size=len(h.symbols)))[cols]  # fixed per symbol
    stock_yield = np.nan_to_num(h.dividends_12m[cols] / h.close[-1, cols])

    rows: list[dict] = []
    for j, (s, c) in enumerate(zip(sym, cols)):
        name, sector, sub = sectors.get(s, (s, "Unclassified", ""))
        attrs = []
        if sub in _SUB_INDUSTRY_ATTRIBUTES:
            attrs.append(_SUB_INDUSTRY_ATTRIBUTES[sub])
        if sector == "Energy" and ("Oil & Gas" in sub or "Coal" in sub):
            attrs.append("fossil_fuels")
        px = float(h.close[-1, c])
        rows.append(dict(symbol=s, name=name, kind=SecurityKind.STOCK.value, asset_class="us_equity",
                         sector=sector, wash_group=s, index_id=None, attributes=sorted(attrs),
                         **{"yield": float(stock_yield[j])},
                         income_tax_class=(IncomeTaxClass.ORDINARY if sector == "Real Estate" else IncomeTaxClass.QUALIFIED).value,
                         spread=float(np.clip(0.0002 + 0.01 / px, 0.0002, 0.003))))
    price = [h.close[:, c] for c in cols]
    tret = [h.total_return[:, c] for c in cols]

    # Indexes on the stocks.
    idx_rows: list[tuple[str, int, float]] = []
    indexes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add_index(index_id, members, weights):
        weights = weights / weights.sum()
        indexes[index_id] = (members, weights)
        idx_rows.extend((index_id, int(m), float(w)) for m, w in zip(members, weights))

    all_ids = np.arange(n_stocks)
    add_index("SP500", all_ids, pseudo_cap.copy())
    add_index("SP500EW", all_ids, np.ones(n_stocks))
    gics = sorted({s for s in stock_sector if s != "Unclassified"})
    for sec in gics:
        m = np.array([i for i in range(n_stocks) if stock_sector[i] == sec])
        add_index("SECTOR_" + sec.upper().replace(" ", "_"), m, pseudo_cap[m].copy())

    tr_stocks = np.column_stack(tret)
    sp_ret, _ = _index_series(indexes["SP500"][1], indexes["SP500"][0], tr_stocks, 0.0, np.zeros(T))

    def etf(symbol, name, index_id, spread, start_price):
        members, weights = indexes[index_id]
        y = float(weights @ stock_yield[members])
        ret, path = _index_series(weights, members, tr_stocks, y, rng.normal(0, 0.0001, T))
        attrs = sorted({a for m in members for a in rows[m]["attributes"]}) if index_id.startswith("SECTOR_ENERGY") else []
        rows.append(dict(symbol=symbol, name=name, kind=SecurityKind.ETF.value, asset_class="us_equity",
                         sector=None, wash_group=index_id, index_id=index_id, attributes=attrs,
                         **{"yield": y}, income_tax_class=IncomeTaxClass.QUALIFIED.value, spread=spread))
        price.append(path / path[-1] * start_price)
        tret.append(ret)

    for symbol, (name, index_id, spread) in _INDEX_ETFS.items():
        etf(symbol, name, index_id, spread, float(rng.uniform(60, 450)))
    sector_etf_ids = {}
    for sec in gics:
        index_id = "SECTOR_" + sec.upper().replace(" ", "_")
        sector_etf_ids[sec] = len(rows)
        etf("SEC-" + _SECTOR_ABBREV.get(sec, sec[:4].upper()), f"US {sec} Sector ETF", index_id, 0.0003,
            float(rng.uniform(30, 180)))

    # Simulated drivers of the non-equity funds (daily): yield changes, credit spread changes,
    # muni spread and breakeven inflation, all with some dependence on the real market return.
    mkt = np.nan_to_num(sp_ret)
    dy = 0.010 * mkt + rng.normal(0, 0.00055, T)  # yields rise with equities, fall in sell-offs
    ds = -0.020 * mkt + rng.normal(0, 0.00020, T)
    dmuni = rng.normal(0, 0.00020, T) - 0.005 * np.minimum(mkt, 0)
    dinfl = 0.005 * mkt + rng.normal(0, 0.00020, T)
    bases: dict[str, np.ndarray] = {}
    for symbol, (name, kind, ac, wash, y, itc, spread, rec) in _FUNDS.items():
        base = rec["base"]
        if base not in bases:
            if base == "sp500":
                r = mkt.copy()
            else:
                r = (y / 252.0 + rec.get("mkt", 0.0) * mkt - rec.get("dur", 0.0) * dy
                     - rec.get("sdur", 0.0) * ds - rec.get("muni", 0.0) * rec.get("dur", 0.0) * dmuni
                     + rec.get("infl", 0.0) * rec.get("dur", 0.0) * dinfl
                     + rng.normal(0, rec.get("idio", 0.0002), T))
            bases[base] = r
        r = bases[base] + rng.normal(0, rec.get("alt", 0.00005), T)
        r[0] = 0.0
        path = np.cumprod(1.0 + r - y / 252.0)
        rows.append(dict(symbol=symbol, name=name, kind=kind, asset_class=ac, sector=None,
                         wash_group=wash, index_id=None, attributes=[], **{"yield": y},
                         income_tax_class=itc, spread=spread))
        price.append(path / path[-1] * float(rng.uniform(20, 120)))
        tret.append(r)

    price_m = np.column_stack(price)
    tr_m = np.column_stack(tret)
    sym_to_id = {r["symbol"]: i for i, r in enumerate(rows)}
    securities = pa.table({
        "security_id": pa.array(np.arange(len(rows)), pa.int32()),
        **{k: [r[k] for r in rows] for k in ("symbol", "name", "kind", "asset_class", "sector")},
        "price": pa.array(price_m[-1], pa.float64()),
        **{k: [r[k] for r in rows] for k in ("wash_group", "index_id", "attributes", "yield", "income_tax_class", "spread")},
    })
    index_constituents = pa.table({
        "index_id": [r[0] for r in idx_rows],
        "security_id": pa.array([r[1] for r in idx_rows], pa.int32()),
        "weight": [r[2] for r in idx_rows],
    })

    # Models: 4 families x 5 risk levels.
    m_rows = []
    fam_of, risk_of, di_etf = [], [], []
    for f_i, (fam, (di, eq, bd)) in enumerate(MODEL_FAMILIES.items()):
        for eq_share in RISK_LEVELS:
            mid = len(fam_of)
            weights: dict[int, float] = {}
            for sleeve, share in ((eq, eq_share), (bd, 1.0 - eq_share)):
                for s, w in sleeve.items():
                    if s == "SECTORS":
                        capw = np.array([pseudo_cap[indexes["SECTOR_" + g.upper().replace(" ", "_")][0]].sum() for g in gics])
                        for g, cw in zip(gics, capw / capw.sum()):
                            weights[sector_etf_ids[g]] = weights.get(sector_etf_ids[g], 0.0) + share * w * cw
                    else:
                        weights[sym_to_id[s]] = weights.get(sym_to_id[s], 0.0) + share * w
            weights = {k: v for k, v in weights.items() if v > 0}
            total = sum(weights.values())
            name = f"{fam} {int(round(eq_share * 100))}/{int(round((1 - eq_share) * 100))}"
            for sid in sorted(weights):
                m_rows.append((mid, name, sid, weights[sid] / total))
            fam_of.append(f_i)
            risk_of.append(eq_share)
            di_etf.append(sym_to_id[di] if di and sym_to_id[di] in weights else -1)
    models = pa.table({
        "model_id": pa.array([r[0] for r in m_rows], pa.int32()),
        "model_name": [r[1] for r in m_rows],
        "security_id": pa.array([r[2] for r in m_rows], pa.int32()),
        "weight": [r[3] for r in m_rows],
    })
    screens = pa.table({
        "screen_id": [s for s, attrs in SCREEN_ATTRIBUTES.items() for _ in attrs],
        "attribute": [a for attrs in SCREEN_ATTRIBUTES.values() for a in attrs],
    })
    return Universe(
        dates=h.dates, price=price_m, total_return=tr_m, securities=securities,
        index_constituents=index_constituents, models=models, screens=screens,
        sp500=indexes["SP500"], model_family=np.array(fam_of), model_risk=np.array(risk_of),
        model_di_etf=np.array(di_etf),
    )
