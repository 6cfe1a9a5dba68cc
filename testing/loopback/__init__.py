"""Loopback servers that speak real protocols (OpenAI-compatible chat completions) on 127.0.0.1."""
