"""Notebook 04's analysis (utils.analyses.representations): the findings' fields against the
tables they summarise and against independent recomputations (torch.cov of the embedding matrix,
token norms of the CKA sample)."""

from __future__ import annotations

import numpy as np
import torch

from utils import load_model
from utils.analyses import representations as rep
from utils.engine.representations import activation_spectra
from utils.metrics.spectra import effective_rank

from .conftest import TESTS_DIR


def test_findings_fields_follow_the_measurements():
    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    p = rep.RepresentationsParameters(n_sequences=6, seq_len=24, batch_size=4, keep_samples=100, lens_tokens=0,
                                      cache=False, block_threshold=0.5)
    run = rep.measure(loaded, p)
    L, d = loaded.dims.L, loaded.dims.d
    cka = rep.cka_structure(run, d, p)
    assert cka.matrix.shape == (L + 1, L + 1) and run.n_cka == 100
    for a, b in cka.multi_layer_blocks:  # a block: adjacent CKA at or above the threshold inside it
        assert (cka.adjacent[a:b] >= p.block_threshold).all()
    assert cka.adjacent[cka.sharpest_boundary] == cka.adjacent.min()
    spectra, _ = activation_spectra(run.eigenvalues)
    embedding = rep.embedding_vs_final(run)
    E = loaded.adapter.embedding().double()  # (V, d)
    expected = torch.linalg.eigvalsh(torch.cov(E.T)).flip(0).numpy()
    np.testing.assert_allclose(embedding.embedding_eigenvalues, expected, rtol=1e-8, atol=1e-12)
    s = torch.linalg.svdvals(E).numpy()
    assert embedding.embedding_eff_rank_singular == np.float64(effective_rank(s)) or abs(
        embedding.embedding_eff_rank_singular - effective_rank(s)) < 1e-8

    found = rep.findings(loaded, run, cka, spectra, embedding, p)
    norms = run.samples[: L + 1].norm(dim=2)
    ratio = norms.max(1).values / norms.median(1).values
    assert found.outliers.layer == int(ratio.argmax()) and abs(found.outliers.ratio - float(ratio.max())) < 1e-6
    inner = spectra.iloc[1:]
    assert found.bottleneck.layer == int(inner.layer[inner.eff_rank.idxmin()])
    lens = run.lens
    assert found.lens.final_median_rank == lens.median_rank.iloc[-1]
    assert found.lens.first_half_agreement == int(np.argmax(lens.agreement.to_numpy() >= 0.5))
    assert found.lens.entropy_peak == int(lens.entropy.idxmax())
    blocks = run.drift[run.drift.step != "final_norm"]
    assert found.drift.turn_block == int(blocks.layer[blocks.cosine.idxmin()])
    assert found.drift.final_norm_l2 == run.drift.l2.iloc[-1]  # llama has a final norm
    assert len(found.sentences()) >= 7
