"""Models: loading a base the way an adapter trains against it, the LM-head split, the loss, the
float32 CPU kernels, the fast BLAS, and the two embedded models (SmolLM2 from its GGUF, a tiny
random Gemma)."""
