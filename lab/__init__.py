"""The distillation lab: tiny teachers that really reason, trained on CPU, used through the factory's own commands."""
