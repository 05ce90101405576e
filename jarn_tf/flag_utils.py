"""absl flag helpers shared by the entry points."""

from __future__ import annotations

import fractions
from typing import Optional

from absl import flags


def parse_fraction(text: str) -> float:
    """Parses ``0.031``, ``8/255`` or ``8 / 255`` to a float.

    Raises:
      ValueError: when the text is neither a number nor a fraction.
    """
    text = str(text).strip()
    if "/" in text:
        num, den = (part.strip() for part in text.split("/", 1))
        if float(den) == 0:
            raise ValueError(f"division by zero in {text!r}")
        return float(num) / float(den)
    return float(fractions.Fraction(text)) if text else float("nan")


class FractionParser(flags.FloatParser):
    """A float flag that also accepts fractions such as ``8/255``."""

    def convert(self, argument):
        if isinstance(argument, str):
            return parse_fraction(argument)
        return float(argument)

    def flag_type(self) -> str:
        return "float or fraction"


def define_fraction(
    name: str,
    default: Optional[float],
    help: str,
    lower_bound: Optional[float] = None,
    upper_bound: Optional[float] = None,
    flag_values: flags.FlagValues = flags.FLAGS,
) -> None:
    """Defines a float flag accepting fractions, with optional bounds."""
    flags.DEFINE(
        FractionParser(lower_bound=lower_bound, upper_bound=upper_bound),
        name,
        default,
        help,
        flag_values=flag_values,
    )
