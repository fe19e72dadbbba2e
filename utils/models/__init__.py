"""Models: params files, where a model lives (sources), loading, GGUF dequantization, the
safetensors tensor store, family adapters (one weight vocabulary), synthetic checkpoints and
their shapes, nanoGPT. Imports only the leaf modules (paths, atomic_io, machine).
"""
