"""`distill list` and `distill run`: a spec's trace dataset, generated, verified and written."""
