"""Training of the tokenizer and the dynamics transformer (single process or torchrun)."""
