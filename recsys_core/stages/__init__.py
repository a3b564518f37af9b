"""Stages: each wires pure logic to the lake, Spark, MLflow for one step of the pipeline."""
