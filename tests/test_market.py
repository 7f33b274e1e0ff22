"""Shipped market data, the derived universe and the factor risk model."""
import datetime as dt

import numpy as np
import pytest

from rebalancer.marketdata import LAST_DATE, load_history
from rebalancer.riskmodel import RiskModel, estimate_risk_model
from rebalancer.universe import build_universe


@pytest.fixture(scope="module")
def universe():
    return build_universe()


@pytest.fixture(scope="module")
def risk(universe):
    return estimate_risk_model(universe)


def test_split_adjustment_by_hand():
    # AAPL split 4:1 on 2020-08-31: it closed at 499.23 on 2020-08-28 and 129.04 on the split day.
    h = load_history()
    i = h.symbols.index("AAPL")
    t = int(np.searchsorted(h.dates, np.datetime64("2020-08-28")))
    assert h.close[t, i] == pytest.approx(499.23 / 4)
    assert h.close[t + 1, i] == pytest.approx(129.04)
    assert h.total_return[t + 1, i] == pytest.approx(129.04 / (499.23 / 4) - 1)
    # A history cut at an earlier date is adjusted to that date instead.
    early = load_history(dt.date(2020, 8, 28))
    assert early.close[-1, i] == pytest.approx(499.23)
    with pytest.raises(ValueError, match="trading day"):
        load_history(dt.date(2021, 4, 24))  # a Saturday


def test_dividends_enter_total_return():
    h = load_history()
    i = h.symbols.index("XOM")
    assert 0.02 < h.dividends_12m[i] / h.close[-1, i] < 0.10


def test_universe_wash_groups_indexes_and_models(universe):
    sec = universe.securities
    sym = sec["symbol"].to_pylist()
    wg = dict(zip(sym, sec["wash_group"].to_pylist()))
    assert wg["USLC-A"] == wg["USLC-B"] == wg["USLC-C"]  # same index: substantially identical
    assert wg["USEW"] != wg["USLC-A"] and wg["INTL-C"] != wg["INTL-A"]  # substitutes
    assert len(set(sym)) == len(sym)
    assert np.all(sec["price"].to_numpy() > 0) and universe.as_of == LAST_DATE
    m = universe.models
    sums = np.bincount(m["model_id"].to_numpy(), weights=m["weight"].to_numpy())
    assert len(sums) == 20 and np.allclose(sums, 1.0)
    ic = universe.index_constituents
    sp = np.asarray(ic["index_id"].to_pylist()) == "SP500"
    assert 450 <= sp.sum() <= 510 and np.isclose(ic["weight"].to_numpy()[sp].sum(), 1.0)
    assert "fossil_fuels" in sec["attributes"][sym.index("XOM")].as_py()
    assert build_universe() is universe  # cached: one build per process


def test_risk_model_is_psd_and_looks_through_etfs(universe, risk):
    assert np.linalg.eigvalsh(risk.factor_cov).min() > 0
    assert np.all(risk.specific_var > 0)
    sym = universe.securities["symbol"].to_pylist()
    ic = universe.index_constituents
    sp = np.asarray(ic["index_id"].to_pylist()) == "SP500"
    lt = ic["weight"].to_numpy()[sp] @ risk.exposures[ic["security_id"].to_numpy()[sp]]
    assert np.allclose(risk.exposures[sym.index("USLC-A")], lt)
    vol = np.sqrt(np.diag(risk.covariance()))
    assert 0.10 < vol[sym.index("USLC-A")] < 0.40  # a broad US equity index
    assert vol[sym.index("TSY-S")] < vol[sym.index("TSY-L")] < vol[sym.index("USLC-A")]
    C = risk.covariance(np.array([sym.index("USLC-A"), sym.index("USLC-B")]))
    assert C[0, 1] / np.sqrt(C[0, 0] * C[1, 1]) > 0.99


def test_risk_model_table_round_trip(risk):
    t = risk.to_tables()
    back = RiskModel.from_tables(t["risk_factors"], t["risk_covariance"], t["risk_exposures"], t["risk_specific"])
    assert back.factor_names == risk.factor_names
    assert np.array_equal(back.exposures, risk.exposures)
    assert np.array_equal(back.factor_cov, risk.factor_cov)
    assert np.array_equal(back.specific_var, risk.specific_var)
