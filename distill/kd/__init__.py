"""The teacher's distribution on given token sequences: KD targets, and later on-policy distillation."""
