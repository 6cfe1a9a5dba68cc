"""Test fakes and tiny models: loopback servers, a tiny Qwen2 and PRM. The product never imports this package."""
