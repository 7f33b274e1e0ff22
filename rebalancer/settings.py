"""Settings of the household optimizer, one frozen object per run.

Per-household choices (tax rates, budget, tax sensitivity, screens, ...) come from the book;
these are the firm-wide ones a desk sets once.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Divestment", "OptimizerSettings"]


class Divestment(enum.StrEnum):
    """What a screen does to securities an account already holds.

    IMMEDIATE: sold in full today, whatever the tax (the usual client instruction).
    TAX_SENSITIVE: lots at a loss or no gain are sold today; lots with a gain are sold when
    their tax per dollar is below ``OptimizerSettings.screen_hold_cost`` (or when tracking
    error asks for it), so a gain is not realized just to divest at once.
    """
    IMMEDIATE = "immediate"
    TAX_SENSITIVE = "tax_sensitive"


@dataclass(frozen=True)
class OptimizerSettings:
    """risk_aversion : lambda, dollars of objective per dollar of household value per unit of
        annual tracking variance. At 100 a 1% tracking error (variance 1e-4) weighs as much as
        paying 1% of the household's value; a household's ``tax_sensitivity`` then scales
        taxes (and costs) against it.
    impact : quadratic trading cost per trade variable, dollars per dollar of value per
        (fraction of value traded)^2. Default 0: a household's trades are far too small for
        market impact, and a separable quadratic would split a holding between equivalent
        securities (two ETFs on one index) just to shrink each trade.
    sensitivity_floor : the weight costs keep when a household's tax sensitivity is 0, so that
        among the ways of reaching the target the cheapest is chosen.
    substitute_cost : per dollar bought of a security outside the household's target (a harvest
        substitute, an equivalent ETF): the model's own securities are preferred unless a
        substitute earns its place (a wash-sale block, a harvest, asset location).
    divestment : see :class:`Divestment`.
    screen_hold_cost : per dollar of a screened gain lot still held (TAX_SENSITIVE divestment).
    wash_window_days : the wash-sale window, both directions.
    min_weight : trades under this fraction of household value are dropped (numerical dust:
        $1 per $1M).
    solver_tolerance : accuracy asked of the solver, absolute and relative (duality gap and
        feasibility), in units of household value.
    """
    risk_aversion: float = 100.0
    impact: float = 0.0
    sensitivity_floor: float = 1e-4
    substitute_cost: float = 0.001
    divestment: Divestment = Divestment.IMMEDIATE
    screen_hold_cost: float = 0.02
    wash_window_days: int = 30
    min_weight: float = 1e-6
    solver_tolerance: float = 1e-8

    def __post_init__(self):
        for name in ("risk_aversion", "impact", "sensitivity_floor", "substitute_cost", "screen_hold_cost", "min_weight",
                     "solver_tolerance"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"OptimizerSettings.{name} must be a number >= 0, got {v!r}")
        if self.risk_aversion <= 0:
            raise ValueError("OptimizerSettings.risk_aversion must be > 0")
        if self.sensitivity_floor <= 0:
            raise ValueError("OptimizerSettings.sensitivity_floor must be > 0")
        if not 0 < self.wash_window_days <= 61:
            raise ValueError(f"OptimizerSettings.wash_window_days must be in 1..61, got {self.wash_window_days}")
        object.__setattr__(self, "divestment", Divestment(self.divestment))
