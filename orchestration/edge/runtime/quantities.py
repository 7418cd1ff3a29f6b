"""Kubernetes resource quantities (``500m``, ``128Mi``, ``1e3``) as exact fractions."""

from __future__ import annotations

import re
from fractions import Fraction

_SUFFIXES: dict[str, Fraction] = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_QUANTITY = re.compile(
    r"^(?P<sign>[+-]?)(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<suffix>[numkMGTPE]|[KMGTPE]i)|[eE](?P<exp>[+-]?[0-9]{1,3}))?$"
)


def parse_quantity(value: object) -> Fraction:
    """The exact value of a quantity; ValueError for anything kube-apiserver would refuse."""
    if isinstance(value, bool):
        raise ValueError(f"quantity {value!r} is not a number or a string")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(value)
    if not isinstance(value, str):
        raise ValueError(f"quantity {value!r} is not a number or a string")
    m = _QUANTITY.match(value.strip())
    if m is None:
        raise ValueError(f'quantities must match the regular expression of a quantity: "{value}"')
    number = Fraction(m["num"])
    if m["sign"] == "-":
        number = -number
    if m["exp"] is not None:
        return number * Fraction(10) ** int(m["exp"])
    return number * _SUFFIXES[m["suffix"] or ""]
