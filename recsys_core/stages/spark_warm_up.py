"""The workload of the Spark class-data archive (``io.spark_cds``): run by spark-submit, it takes the
Spark code paths of the chain (ingest, features, the ALS baseline) on a few thousand synthetic events,
so that the JVM has loaded their classes when it writes the archive."""

from __future__ import annotations

import logging
import tempfile


def main() -> None:
    """The archive's workload: the Spark code paths of the chain, on a few thousand synthetic events."""
    from datetime import date

    import scipy.sparse as sp

    from recsys_core.config import settings_for
    from recsys_core.io.datasets.synthetic import SyntheticSpec, generate_logs
    from recsys_core.io.lake import Lake
    from recsys_core.io.spark import spark_session
    from recsys_core.models.als import fit_als
    from recsys_core.stages.features import run_features
    from recsys_core.stages.ingest import landed_dates, run_ingest

    with tempfile.TemporaryDirectory(prefix="recsys-spark-cds-") as root:
        settings = settings_for(
            data_root=root, spark={"shuffle_partitions": 2, "class_data_sharing": False}, features={"text_embeddings": False}
        )
        spec = SyntheticSpec(events=3000, users=60, items=50, days=4, seed=1, bad_fraction=0.01, start=date(2024, 1, 1))
        generate_logs(spec, Lake(settings.lake))
        spark = spark_session(settings, "spark-cds")
        days = landed_dates(Lake(settings.lake))
        run_ingest(settings, days, spark=spark)
        run_features(settings, days[-1], spark=spark)
        fit_als(settings, sp.random(40, 30, density=0.2, format="csr", random_state=1), spark)
        spark.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
