"""The PySpark job users would otherwise write: read.csv -> mapInPandas(predict) -> write.csv.

python -m bench.spark_job INPUT_DIR MODEL OUTPUT_DIR
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import joblib
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql.types import DoubleType, LongType, StructField, StructType

FEATURES = [f"f{i}" for i in range(20)]


def main(source: str, model_path: str, output: str) -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers need this venv
    spark = SparkSession.builder.master("local[2]").appName("velo-bench").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    schema = StructType([StructField("id", LongType()), *(StructField(f, DoubleType()) for f in FEATURES)])
    out_schema = StructType([*schema.fields, StructField("prediction", LongType())])
    model = spark.sparkContext.broadcast(joblib.load(model_path))

    def predict(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for df in frames:
            df["prediction"] = model.value.predict(df[FEATURES]).astype("int64")
            yield df

    started = time.perf_counter()  # after the JVM's start-up: the job itself
    df = spark.read.csv(f"{source}/part-*.csv", header=True, schema=schema)
    df.mapInPandas(predict, out_schema).write.mode("overwrite").csv(output, header=True)
    print(f"job seconds: {time.perf_counter() - started:.3f}")
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
