"""Thin entrypoints: the ``rebalance`` command and the scripts ``ray job submit`` runs."""
