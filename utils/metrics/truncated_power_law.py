"""WeightWatcher 0.7.7's `fit="TPL"`: a truncated power law fitted to one matrix's eigenvalues.

The density p(x) ~ x^-alpha exp(-Lambda x) for x >= xmin (Clauset, Shalizi & Newman 2009, table 1;
Martin & Mahoney 2021 use it for ESDs whose tail bends down). WW fits it through the `powerlaw`
package (`WeightWatcher.fit_powerlaw` with `pl_package="powerlaw"`, `WW_powerlaw.pl_fit`):
`powerlaw.Fit(evals > 1e-5, xmin=None or the xmin_peak range, xmax=None,
xmin_distribution="truncated_power_law")`, then alpha and Lambda of `fit.truncated_power_law`, D and
xmin of the fit. Each candidate xmin is a numerical likelihood fit (Nelder-Mead, tol 1e-4, bounds
alpha in [0, 3], Lambda >= 0) whose KS distance needs the upper incomplete gamma function of a
negative order (mpmath): the same numbers are had only from the package's own code, so this path
calls `powerlaw` (pinned to 2.0.0 in requirements.txt) rather than reimplementing it. It costs
seconds per matrix of a few hundred eigenvalues and grows with the square of their number.

WW 0.7.7 passes `powerlaw.Fit` a `distribution=` keyword that powerlaw 2.0 no longer accepts (every
TPL fit then fails there); powerlaw 1.x ignored it, so it is left out here.
"""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import numpy as np

from utils.metrics.spectra import WW_EVALS_THRESH, PowerLawFit
from utils.metrics.weightwatcher import ww_warning


@dataclass(frozen=True)
class TruncatedFit:
    alpha: float  # exponent of x^-alpha
    Lambda: float  # rate of the exponential cut-off exp(-Lambda x) (WW's column name)
    xmin: float  # where the fitted tail starts
    ks_distance: float  # D of the fit at xmin (powerlaw's KS distance, WW's D)
    n_tail: int  # eigenvalues >= xmin among those above 1e-5

    def as_power_law(self) -> PowerLawFit:
        return PowerLawFit(self.alpha, self.xmin, self.ks_distance, self.n_tail)


def truncated_power_law_fit(evals, xmin_range: tuple[float, float] | None = None) -> TruncatedFit | None:
    """WW's TPL fit of the eigenvalues above 1e-5: xmin by powerlaw's find_xmin (smallest KS
    distance of a truncated power law fitted by maximum likelihood at each candidate: the unique
    eigenvalues in `xmin_range`, default all, but the largest), then alpha and Lambda refitted at
    that xmin. None where the fit fails (WW: status "failed"): fewer than 2 candidates, or an
    arithmetic error inside powerlaw."""
    import powerlaw  # imported here: it loads matplotlib.pyplot and scipy.optimize (~1 s), needed by fit="TPL" only

    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > WW_EVALS_THRESH]
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            fit = powerlaw.Fit(x, xmin=xmin_range, xmax=None, verbose=False,
                               xmin_distribution="truncated_power_law")
            if fit.alpha is None or np.isnan(fit.alpha):
                return None
            tpl = fit.truncated_power_law
    except (ValueError, ArithmeticError):
        return None
    return TruncatedFit(float(tpl.alpha), float(tpl.Lambda), float(fit.xmin), float(fit.D),
                        int((x >= fit.xmin).sum()))


def truncated_columns(evals, fit: TruncatedFit | None) -> dict:
    """The columns WW writes with fit="TPL" (apply_powerlaw): alpha, Lambda, xmin, D,
    num_pl_spikes = #{lambda >= xmin} over all eigenvalues, status, warning;
    sigma NaN (powerlaw's truncated power law has no standard error: WW writes its NaN) and xmax
    NaN (WW writes powerlaw's Fit.xmax, None). No fit: NaN and "failed" (WW writes -1)."""
    nan = float("nan")
    if fit is None:
        return {"alpha": nan, "Lambda": nan, "xmin": nan, "xmax": nan, "D": nan, "sigma": nan,
                "num_pl_spikes": -1, "status": "failed", "warning": ""}
    evals = np.asarray(evals, dtype=np.float64)
    return {"alpha": fit.alpha, "Lambda": fit.Lambda, "xmin": fit.xmin, "xmax": nan, "D": fit.ks_distance,
            "sigma": nan, "num_pl_spikes": int((evals >= fit.xmin).sum()), "status": "success",
            "warning": ww_warning(fit.alpha)}


def tail_density(x: np.ndarray, alpha: float, xmin: float, Lambda: float = 0.0) -> np.ndarray:
    """The fitted density on x >= xmin, normalised over [xmin, inf): the power law
    (alpha - 1) / xmin (x / xmin)^-alpha when Lambda = 0, else the truncated power law
    x^-alpha e^(-Lambda x) Lambda^(1 - alpha) / Gamma(1 - alpha, Lambda xmin) (powerlaw's
    Truncated_Power_Law._pdf_continuous_normalizer: int_xmin^inf t^-alpha e^(-Lambda t) dt =
    Lambda^(alpha - 1) Gamma(1 - alpha, Lambda xmin), the upper incomplete gamma, by mpmath)."""
    x = np.asarray(x, dtype=np.float64)
    if not Lambda > 0:
        return (alpha - 1) / xmin * (x / xmin) ** -alpha
    import mpmath

    norm = float(mpmath.gammainc(1 - alpha, Lambda * xmin)) * Lambda ** (alpha - 1)
    return x**-alpha * np.exp(-Lambda * x) / norm
