"""The PySpark job users would otherwise write: read.csv -> mapInPandas(predict) -> write.csv.

python -m bench.spark_job INPUT_DIR OUTPUT_DIR MODEL [MODEL ...]

One JVM (one SparkSession, local[2]) runs the job once per model, in the order given, each into
OUTPUT_DIR/<model file's stem>, one partition per input file. Prints the start-up (from this
process's creation to the session up), each model's load and each job's seconds: a model's end
to end is the start-up, its load and its job.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import pandas as pd
import psutil
from pyspark.sql import SparkSession
from pyspark.sql.types import DoubleType, LongType, StructField, StructType

FEATURES = [f"f{i}" for i in range(20)]  # not bench.common's: its imports (Redis...) would add to Spark's start-up


def main(source: str, output: str, model_paths: list[str]) -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers need this venv
    # One partition per file, as Velosiped has one job per file. Spark's default (128 MB partitions)
    # packs 8 files of 39 MB into 3 partitions, and one core idles while the third runs alone.
    largest = max(p.stat().st_size for p in Path(source).glob("part-*.csv"))
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("velo-bench")
        .config("spark.sql.files.maxPartitionBytes", str(largest + (1 << 20)))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    print(f"startup seconds: {time.time() - psutil.Process().create_time():.3f}", flush=True)
    schema = StructType([StructField("id", LongType()), *(StructField(f, DoubleType()) for f in FEATURES)])
    out_schema = StructType([*schema.fields, StructField("prediction", LongType())])
    for model_path in model_paths:
        name = Path(model_path).stem
        started = time.perf_counter()
        model = spark.sparkContext.broadcast(joblib.load(model_path))
        print(f"load seconds {name}: {time.perf_counter() - started:.3f}", flush=True)
        started = time.perf_counter()  # after the JVM's start-up and the model's load: the job itself

        def predict(frames: Iterator[pd.DataFrame], model=model) -> Iterator[pd.DataFrame]:
            for df in frames:
                df["prediction"] = model.value.predict(df[FEATURES]).astype("int64")
                yield df

        df = spark.read.csv(f"{source}/part-*.csv", header=True, schema=schema)
        df.mapInPandas(predict, out_schema).write.mode("overwrite").csv(f"{output}/{name}", header=True)
        print(f"job seconds {name}: {time.perf_counter() - started:.3f}", flush=True)
        model.destroy()
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
