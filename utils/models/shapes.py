"""The shapes of public models that `utils.models.synthetic` writes random checkpoints at, and that
params files of `kind: synthetic` name. Data only (no torch), so params validation stays light."""

from __future__ import annotations

# Public configs (config.json on the HF hub), shape-defining fields only.
SHAPES: dict[str, dict] = {
    "llama-3.2-1b": dict(  # meta-llama/Llama-3.2-1B
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        tie_word_embeddings=True, hidden_act="silu", attention_bias=False, mlp_bias=False,
        initializer_range=0.02,
    ),
    "qwen2.5-3b": dict(  # Qwen/Qwen2.5-3B
        model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        sliding_window=32768, use_sliding_window=False, max_window_layers=36,
        tie_word_embeddings=True, hidden_act="silu", initializer_range=0.02,
    ),
    "qwen2.5-7b": dict(  # Qwen/Qwen2.5-7B
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-6,
        sliding_window=131072, use_sliding_window=False, max_window_layers=28,
        tie_word_embeddings=False, hidden_act="silu", initializer_range=0.02,
    ),
}
