"""Tax-aware household rebalancing: the pure library (book schemas, tax lots and rules, risk
model, targets, the household problem, solvers, metrics). It never imports ray."""

__version__ = "0.1.0"
