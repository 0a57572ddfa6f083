"""What venue modules share: exact contract-size conversion, and the words for a frame they cannot
read (a codec's `parse` never raises: what it cannot read becomes a `ProtocolError`).

Sizes in contracts become base units exactly: the decimal product of two decimal strings, then the
nearest double, so a stored amount is the shortest decimal that round-trips, as for venues that
send base units."""

from __future__ import annotations

from decimal import Decimal

from recorder.model import ProtocolError

# what reading a malformed message may raise (Decimal's errors are ArithmeticErrors)
PARSE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError)


def clip(raw: bytes | bytearray | str, n: int = 200) -> str:
    """A frame's text, cut for an error detail."""
    s = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
    return s if len(s) <= n else s[:n] + "..."


def undecodable(exc: Exception, payload: bytes | str) -> ProtocolError:
    """A payload that is not JSON."""
    return ProtocolError(f"undecodable frame: {exc}: {clip(payload)}", code="decode", kind="decode")


def malformed(exc: Exception, payload: bytes | str, topic: str | None = None, kind: str = "parse") -> ProtocolError:
    """JSON whose shape the venue module cannot read (`topic` when it names one of ours)."""
    msg = f"malformed message: {type(exc).__name__}: {exc}: {clip(payload)}"
    return ProtocolError(msg, code="parse", topic=topic, kind=kind)  # type: ignore[arg-type]


def base_amount(contracts: str | int, contract_size: Decimal | None) -> float:
    """`contracts` (the wire's decimal string) times the instrument's contract size, as a float."""
    try:
        if contract_size is None:
            return float(contracts)
        return float(Decimal(contracts) * contract_size)
    except ArithmeticError as exc:  # decimal.InvalidOperation: not a number
        raise ValueError(f"not a decimal amount: {contracts!r}") from exc
