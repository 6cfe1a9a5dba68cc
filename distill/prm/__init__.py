"""`distill prm-score` and `distill prm-eval`: the PRM library (``prm/``) as commands over dataset folders."""
