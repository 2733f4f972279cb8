"""Encoder models as text services: tokenize, run through the batcher, pool, normalize or score."""
