"""Curation operators: small classes that add columns to a batch (statistics, scores) and mark pairs
to drop with a reason, chained by YAML recipes and run by an engine. Importing this package
registers every built-in operator."""

from vlcurate.ops.base import Operator, OpParams
from vlcurate.ops.registry import get_operator, operators, register

__all__ = ["OpParams", "Operator", "get_operator", "operators", "register"]
