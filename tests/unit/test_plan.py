"""Planning on moto's in-process S3 and a local folder: names, paging, skip reasons."""

from __future__ import annotations

from dispatcher.plan import Options, output_for, plan


def test_output_names():
    assert output_for("s3://bkt/a/", "s3://bkt/a/1.csv", ".out", None) == "s3://bkt/a/1.out.csv"
    assert output_for("s3://bkt/a/", "s3://bkt/a/x/1.csv.gz", ".out", None) == "s3://bkt/a/x/1.out.csv.gz"
    assert output_for("s3://bkt/a/", "s3://bkt/a/x/1.csv", ".out", "s3://c/o/") == "s3://c/o/x/1.out.csv"
    assert output_for("/d/", "/d/x/1.csv", ".pred", "/o") == "/o/x/1.pred.csv"


def test_listing_pages_past_1000_and_never_takes_outputs(mock_s3):
    for i in range(1_003):
        mock_s3.put_object(Bucket="bkt", Key=f"in/{i:04}.csv", Body=b"a\n1\n")
    mock_s3.put_object(Bucket="bkt", Key="in/0000.out.csv", Body=b"a,prediction\n1,0\n")
    mock_s3.put_object(Bucket="bkt", Key="in/notes.txt", Body=b"x")
    planned = list(plan("s3://bkt/in/", Options(model="m", model_version="v")))
    assert len(planned) == 1_003
    assert {p.reason for p in planned} == {"new"}
    assert planned[0].output == "s3://bkt/in/0000.out.csv"


def test_skip_reasons_follow_the_lineage(mock_s3):
    mock_s3.put_object(Bucket="bkt", Key="in/1.csv", Body=b"a\n1\n")
    etag = "etag:" + mock_s3.head_object(Bucket="bkt", Key="in/1.csv")["ETag"].strip('"')
    meta = {"velo-input-version": etag, "velo-model-version": "v1", "velo-params": "keep=*;proba=0"}
    mock_s3.put_object(Bucket="bkt", Key="in/1.out.csv", Body=b"x", Metadata=meta)

    def reason(**kw) -> str:
        opts = {"model": "m", "model_version": "v1", **kw}
        return next(iter(plan("s3://bkt/in/", Options(**opts)))).reason

    assert reason() == "already done"
    assert reason(model_version="v2") == "model changed"
    assert reason(proba=True) == "options changed"
    assert reason(force=True) == "forced"
    mock_s3.put_object(Bucket="bkt", Key="in/1.csv", Body=b"a\n2\n")
    assert reason() == "input changed"


def test_local_folder_plan(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.csv").write_text("a\n1\n")
    (tmp_path / "a" / "1.out.csv").write_text("a,prediction\n1,0\n")
    (tmp_path / "2.csv.gz").write_bytes(b"")
    planned = list(plan(str(tmp_path), Options(model="m", model_version="v")))
    assert [(p.info.uri, p.output, p.reason) for p in planned] == [
        (str(tmp_path / "2.csv.gz"), str(tmp_path / "2.out.csv.gz"), "new"),
        (str(tmp_path / "a" / "1.csv"), str(tmp_path / "a" / "1.out.csv"), "new"),  # output has no lineage
    ]
