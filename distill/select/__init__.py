"""``distill select``: a cold-start set from a dataset folder, by quality, difficulty and diversity."""
