"""Notebook 04 executed on the tiny random model of every family; assertions on its outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils import load_params

from .conftest import tiny_model_ids, tiny_models

PARAMETERS = dict(n_sequences=6, seq_len=24, batch_size=4, keep_samples=100, lens_tokens=0, cache=False, skip_first=1)


@pytest.mark.parametrize("params", tiny_models, ids=tiny_model_ids)
def test_notebook_04(run_notebook, params):
    out = run_notebook("04_representations", params, **PARAMETERS)
    p = load_params(params)
    L = p.source["config"].get("num_hidden_layers") or p.source["config"]["n_layer"]
    encoder = p.task == "encoder"

    cka = np.load(out / "cka.npy")
    assert cka.shape == (L + 1, L + 1)
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-6)
    np.testing.assert_allclose(cka, cka.T, atol=1e-12)
    assert np.all(cka <= 1 + 1e-6)

    spectra = pd.read_csv(out / "activation_spectra.csv")
    assert list(spectra.columns[:4]) == ["layer", "eff_rank", "participation_ratio", "n90"]
    assert list(spectra.layer) == list(range(L + 1))
    assert (spectra.eff_rank >= 1).all() and (spectra.n90 >= 1).all()
    assert (spectra.participation_ratio <= spectra.eff_rank * 1.0001 + 1e-9).all()  # PR <= exp(H) (Renyi order)

    drift = pd.read_csv(out / "drift.csv")
    assert list(drift.columns) == ["layer", "step", "cosine", "l2"]
    assert len(drift) == L + (0 if encoder else 1)
    assert ((drift.cosine >= -1) & (drift.cosine <= 1)).all() and (drift.l2 >= 0).all()

    report = (out / "report.md").read_text()
    assert "stdlib-docs" in report and f"| {6 * (24 - 1)} " in report  # tokens counted: the first position of each window is left out
    if encoder:
        assert not (out / "logit_lens.csv").exists()
        assert "Logit lens skipped" in report
        return
    lens = pd.read_csv(out / "logit_lens.csv")
    assert list(lens.columns[:7]) == ["layer", "entropy", "top1_prob", "median_rank", "agreement", "kl_to_final",
                                      "cross_entropy"]
    assert list(lens.layer) == list(range(L + 1)) and (lens.n_tokens == 6 * (24 - 1 - 1)).all()  # a next token, and not the skipped first position
    assert lens.agreement.iloc[-1] == 1.0 and lens.kl_to_final.iloc[-1] == pytest.approx(0.0, abs=1e-6)
    assert ((lens.top1_prob > 0) & (lens.top1_prob <= 1)).all()
    assert ((lens.median_rank >= 1) & (lens.median_rank <= 256)).all()
    assert (lens.entropy <= np.log(256) + 1e-6).all() and (lens.kl_to_final >= 0).all()
    for name in ("cka.png", "logit_lens.png", "drift.png", "effective_rank.png", "eigenspectra.png",
                 "embedding_vs_final.png"):
        assert (out / name).stat().st_size > 0
