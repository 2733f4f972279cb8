"""Ollama's API: chat, generate, embed and the model lists, over the same services as the others."""
