"""Conversions venue modules share. Sizes in contracts become base units exactly: the decimal
product of two decimal strings, then the nearest double, so a stored amount is the shortest
decimal that round-trips, as for venues that send base units."""

from __future__ import annotations

from decimal import Decimal


def base_amount(contracts: str | int, contract_size: Decimal | None) -> float:
    """`contracts` (the wire's decimal string) times the instrument's contract size, as a float."""
    try:
        if contract_size is None:
            return float(contracts)
        return float(Decimal(contracts) * contract_size)
    except ArithmeticError as exc:  # decimal.InvalidOperation: not a number
        raise ValueError(f"not a decimal amount: {contracts!r}") from exc
