"""The servers of the cluster tests (tests/cluster/engines.py), one of each per test session."""

from .engines import mlflow_server, postgres, s3, spark_cluster

__all__ = ["mlflow_server", "postgres", "s3", "spark_cluster"]
