"""``distill mix``: several dataset folders into one export, with ratios or caps per source."""
