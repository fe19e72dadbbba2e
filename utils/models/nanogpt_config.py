"""The NanoGPT model's config and byte-level tokenizer, without its modelling code.

Importing this module registers model_type "spectra_nanogpt" with AutoConfig, so a nanogpt
checkpoint's config.json reads without `transformers`' modelling stack (about 2 s of imports:
`PreTrainedModel` pulls torch._dynamo and torch.distributed). The model class lives in
`utils.models.nanogpt`, which `utils.models.gguf.auto_class` imports before any model is built.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig, PreTrainedTokenizerFast

MODEL_TYPE = "spectra_nanogpt"
ACTIVATIONS = ("gelu", "relu", "swiglu")
NORMS = ("preln", "postln", "none")
POSITIONS = ("learned", "rope", "none")


class NanoGPTConfig(PreTrainedConfig):
    """Hyperparameters of NanoGPTForCausalLM. `intermediate_size` is the FFN width D
    (None: 4 * hidden_size); for SwiGLU it is the width of gate and up projection alike."""

    model_type = MODEL_TYPE

    vocab_size: int = 256
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int | None = None
    hidden_act: str = "gelu"  # gelu | relu | swiglu
    norm_placement: str = "preln"  # preln | postln | none
    position_embedding: str = "learned"  # learned | rope | none
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    bias: bool = False
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        for name, value, allowed in (("hidden_act", self.hidden_act, ACTIVATIONS),
                                     ("norm_placement", self.norm_placement, NORMS),
                                     ("position_embedding", self.position_embedding, POSITIONS)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: choose one of {allowed}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        super().__post_init__(**kwargs)


AutoConfig.register(MODEL_TYPE, NanoGPTConfig, exist_ok=True)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (Radford et al. 2019, encoder.py),
    the alphabet of the `tokenizers` ByteLevel pre-tokenizer."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer with vocab 256: token id = UTF-8 byte value, no merges, no special
    tokens added to the text. Decoding is exact for any text (bytes are reassembled into UTF-8).

    A BPE model over GPT-2's 256 byte symbols with an empty merge list, ByteLevel
    pre-tokenizer (no prefix space, no regex split) and ByteLevel decoder.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=int(1e9))
