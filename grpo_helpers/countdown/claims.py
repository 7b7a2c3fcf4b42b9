"""Countdown's claim checker: every "a op b = c" a completion writes, recomputed, and which false ones it corrects.

The bundled model's typical failure is false arithmetic followed by a claimed success ("13 * 10 = 16. Found it.").
An "aha" is the opposite: the completion states something false, later states the truth about the same operation
("Check: 13 * 10 = 130, not 16."), and ends with a correct answer. Counting that by phrases ("wait", "check")
would pay words, not checking; here each claim is recomputed exactly, whatever words surround it.

A claim is `a op b = c` with whole numbers and op one of + - * / (also × and ÷). "The same operation" is the same
operator on the same operands, in either order for + and * and in the written order for - and /. A false claim is
corrected by the first later true claim about the same operation; false claims still standing at the end are
uncorrected. The scan is one linear regex pass over untrusted text (bounded digit runs, no nested repetition).
"""

from __future__ import annotations

import re
from fractions import Fraction

from grpo_helpers.task import Claims

CLAIM = re.compile(r"(?<!\d)(?<!\d\.)(\d{1,12}) {0,3}([-+*/×÷]) {0,3}(\d{1,12}) {0,3}= {0,3}(\d{1,12})(?!\d|\.\d)")
OPERATOR = {"×": "*", "÷": "/"}


def _value(a: int, op: str, b: int) -> Fraction | None:
    """a op b exactly; None for a division by zero (no claim about it can be true)."""
    if op == "+":
        return Fraction(a + b)
    if op == "-":
        return Fraction(a - b)
    if op == "*":
        return Fraction(a * b)
    return Fraction(a, b) if b else None


def check_claims(completion: str) -> Claims:
    """The completion's arithmetic claims, recomputed: which false ones a later true one corrects, which stand."""
    pending: dict[tuple, list[str]] = {}  # operation -> its false claims not yet corrected, as written
    corrected: list[tuple[str, str]] = []
    for match in CLAIM.finditer(completion):
        a, op, b, c = int(match[1]), OPERATOR.get(match[2], match[2]), int(match[3]), int(match[4])
        operation = (op, *sorted((a, b))) if op in "+*" else (op, a, b)
        if _value(a, op, b) == c:
            corrected += [(wrong, match[0]) for wrong in pending.pop(operation, [])]
        else:
            pending.setdefault(operation, []).append(match[0])
    return Claims(corrected=corrected, uncorrected=[claim for claims in pending.values() for claim in claims])


__all__ = ["check_claims"]
