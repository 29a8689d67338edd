"""The Python API's `velosiped.predict`: the batch output of a frame's rows, on the batch's code."""

from __future__ import annotations

import io
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest

import velosiped
from tests.helpers import csv_bytes, dump_model, fit_model, make_frame
from velosiped.errors import InputError
from worker.scoring import score_stream


def batch_output(frame: pd.DataFrame, model, **options) -> pd.DataFrame:
    out = io.BytesIO()
    score_stream(io.BytesIO(csv_bytes(frame)), out, model, name="f.csv", **options)
    return pd.read_csv(io.BytesIO(out.getvalue()))


@pytest.mark.parametrize("options", [{}, {"proba": True}, {"keep": ["id"], "proba": True}])
def test_predict_of_a_dataframe_is_the_batch_output_of_its_rows(options):
    model = fit_model("multiclass")
    frame = make_frame(50, seed=8)
    got = velosiped.predict(frame, model, **options)
    pd.testing.assert_frame_equal(got, batch_output(frame, model, **options), check_dtype=False, rtol=1e-12)


def test_predict_takes_an_arrow_table_and_a_model_file(tmp_path):
    model = fit_model()
    frame = make_frame(10, seed=2)
    got = velosiped.predict(pa.Table.from_pandas(frame), str(dump_model(model, tmp_path / "m.joblib")), keep=[])
    assert isinstance(got, pa.Table)
    assert got.column_names == ["prediction"]
    assert got.column("prediction").to_pylist() == list(model.predict(frame[list(model.feature_names_in_)]))


def test_predict_names_a_missing_feature():
    with pytest.raises(InputError, match="missing feature columns: f3"):
        velosiped.predict(make_frame(3).drop(columns="f3"), fit_model())


def test_importing_velosiped_loads_neither_side_nor_pandas():
    code = (
        "import sys, velosiped; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'dispatcher', 'worker', 'pandas', 'sklearn'}))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_the_python_api_and_the_batch_api_default_to_velo_dispatch_options(tmp_path):
    # The CLI is a thin layer: velosiped.Client.dispatch and POST /v1/batches plan a batch with
    # the options `velo dispatch` takes when none are given (small files grouped, statistics on)
    from dispatcher.cli import cli
    from dispatcher.serve.batches import DispatchOptions
    from velosiped.api import DISPATCH_DEFAULTS

    defaults = {p.name: p.default for p in cli.commands["dispatch"].params}
    for name in ("group_size", "group_bytes", "stats", "engine", "suffix", "sep", "encoding"):
        assert DISPATCH_DEFAULTS[name] == defaults[name], name
        assert getattr(DispatchOptions(), name) == defaults[name], name
