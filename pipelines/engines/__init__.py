"""Where a run's distilabel pipeline executes: ``local`` (one machine) or ``ray`` (a cluster)."""
