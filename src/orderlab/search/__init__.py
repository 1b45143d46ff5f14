"""Optuna searches over orders, step budgets, group sizes and training recipes (``orderlab search``)."""

from orderlab.search.space import Param, parse_space
from orderlab.search.study import SearchSpec, make_spec, run_search

__all__ = ["Param", "parse_space", "SearchSpec", "make_spec", "run_search"]
