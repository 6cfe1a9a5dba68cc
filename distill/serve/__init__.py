"""Serving models with vLLM's OpenAI-compatible server: the teacher, a PRM, a student under evaluation."""
