"""The documented bounds of the notebooks' parameters, and the check of a parameter's value against
its annotation and bounds.

`utils.run` checks a run's parameters (its -p values and its params file's `notebooks:` overrides)
before any kernel starts; `apply_params_file`, the cell after every notebook's parameters cell,
checks every parameter again inside the kernel, so papermill's command line and JupyterLab get the
same clear error, naming the parameter, its type and its bounds, before a model loads.

Types come from the annotations of the parameters cell (`parameter_types`): `int` takes integers
only (not 1.5, not True); `float` takes integers too; `str` takes numbers as their text (a command
line cannot tell the string "5" from the number); `list` and `dict` take only those. Bounds are the
ranges the notebooks' comments and checks state and that need no model (a layer index against the
model's depth is checked by the notebook once the model is known). `RULES` names each bound once;
`NOTEBOOK_RULES` are a notebook's own (they win). tests/test_parameters.py checks that every rule
names a parameter of its notebook and that every default satisfies its rules.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from utils.models.params import ParamsError


@dataclass(frozen=True)
class Rule:
    """A bound on a value (each item of a list): an interval, a set of choices or a pattern;
    `items`: the type of a list's items; `length`: a list's length."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    pattern: str = ""
    items: str = ""
    length: int | None = None

    def describe(self) -> str:
        parts = []
        if self.items:
            parts.append(f"a list of {self.items}" + (f" of length {self.length}" if self.length else ""))
        each = "each " if self.items else ""
        if self.high == math.inf and self.low > -math.inf:
            parts.append(f"{each}{'above' if self.low_open else 'at least'} {_num(self.low)}")
        elif self.low > -math.inf or self.high < math.inf:
            interval = f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
            parts.append(f"{each}in {interval}")
        if self.choices:
            parts.append("one of " + ", ".join(repr(c) for c in self.choices))
        if self.pattern:
            parts.append(f"matching {self.pattern!r}")
        return ", ".join(parts)

    def holds(self, value) -> bool:
        if self.items:
            if not isinstance(value, list) or (self.length is not None and len(value) != self.length):
                return False
            if not all(_is_type(v, self.items) for v in value):
                return False
            return all(self._holds_one(v) for v in value)
        return self._holds_one(value)

    def _holds_one(self, value) -> bool:
        if self.choices and value not in self.choices:
            return False
        if self.pattern and not re.fullmatch(self.pattern, str(value)):
            return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            above = value > self.low if self.low_open else value >= self.low
            below = value < self.high if self.high_open else value <= self.high
            return bool(above and below)
        return True


def _num(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"


def at_least(low: float) -> Rule:
    return Rule(low=low)


def interval(text: str) -> Rule:
    """Rule of an interval written "(0, 1]", "[0, inf)"."""
    low, high = (float(x) for x in text[1:-1].split(","))
    return Rule(low=low, high=high, low_open=text[0] == "(", high_open=text[-1] == ")")


def choices(*values) -> Rule:
    return Rule(choices=values)


def list_of(items: str, rule: Rule = Rule(), length: int | None = None) -> Rule:
    return Rule(rule.low, rule.high, rule.low_open, rule.high_open, rule.choices, rule.pattern, items, length)


FRACTION_OPEN = interval("(0, 1)")
FRACTION = interval("(0, 1]")

# Bounds of parameters that mean the same in every notebook having them.
RULES: dict[str, Rule] = {
    "n_sequences": at_least(1), "seq_len": at_least(2), "seed": at_least(0), "skip_first": at_least(0),
    "batch_size": at_least(1), "head": at_least(0), "ffn_memory_mb": at_least(0),
    "heavy_tail_alpha": interval("(0, inf)"), "tail_window": list_of("int", at_least(0), length=2),
}
# A notebook's own bounds (they win over RULES).
NOTEBOOK_RULES: dict[str, dict[str, Rule]] = {
    "01_weight_spectra": {
        "fix_fingers": choices("", "clip_xmax", "xmin_peak"), "fit": choices("PL", "TPL"), "bootstrap": at_least(0),
        "level": FRACTION_OPEN,
    },
    "02_attention_kernels": {"layer": at_least(-1), "complex_rtol": FRACTION_OPEN},
    "03_subspace_geometry": {"k": at_least(1), "reference_layer": Rule(pattern=r"auto|\d+")},
    "04_representations": {
        "keep_samples": at_least(4), "lens_tokens": at_least(0), "max_logit_elements": at_least(1),
        "cka_estimator": choices("debiased", "linear"), "block_threshold": FRACTION,
    },
    "05_ffn_eigenspectrum": {
        "spectra_layers": list_of("int"), "accumulator": choices("float32", "float64"),
        "eigen_solver": choices("float64", "float32"),
        "majority": interval("[0, 1)"), "rank_rtol": FRACTION_OPEN, "dominant_share": FRACTION_OPEN,
    },
    "06_training_dynamics": {
        "hidden_size": at_least(1), "num_hidden_layers": at_least(1), "num_attention_heads": at_least(1),
        "intermediate_size": at_least(1), "norm_placement": choices("preln", "postln", "none"),
        "position_embedding": choices("learned", "rope", "none"), "steps": at_least(1), "lr": interval("(0, inf)"),
        "log_every": at_least(1), "eval_windows": at_least(1), "grad_samples": at_least(1),
        "activations": list_of("str"), "batch_sizes": list_of("int", at_least(1)), "forecast_fraction": FRACTION_OPEN,
        "checkpoint_every": at_least(0),
    },
    "07_model_comparison": {"compare_with": list_of("str"), "depth_bins": at_least(1)},
    "08_checkpoint_dynamics": {
        "revisions": list_of("str"), "params_list": list_of("str"), "forecast_lag": at_least(1),
        "rho_min": FRACTION, "majority": FRACTION, "settle_fraction": FRACTION, "settle_tolerance": FRACTION,
        "early_fraction": FRACTION, "from_step": at_least(0),
    },
}


def rules_of(notebook: str) -> dict[str, Rule]:
    return {**RULES, **NOTEBOOK_RULES.get(notebook, {})}


def _is_type(value, typ: str) -> bool:
    if typ == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type(value).__name__ == typ


def coerce(name: str, value, typ: str, where: str):
    """`value` as a `typ` parameter (see the module doc), or ParamsError."""
    if typ == "str" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if typ == "list" and isinstance(value, tuple):
        return list(value)
    if typ in ("int", "float", "str", "bool", "list", "dict") and not _is_type(value, typ):
        hint = " (papermill: pass lists and mappings with -y 'name: [...]')" if typ in ("list", "dict") else ""
        raise ParamsError(f"parameter {name} of {where} must be {typ}, got {value!r} ({type(value).__name__}){hint}")
    return float(value) if typ == "float" else value


def check_parameters(notebook: str, values: dict, types: dict[str, str]) -> dict:
    """The values of a notebook's parameters, checked against their annotations (`types`) and the
    bounds of `rules_of(notebook)`, coerced as the module doc says; ParamsError naming the first
    parameter at fault, its value and what it must be."""
    rules = rules_of(notebook)
    checked = {}
    for name, value in values.items():
        value = coerce(name, value, types.get(name, ""), notebook)
        rule = rules.get(name)
        if rule is not None and not rule.holds(value):
            raise ParamsError(f"parameter {name} of {notebook} must be {rule.describe()}, got {value!r}")
        checked[name] = value
    _check_together(notebook, {**values, **checked})
    return checked


def _check_together(notebook: str, values: dict) -> None:
    """Bounds between parameters: skip_first < seq_len, tail_window [start, stop) with stop - start >= 2."""
    if "skip_first" in values and "seq_len" in values and values["skip_first"] >= values["seq_len"]:
        raise ParamsError(f"parameter skip_first of {notebook} must be below seq_len={values['seq_len']}, "
                          f"got {values['skip_first']}")
    window = values.get("tail_window")
    if isinstance(window, list) and len(window) == 2 and not window[0] < window[1] - 1:
        raise ParamsError(f"parameter tail_window of {notebook} must be [start, stop) with stop - start >= 2, "
                          f"got {window}")
