"""utils.metrics.truncated_power_law: WW's fit="TPL" (compared with analyze() in tests/test_weightwatcher.py)
and the fitted density drawn on notebook 01's ESDs."""

from __future__ import annotations

import numpy as np
import powerlaw
import pytest
from scipy import integrate

from utils.metrics.truncated_power_law import tail_density, truncated_columns, truncated_power_law_fit


@pytest.mark.parametrize("alpha, Lambda", [(2.5, 0.0), (2.5, 0.3), (0.7, 0.05), (1.0 + 1e-9, 1.0)])
def test_tail_density_integrates_to_one_over_the_tail(alpha, Lambda):
    xmin = 1.7
    total, _ = integrate.quad(lambda t: tail_density(np.array([t]), alpha, xmin, Lambda)[0], xmin, np.inf, limit=200)
    assert total == pytest.approx(1.0, rel=1e-6)


def test_tail_density_is_powerlaws_pdf_of_the_fit():
    x = np.sort(np.random.default_rng(3).pareto(1.5, 80) + 1.0)
    fit = truncated_power_law_fit(x)
    dist = powerlaw.Truncated_Power_Law(xmin=fit.xmin, parameters=[fit.alpha, fit.Lambda], verbose=0)
    grid = np.linspace(fit.xmin, x.max(), 7)
    np.testing.assert_allclose(tail_density(grid, fit.alpha, fit.xmin, fit.Lambda), dist.pdf(grid), rtol=1e-8)


def test_a_fit_without_candidates_fails_as_weightwatcher_reports_it():
    assert truncated_power_law_fit(np.array([1.0, 2.0])) is None
    row = truncated_columns(np.array([1.0, 2.0]), None)
    assert row["status"] == "failed" and row["num_pl_spikes"] == -1 and np.isnan(row["alpha"]) and np.isnan(row["Lambda"])
