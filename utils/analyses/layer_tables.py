"""The one per-layer table layout of the analyses: long rows (step, layer, metric, value).

Notebook 08 measures into this layout directly (trajectory.csv). Notebook 06's spectral records
carry per-layer metrics as `<metric>_l<i>` keys, one row per record, because training_log.csv keeps
that wide layout (a file other tools read, unchanged byte for byte); `layer_table` turns such a
frame into the long layout, so both notebooks read layers x steps with one `layer_step_matrix`.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

LONG_COLUMNS = ["step", "layer", "metric", "value"]
_PER_LAYER = re.compile(r"^(?P<metric>.+)_l(?P<layer>\d+)$")


def layer_table(records: pd.DataFrame) -> pd.DataFrame:
    """Long (step, layer, metric, value) rows of the `<metric>_l<i>` columns of a records frame."""
    found = [(c, m.group("metric"), int(m.group("layer"))) for c in records.columns if (m := _PER_LAYER.match(c))]
    parts = [pd.DataFrame({"step": records["step"].to_numpy(), "layer": layer, "metric": metric,
                           "value": records[column].to_numpy(dtype=float)}) for column, metric, layer in found]
    return pd.concat(parts, ignore_index=True)[LONG_COLUMNS] if parts else pd.DataFrame(columns=LONG_COLUMNS)


def layer_step_matrix(table: pd.DataFrame, metric: str, dropna: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(layers, steps) values of one metric of a long table, with its layer and step labels (sorted).
    dropna=False keeps layers and steps whose values are all NaN."""
    wide = table[table.metric == metric].pivot_table(index="layer", columns="step", values="value", aggfunc="first",
                                                     dropna=dropna)
    return wide.to_numpy(), wide.index.to_numpy(), wide.columns.to_numpy()
