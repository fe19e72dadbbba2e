"""One check of a notebook's parameters, shared by the notebooks' parameter dataclasses.

A notebook's analysis module declares its parameters as a dataclass deriving from
`NotebookParameters` with the bounds as class attributes; the notebook builds it from its
namespace after the parameters cell (`Parameters.from_namespace(globals())`) and every bound is
checked there, before any model loads, with an error naming the parameter, the valid range and
the value given:

    AT_LEAST   name -> smallest allowed value (integers: counts, sizes)
    INTERVALS  name -> interval written as in maths, "(0, 1]", "[0, 1)", ...
    CHOICES    name -> allowed values
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping


def check_at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"parameter {name} must be >= {low}, got {value}")


def check_interval(name: str, value: float, interval: str) -> None:
    """interval: "(a, b]", "[a, b)", "(a, b)" or "[a, b]"."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    if not (above and below):
        raise ValueError(f"parameter {name} must be in {interval}, got {value}")


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"parameter {name} must be {' or '.join(map(repr, allowed))}, got {value!r}")


def check_skip_first(skip_first: int, seq_len: int) -> None:
    if not 0 <= skip_first < seq_len:
        raise ValueError(f"parameter skip_first={skip_first} must be in [0, seq_len)")


def check_tail_window(tail_window: list) -> None:
    if len(tail_window) != 2 or not 0 <= tail_window[0] < tail_window[1] - 1:
        raise ValueError(f"parameter tail_window={tail_window} must be [start, stop) with stop - start >= 2")


@dataclasses.dataclass
class NotebookParameters:
    """Base of a notebook's parameters: bounds checked at construction (module doc)."""

    AT_LEAST: ClassVar[dict[str, int]] = {}
    INTERVALS: ClassVar[dict[str, str]] = {}
    CHOICES: ClassVar[dict[str, tuple]] = {}

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]):
        """The parameters of `cls` from a notebook's namespace (`globals()` after the parameters cell)."""
        return cls(**{f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace})

    def __post_init__(self) -> None:
        for name, low in self.AT_LEAST.items():
            check_at_least(name, getattr(self, name), low)
        for name, allowed in self.CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        for name, interval in self.INTERVALS.items():
            check_interval(name, getattr(self, name), interval)
        self.check()

    def check(self) -> None:
        """Checks beyond the declared bounds (windows, combinations of parameters)."""
