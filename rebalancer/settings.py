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
    ira_loss_blocks : a sale below basis in a traditional IRA or Roth blocks buys of its wash
        group for the window, as a taxable loss sale does. By law such a sale is no loss
        (default False); True is the conservative rule some firms keep.
    deferred_loss_value : what a loss deferred into a replacement's basis is worth to the
        optimizer, as a fraction of the same loss allowed today. It comes back when the
        replacement is sold: a month later if the price stays down and the engine harvests the
        replacement (worth nearly 1), years later as a smaller gain if the price recovers
        (near 0). Default 0.5, the middle. See docs/optimizer.md, wash sales.
    destroyed_loss_cost : per dollar of loss a sale destroys (its replacement is in an IRA or
        Roth, Rev. Rul. 2008-5), as a fraction of that loss's tax value: the loss the lot would
        give if held and harvested after the window, thrown away. Default 0.5, as
        ``deferred_loss_value``: a loss kept for later is worth what a deferred one is.
    wash_buy_risk : the chance that a buy's wash-sale window gets in the way, as a fraction of
        the loss it puts at risk. A buy of a group in which the household holds taxable lots at
        a loss makes those losses unharvestable for 30 days (harvested in that time they would
        be deferred, or destroyed by an IRA buy). Each dollar bought is charged this fraction
        of the value lost, ``1 - deferred_loss_value`` of the loss per dollar (all of it for an
        IRA buy). Default 0.1: small, since waiting out the window costs nothing.
    min_weight : trades under this fraction of household value are dropped (numerical dust:
        $1 per $1M).
    solver_tolerance : accuracy asked of the solver, absolute and relative (duality gap and
        feasibility), in units of household value.
    min_trade_usd, min_trade_fraction : the firm's minimum trade per (account, security,
        side), ``max(min_trade_usd, min_trade_fraction * account value)``, for accounts whose
        own ``min_trade`` is 0 (an account's own > 0 stands). A forced sale or one that closes
        the position is exempt.
    min_position_usd, min_position_fraction : a buy that opens a position the account does
        not hold must make it worth at least ``max(min_position_usd, min_position_fraction *
        account value)``, for accounts whose own ``min_position`` is null (an account's own
        stands, 0 included).
    dust_usd : no trade row is worth less than this (forced sales excepted).
    cash_band_usd, cash_band_fraction : cash is a position with a target, the reserve (the
        models hold no cash); cash above target plus ``max(cash_band_usd, cash_band_fraction *
        account value)`` is invested unless no eligible buy fits (the account's ``cash_note``
        says why); an account's own ``cash_band``, where not null, stands instead (0 included).
    cash_active_vol : the risk of cash against the invested target, annual volatility (10%:
        about a balanced model's own volatility, which idle cash forgoes): the
        problem adds ``cash_active_vol^2 * (1' a)^2`` to the tracking variance (a cash factor
        with exposure 1 on every security; ``1' a`` is the household's active weight in
        securities, minus its active cash), so substitutes plus idle cash cannot stand in for
        a fund at no risk. 0 turns it off. See docs/optimizer.md.
    descent_max_steps : cap on the steps of one descent (:mod:`rebalancer.discrete`): a step
        moves many variables at once where it can, one or a pair where it cannot.
    """
    risk_aversion: float = 100.0
    impact: float = 0.0
    sensitivity_floor: float = 1e-4
    substitute_cost: float = 0.001
    divestment: Divestment = Divestment.IMMEDIATE
    screen_hold_cost: float = 0.02
    wash_window_days: int = 30
    ira_loss_blocks: bool = False
    deferred_loss_value: float = 0.5
    destroyed_loss_cost: float = 0.5
    wash_buy_risk: float = 0.1
    min_weight: float = 1e-6
    solver_tolerance: float = 1e-8
    min_trade_usd: float = 25.0
    min_trade_fraction: float = 0.0
    min_position_usd: float = 50.0
    min_position_fraction: float = 0.0
    dust_usd: float = 1.0
    cash_band_usd: float = 100.0
    cash_band_fraction: float = 0.01
    cash_active_vol: float = 0.10
    descent_max_steps: int = 40

    def __post_init__(self):
        for name in ("risk_aversion", "impact", "sensitivity_floor", "substitute_cost", "screen_hold_cost", "min_weight",
                     "solver_tolerance", "min_trade_usd", "min_trade_fraction", "min_position_usd",
                     "min_position_fraction", "dust_usd", "cash_band_usd", "cash_band_fraction", "cash_active_vol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"OptimizerSettings.{name} must be a number >= 0, got {v!r}")
        if self.risk_aversion <= 0:
            raise ValueError("OptimizerSettings.risk_aversion must be > 0")
        if self.sensitivity_floor <= 0:
            raise ValueError("OptimizerSettings.sensitivity_floor must be > 0")
        for name in ("deferred_loss_value", "destroyed_loss_cost", "wash_buy_risk"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"OptimizerSettings.{name} must be a number in [0, 1], got {v!r}")
        if not 0 < self.wash_window_days <= 61:
            raise ValueError(f"OptimizerSettings.wash_window_days must be in 1..61, got {self.wash_window_days}")
        if not (isinstance(self.descent_max_steps, int) and self.descent_max_steps >= 0):
            raise ValueError(f"OptimizerSettings.descent_max_steps must be an int >= 0, got {self.descent_max_steps!r}")
        object.__setattr__(self, "divestment", Divestment(self.divestment))
