"""I/O: the lake, Spark sessions, the MLflow registry and data sources."""
