"""Teacher clients as distilabel LLMs: vLLM servers (with retries and a rolling window) or in-process engines."""
