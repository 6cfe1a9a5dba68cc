"""Publish a dataset folder to the Hugging Face Hub: Hub layout, dataset card, push with clear errors."""
