"""The Ray engine (``run.engine: ray``): the same pipeline with every stage copy a Ray actor; docs/scaling.md."""
