"""Problem filters applied before generation: decontamination against benchmarks, then dedupe."""
