"""`distill view`: a local web page over dataset folders, live runs and eval reports (DuckDB over parquet)."""
