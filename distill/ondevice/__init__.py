"""The on-device student: post-training quantization (torchao), GGUF export, load-and-generate checks."""
