"""Text handling shared by the model kinds that take text: tokenizers and their limits."""
