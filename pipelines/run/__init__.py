"""A run of a spec: its plan, preflight, fingerprint, locks, progress, log and process tree; a spec run as a sub-job."""
