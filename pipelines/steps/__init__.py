"""The stages of a trace pipeline, in order: load → generate → curate → (prm) → write."""
