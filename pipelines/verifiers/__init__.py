"""Answer verifiers that need more than a string comparison: sandboxed code execution and an LLM judge."""
