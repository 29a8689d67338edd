"""One big file over the fleet: cuts at line ends, the shard payload, assembly in order, failures, retry.

Boundaries are checked on a local folder and on moto's in-process S3; the worker side runs real
RQ workers on fakeredis (with Lua), as tests/unit/test_worker.py does.
"""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import replace

import pandas as pd
import pytest

from dispatcher import sharding
from dispatcher.enqueue import enqueue_batch, retry_failed
from dispatcher.plan import Options, plan
from dispatcher.status import describe
from tests.helpers import (
    a_payload,
    assert_output_matches,
    csv_bytes,
    dump_model,
    expected_output,
    fit_model,
    make_frame,
)
from velosiped import storage
from velosiped.errors import ConfigError, InputError, StorageError
from velosiped.jobs import job_id, shard_group, validate
from velosiped.models import version_of
from velosiped.rqapi import make_queue
from worker import shards
from worker.runner import VeloWorker
from worker.scoring import score_stream

# ------------------------------------------------------------------------------------------- cutting


@pytest.fixture(params=["local", "s3"])
def put(request, tmp_path):
    """put(name, data) -> ObjectInfo of a file stored locally or on moto's S3, as a listing gives it."""
    if request.param == "s3":
        s3 = request.getfixturevalue("mock_s3")

        def put_s3(name: str, data: bytes) -> storage.ObjectInfo:
            s3.put_object(Bucket="bkt", Key=f"in/{name}", Body=data)
            return storage.head(f"s3://bkt/in/{name}")

        return put_s3

    def put_local(name: str, data: bytes) -> storage.ObjectInfo:
        (tmp_path / name).write_bytes(data)
        return storage.head(str(tmp_path / name))

    return put_local


def assert_cut_at_line_ends(data: bytes, cuts: list[tuple[int, int]]) -> None:
    header_end = data.index(b"\n") + 1
    assert cuts[0][0] == header_end and cuts[-1][1] == len(data)
    assert all(start < end for start, end in cuts)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cuts))  # contiguous: no row lost or doubled
    assert all(data[end - 1 : end] == b"\n" for _, end in cuts)


def test_cuts_fall_after_line_ends_and_cover_every_row_once(put):
    data = csv_bytes(make_frame(2_000, seed=1))  # ~80 KB, lines of ~40-50 bytes
    info = put("a.csv", data)
    cuts = sharding.bounds(info, len(data) // 7 + 1)
    assert len(cuts) == 7  # ceil(size / shard_size)
    assert_cut_at_line_ends(data, cuts)


def test_a_line_straddling_the_nominal_cut_goes_whole_to_the_earlier_shard(put):
    # Given a file whose nominal middle (size // 2) falls inside the long second row
    data = b"h\n" + b"1" * 10 + b"\n" + b"2" * 30 + b"\n" + b"3" * 10 + b"\n"
    middle = len(data) // 2
    assert data[middle - 1 : middle] != b"\n"
    # Then the cut moves to the end of that row
    cuts = sharding.bounds(put("a.csv", data), len(data) // 2 + 1)
    assert cuts == [(2, data.index(b"3")), (data.index(b"3"), len(data))]


def test_a_nominal_cut_on_a_line_start_stays_there(put):
    data = b"h\n" + b"a" * 13 + b"\n" + b"b" * 15 + b"\n"  # 2 + 14 + 16 = 32 bytes: the middle is 16
    assert data[15:16] == b"\n"
    assert sharding.bounds(put("a.csv", data), 16) == [(2, 16), (16, 32)]


def test_crlf_line_ends_stay_whole(put):
    data = b"id,f0\r\n" + b"".join(b"%d,0.5\r\n" % i for i in range(400))
    cuts = sharding.bounds(put("a.csv", data), len(data) // 3 + 1)
    assert len(cuts) == 3
    assert_cut_at_line_ends(data, cuts)
    assert all(data[end - 2 : end] == b"\r\n" for _, end in cuts)


def test_fewer_lines_than_shards_gives_one_shard_per_line_at_most(put):
    data = b"id,f0\n1,2\n3,4\n5,6\n"
    cuts = sharding.bounds(put("a.csv", data), 1)  # asks for 20 shards
    assert cuts == [(6, 10), (10, 14), (14, 18)]


def test_files_that_are_not_split(put, tmp_path):
    assert sharding.bounds(put("h.csv", b"id,f0,f1\n" * 1), 2) == []  # header only
    assert sharding.bounds(put("one.csv", b"id\n" + b"1" * 100 + b"\n"), 10) == []  # one row
    assert sharding.bounds(put("nolf.csv", b"x" * 100), 10) == []  # no line end at all
    big = csv_bytes(make_frame(200))
    assert sharding.bounds(put("small.csv", big), len(big)) == []  # not above the shard size
    assert sharding.bounds(put("off.csv", big), 0) == []  # sharding off
    assert sharding.bounds(put("a.csv.gz", big), 100) == []  # compressed: byte offsets are not rows
    assert sharding.bounds(put("a.parquet", big), 100) == []
    assert sharding.bounds(put("u.csv", big), 100, encoding="utf-16") == []  # a line end is not one byte
    assert len(sharding.bounds(put("l.csv", big), 1000, encoding="latin-1")) > 1


def test_a_file_changed_since_the_listing_is_refused(put):
    info = put("a.csv", csv_bytes(make_frame(100)))
    put("a.csv", csv_bytes(make_frame(120)))
    with pytest.raises(InputError, match="changed since it was dispatched"):
        sharding.bounds(info, 100)


def test_shard_sizes_parse():
    assert sharding.parse_size("0") == 0
    assert sharding.parse_size("1048576") == 1 << 20
    assert sharding.parse_size("512MB") == sharding.parse_size("512mib") == sharding.parse_size("512M") == 512 << 20
    assert sharding.parse_size("1GB") == sharding.parse_size(" 1 GiB ") == 1 << 30
    assert sharding.parse_size("1.5g") == 3 << 29
    for bad in ("abc", "MB", "1XB", "inf", "nan"):
        with pytest.raises(ConfigError, match="not a size"):
            sharding.parse_size(bad)
    for small in ("1000", "-1GB"):
        with pytest.raises(ConfigError, match="use 0 \\(off\\) or at least 1MB"):
            sharding.parse_size(small)


# ------------------------------------------------------------------------------------------ payloads

BASE = a_payload(
    input="s3://b/a.csv",
    input_version="etag:1",
    output="s3://b/a.out.csv",
    model="s3://b/m.joblib",
    model_version="etag:2",
    batch="b1",
)


def test_shard_field_is_optional_and_strict():
    assert validate(dict(BASE)) == BASE  # jobs from before sharding
    assert validate({**BASE, "shard": None})["shard"] is None
    good = {"index": 1, "count": 3, "start": 10, "end": 20}
    assert validate({**BASE, "shard": good})["shard"] == good
    for bad in (
        [1, 3, 10, 20],
        {"index": 1, "count": 3, "start": 10},
        {**good, "extra": 1},
        {**good, "index": "1"},
        {**good, "end": 20.0},
        {**good, "index": True},
        {**good, "index": 3},
        {**good, "index": -1},
        {**good, "start": 20},
        {**good, "start": -5},
    ):
        with pytest.raises(InputError, match="job payload: shard"):
            validate({**BASE, "shard": bad})
    with pytest.raises(InputError, match="unknown fields"):
        validate({**BASE, "shards": good})


def test_each_shard_is_its_own_job_and_a_whole_file_keeps_its_id():
    jobs = sharding.expand(dict(BASE), [(10, 20), (20, 30), (30, 40)])
    assert [j["shard"] for j in jobs] == [
        {"index": 0, "count": 3, "start": 10, "end": 20},
        {"index": 1, "count": 3, "start": 20, "end": 30},
        {"index": 2, "count": 3, "start": 30, "end": 40},
    ]
    assert len({job_id(j) for j in jobs} | {job_id(BASE)}) == 4
    assert job_id({**BASE, "shard": None}) == job_id(BASE)
    assert sharding.expand(dict(BASE), []) == [BASE]
    assert len({shard_group(j) for j in jobs}) == 1  # one file, one progress hash, one parts folder
    assert json.loads(json.dumps(jobs[0])) == jobs[0]  # plain JSON on the wire


# ------------------------------------------------------------------------------------------- workers


@pytest.fixture
def model():
    return fit_model()


def work(redis, reverse: bool = False) -> None:
    """Drain the queue with one worker; ``reverse``: in the opposite order of enqueueing."""
    if reverse:
        ids = redis.lrange("rq:queue:velo", 0, -1)
        redis.delete("rq:queue:velo")
        redis.rpush("rq:queue:velo", *reversed(ids))
    VeloWorker([make_queue(redis, "velo")], connection=redis).work(burst=True)


def whole(data: bytes, model, **kw) -> bytes:
    """The output of the file scored in one piece."""
    out = io.BytesIO()
    score_stream(io.BytesIO(data), out, model, name="x", **kw)
    return out.getvalue()


def options(tmp_path, model, shard_size: int, **kw) -> Options:
    path = dump_model(model, tmp_path / "m.joblib")
    return Options(model=str(path), model_version=version_of(str(path)), shard_size=shard_size, **kw)


def dispatch(redis, source: str, opts: Options):
    planned = list(plan(source, opts))
    return planned, enqueue_batch(redis, "velo", source, opts, planned)


def test_shards_run_in_any_order_and_assemble_into_the_whole_file_output(redis, tmp_path, model):
    # Given a ~200 KB file and another small one, with a shard size that splits the big one in 5
    data = csv_bytes(make_frame(4_000, seed=5))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.csv").write_bytes(data)
    (tmp_path / "in" / "small.csv").write_bytes(csv_bytes(make_frame(10)))
    opts = options(tmp_path, model, shard_size=len(data) // 5 + 1)
    planned, batch = dispatch(redis, str(tmp_path / "in"), opts)
    assert [len(p.shards) for p in planned] == [5, 0]
    assert (batch.enqueued, redis.llen("rq:queue:velo")) == (2, 6)  # files, jobs
    # When the worker takes the shards last one first
    work(redis, reverse=True)
    # Then the output is byte for byte the whole-file output: header once, rows in order
    assert (tmp_path / "in" / "big.out.csv").read_bytes() == whole(data, model)
    # And the batch counts each file once, with all its rows
    b = describe(redis, batch.id)
    assert (b["total"], b["done"], b["failed"], b["rows"]) == (2, 2, 0, 4_010)
    # And no part is left, the lineage says how it was made, and a new plan skips the file
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [
        "big.csv",
        "big.out.csv",
        "big.out.csv.velo.json",
        "small.csv",
        "small.out.csv",
        "small.out.csv.velo.json",
    ]
    assert json.loads((tmp_path / "in" / "big.out.csv.velo.json").read_text())["velo-rows"] == "4000"
    assert {p.reason for p in plan(str(tmp_path / "in"), opts)} == {"already done"}


def test_keep_and_proba_and_other_separators_shard_too(redis, tmp_path, model):
    frame = make_frame(3_000, seed=6)
    data = frame.to_csv(index=False, sep=";").encode()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_bytes(data)
    opts = options(tmp_path, model, shard_size=len(data) // 3 + 1, keep=["id"], proba=True, sep=";")
    dispatch(redis, str(tmp_path / "in"), opts)
    work(redis)
    out = (tmp_path / "in" / "x.out.csv").read_bytes()
    # Probabilities may differ in their last digit from a whole run, as between any two block sizes
    # (the model's vectorised maths depends on the block's length); everything else is identical.
    assert out.count(b"id;prediction;proba_0;proba_1\n") == 1
    got = pd.read_csv(io.BytesIO(out), sep=";")
    assert_output_matches(got, expected_output(frame, model, keep=["id"], proba=True))


def shard_payloads(tmp_path, opts, batch: str = "b"):
    from dataclasses import replace

    from dispatcher.enqueue import payloads_for

    [item] = list(plan(str(tmp_path / "in"), replace(opts, force=True)))
    return payloads_for(item, opts, batch)


def test_assembly_is_idempotent_and_a_late_rerun_only_tidies_up(redis, tmp_path, model):
    # Given a file scored in 3 shards by the worker
    data = csv_bytes(make_frame(3_000, seed=7))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_bytes(data)
    opts = options(tmp_path, model, shard_size=len(data) // 3 + 1)
    _, batch = dispatch(redis, str(tmp_path / "in"), opts)
    work(redis)
    out = tmp_path / "in" / "x.out.csv"
    assert out.read_bytes() == whole(data, model)
    payloads = shard_payloads(tmp_path, opts, batch.id)
    # When a shard's job runs again after the assembly (its worker died before acknowledging)
    _, total = shards.score(payloads[1], model, redis)
    # Then it changes nothing and leaves no part behind
    assert total is None
    assert describe(redis, batch.id)["done"] == 1
    assert out.read_bytes() == whole(data, model)
    assert not (tmp_path / "in" / "x.out.csv.velo-parts").exists()
    # And an assembler that comes second finds the parts gone and the file settled
    assert shards._assemble(redis, payloads[2]) is None
    assert out.read_bytes() == whole(data, model)


def test_a_stale_error_file_that_cannot_be_deleted_leaves_the_assembled_file_done(redis, tmp_path, model, monkeypatch):
    # Given a file in 3 shards that failed before (its stale error file is beside it), and a store
    # that refuses to delete that error file (a put-only policy: AccessDenied on DELETE)
    data = csv_bytes(make_frame(3_000, seed=9))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_bytes(data)
    stale = tmp_path / "in" / "x.out.csv.error.json"
    stale.write_text(json.dumps({"error": "S3 unavailable", "kind": "transient"}))
    delete = storage.delete

    def put_only(uri: str) -> None:
        if uri.endswith(".error.json"):
            raise StorageError(f"{uri}: access denied by S3 (AccessDenied); check the credentials and bucket policy")
        delete(uri)

    monkeypatch.setattr(storage, "delete", put_only)
    opts = options(tmp_path, model, shard_size=len(data) // 3 + 1)
    _, batch = dispatch(redis, str(tmp_path / "in"), opts)
    # When the worker scores and assembles it
    work(redis)
    # Then the file is done with its whole output; the stale error file merely stays
    b = describe(redis, batch.id)
    assert (b["done"], b["failed"], b["rows"]) == (1, 0, 3_000), b
    assert (tmp_path / "in" / "x.out.csv").read_bytes() == whole(data, model)
    assert stale.exists()
    assert {p.reason for p in plan(str(tmp_path / "in"), opts)} == {"already done"}


def test_two_assemblers_from_the_same_parts_write_the_same_whole_output(redis, tmp_path, model):
    data = csv_bytes(make_frame(3_000, seed=8))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_bytes(data)
    opts = options(tmp_path, model, shard_size=len(data) // 3 + 1)
    payloads = shard_payloads(tmp_path, opts)
    for p in payloads[:2]:
        assert shards.score(p, model, redis)[1] is None  # waiting for the last shard
    parts = sorted((tmp_path / "in" / "x.out.csv.velo-parts").rglob("*.part"))
    assert [p.name for p in parts] == ["00000.part", "00001.part"]
    assert parts[0].read_bytes().startswith(b"id,f0,f1,f2,f3,prediction\n")
    assert not parts[1].read_bytes().startswith(b"id,")  # header once: only the first part has it
    # When the last shard is recorded twice (a re-run racing the first run), both are told to assemble
    rows = shards._score_part(payloads[2], model)
    assert shards._record(redis, payloads[2], rows) == "assemble"
    assert shards._record(redis, payloads[2], rows) == "assemble"
    # And both do: one writes the output from the parts, then the other does it all again
    shards._write(payloads[2]["output"], [(shards._part(payloads[2], i), 0) for i in range(3)], {})
    assert shards._assemble(redis, payloads[2]) == 3_000
    # Then the output is whole and correct, and done
    assert (tmp_path / "in" / "x.out.csv").read_bytes() == whole(data, model)
    assert shards._record(redis, payloads[0], 1) == "assembled"


@pytest.mark.parametrize("reverse", [False, True], ids=["bad-shard-last", "bad-shard-first"])
def test_a_poison_row_fails_the_file_once_without_output_and_retry_splits_the_fixed_file(
    redis, tmp_path, model, reverse
):
    # Given a file whose 3rd shard holds text in a feature column
    frame = make_frame(3_000, seed=9)
    frame["f2"] = frame["f2"].astype(object)
    frame.loc[2_500, "f2"] = "oops"
    data = csv_bytes(frame)
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "x.csv"
    src.write_bytes(data)
    opts = options(tmp_path, model, shard_size=len(data) // 3 + 1)
    planned, batch = dispatch(redis, str(tmp_path / "in"), opts)
    (start, end) = planned[0].shards[2]
    # When the worker runs its shards (the bad one last, or first: then the others only tidy up)
    work(redis, reverse=reverse)
    # Then the file failed once, with a reason naming it, the shard and its bytes
    b = describe(redis, batch.id)
    assert (b["total"], b["done"], b["failed"], b["running"]) == (1, 0, 1, 0)
    [failure] = b["failures"]
    assert failure["error"].startswith(f"{src} (shard 3 of 3, bytes {start}-{end}): row ")  # the shard's own row
    assert "column 'f2' holds non-numeric value 'oops'" in failure["error"]
    assert "\n" not in failure["error"]
    # And no output, no parts, the reason in the error file
    names = sorted(p.name for p in (tmp_path / "in").iterdir())
    assert names == ["x.csv", "x.out.csv.error.json"]
    assert json.loads((tmp_path / "in" / "x.out.csv.error.json").read_text())["error"] == failure["error"]

    # When the file is fixed (and grows a little) and the batch retried
    frame.loc[2_500, "f2"] = 0.25
    fixed = csv_bytes(make_frame(200, seed=10)) + csv_bytes(frame).split(b"\n", 1)[1]
    src.write_bytes(fixed)
    assert retry_failed(redis, batch.id) == (1, [])
    assert redis.llen("rq:queue:velo") == 4  # split again from the file as it is now
    work(redis)
    # Then it is done, whole and right
    b = describe(redis, batch.id)
    assert (b["total"], b["done"], b["failed"], b["rows"]) == (1, 1, 0, 3_200)
    assert (tmp_path / "in" / "x.out.csv").read_bytes() == whole(fixed, model)
    assert not (tmp_path / "in" / "x.out.csv.error.json").exists()


def test_a_quoted_line_break_cut_in_two_fails_with_the_way_out(redis, tmp_path, model):
    rows = [f"{i},0.1,0.2,0.3,0.4,plain" for i in range(300)]
    rows[150] = '150,0.1,0.2,0.3,0.4,"two\n' + "x" * 2_000 + '\nlines"'
    data = ("id,f0,f1,f2,f3,note\n" + "\n".join(rows) + "\n").encode()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "q.csv").write_bytes(data)
    opts = options(tmp_path, model, shard_size=len(data) // 2 + 1)
    planned, batch = dispatch(redis, str(tmp_path / "in"), opts)
    assert len(planned[0].shards) == 2
    work(redis)
    [failure] = describe(redis, batch.id)["failures"]
    assert "--shard-size 0" in failure["error"] and str(tmp_path / "in" / "q.csv") in failure["error"]
    assert not (tmp_path / "in" / "q.out.csv").exists()


def test_a_cut_inside_quotes_that_pyarrow_would_read_silently_still_fails_the_file(redis, tmp_path, model):
    # Given a quoted field whose second line looks like a whole row, in the middle of the file:
    # cut after its line break, each half parses without error (an unterminated quote at the
    # end is taken as closed, a stray quote in an unquoted field as a character)
    rows = [f"{i},0.1,0.2,0.3,0.4,plain" for i in range(100)]
    middle = '100,0.1,0.2,0.3,0.4,"' + "x" * 3_000 + '\n101,0.1,0.2,0.3,0.4,y"'
    data = ("id,f0,f1,f2,f3,note\n" + "\n".join([*rows, middle, *rows]) + "\n").encode()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "q.csv").write_bytes(data)
    opts = options(tmp_path, model, shard_size=len(data) // 2 + 1)
    planned, batch = dispatch(redis, str(tmp_path / "in"), opts)
    cut = planned[0].shards[0][1]
    assert data[cut:].startswith(b'101,0.1,0.2,0.3,0.4,y"\n')  # the cut fell inside the quotes
    # When it is scored in shards
    work(redis)
    # Then the shard that ends inside the quotes fails the file, with the way out
    [failure] = describe(redis, batch.id)["failures"]
    assert failure["error"] == (
        f"{tmp_path / 'in' / 'q.csv'} (shard 1 of 2, bytes {planned[0].shards[0][0]}-{cut}): ends inside a "
        "quoted field; a quoted field holding a line break cannot be split: dispatch the file with --shard-size 0"
    )
    assert not (tmp_path / "in" / "q.out.csv").exists()


def test_plan_never_takes_parts_as_inputs(tmp_path):
    (tmp_path / "x.out.csv.velo-parts" / "abc").mkdir(parents=True)
    (tmp_path / "x.out.csv.velo-parts" / "abc" / "00000.part").write_text("id\n1\n")
    (tmp_path / "x.out.csv.velo-parts" / "abc" / "00001.csv").write_text("id\n1\n")
    (tmp_path / "x.csv").write_text("id\n1\n")
    opts = Options(model="m", model_version="v", patterns=("*",))
    assert [p.info.uri for p in plan(str(tmp_path), opts)] == [str(tmp_path / "x.csv")]


# ------------------------------------------------------------------------------------------------ S3


def test_s3_parts_of_5_mib_are_assembled_server_side_and_small_ones_streamed(redis, mock_s3, model, monkeypatch):
    # Given a ~13 MB file on S3, split in two shards of ~6.5 MB
    data = csv_bytes(make_frame(300_000, seed=11))
    mock_s3.put_object(Bucket="bkt", Key="in/big.csv", Body=data)
    mock_s3.put_object(Bucket="bkt", Key="models/m.joblib", Body=_model_bytes(model))
    composed: list[int] = []
    real = storage.compose
    monkeypatch.setattr(
        storage, "compose", lambda uri, parts, meta: composed.append(len(parts)) or real(uri, parts, meta)
    )
    version = version_of("s3://bkt/models/m.joblib")
    opts = Options(model="s3://bkt/models/m.joblib", model_version=version, shard_size=7 << 20)
    planned, batch = dispatch(redis, "s3://bkt/in/", opts)
    assert len(planned[0].shards) == 2
    work(redis)
    # Then the output was assembled with UploadPartCopy, carries its lineage, and equals the whole run
    assert composed == [2]
    got = mock_s3.get_object(Bucket="bkt", Key="in/big.out.csv")
    assert got["Body"].read() == whole(data, model)
    assert got["Metadata"]["velo-input-version"] == planned[0].info.version
    assert got["ContentType"] == "text/csv"
    assert [o["Key"] for o in mock_s3.list_objects_v2(Bucket="bkt")["Contents"]] == [
        "in/big.csv",
        "in/big.out.csv",
        "models/m.joblib",
    ]
    assert mock_s3.list_multipart_uploads(Bucket="bkt").get("Uploads", []) == []
    assert describe(redis, batch.id)["rows"] == 300_000

    # When only `id` is kept, the first part is under 5 MiB: the parts are streamed instead
    opts = Options(model=opts.model, model_version=version, shard_size=7 << 20, keep=["id"], force=True)
    dispatch(redis, "s3://bkt/in/", opts)
    work(redis)
    assert composed == [2]
    got = mock_s3.get_object(Bucket="bkt", Key="in/big.out.csv")["Body"].read()
    assert got == whole(data, model, keep=["id"])


def _model_bytes(model) -> bytes:
    from tests.helpers import model_bytes

    return model_bytes(model)


@pytest.mark.parametrize("reverse", [False, True], ids=["bad-shard-last", "bad-shard-first"])
def test_rq_requeue_of_the_failed_shards_job_scores_the_fixed_file_whole(redis, tmp_path, model, reverse):
    # Given a file split in 3 whose 3rd shard holds text in a feature column: it failed
    frame = make_frame(3_000, seed=11)
    frame["f2"] = frame["f2"].astype(object)
    frame.loc[2_500, "f2"] = "oops"
    src = tmp_path / "in" / "x.csv"
    src.parent.mkdir()
    src.write_bytes(csv_bytes(frame))
    opts = options(tmp_path, model, shard_size=len(csv_bytes(frame)) // 3 + 1)
    _, batch = dispatch(redis, str(tmp_path / "in"), opts)
    work(redis, reverse=reverse)
    q = make_queue(redis, "velo")
    [failed] = q.failed_job_registry.get_job_ids()  # the shard that failed it; the others finished
    assert "shard 3 of 3" in q.fetch_job(failed).latest_result().exc_string

    # When the file is fixed and RQ's own requeue puts that shard's job back
    frame.loc[2_500, "f2"] = 0.25
    fixed = csv_bytes(frame)
    src.write_bytes(fixed)
    q.failed_job_registry.requeue(failed)
    work(redis)

    # Then the file is scored whole, as it is now, and done
    b = describe(redis, batch.id)
    assert (b["total"], b["done"], b["failed"], b["rows"]) == (1, 1, 0, 3_000), b
    assert (tmp_path / "in" / "x.out.csv").read_bytes() == whole(fixed, model)
    assert not (tmp_path / "in" / "x.out.csv.error.json").exists()
    assert q.fetch_job(failed).description == f"score {src} -> {tmp_path / 'in' / 'x.out.csv'} (batch {batch.id})"


def test_a_sharded_files_statistics_are_its_shards_merged_and_no_stats_gathers_none(redis, tmp_path, model):
    from velosiped.sketch import load_batch

    # Given a file split in 4 shards and a small whole one
    frame = make_frame(4_000, seed=7)
    data = csv_bytes(frame)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.csv").write_bytes(data)
    (tmp_path / "in" / "small.csv").write_bytes(csv_bytes(make_frame(10)))
    opts = replace(options(tmp_path, model, shard_size=len(data) // 4 + 1), stats=True)
    _, batch = dispatch(redis, str(tmp_path / "in"), opts)
    work(redis, reverse=True)
    # Then the batch holds one entry a file, the big one its shards' merged: every row once
    stats = load_batch(redis, batch.id)
    assert (stats.files, stats.rows) == (2, 4_010)
    assert stats.features["f1"].count == 4_010
    assert stats.features["f1"].mean == pytest.approx((frame["f1"].sum() + make_frame(10)["f1"].sum()) / 4_010)
    # And a batch dispatched with --no-stats keeps none
    for p in (tmp_path / "in").glob("*.out.csv"):
        p.unlink()
    _, quiet = dispatch(redis, str(tmp_path / "in"), replace(opts, stats=False, force=True))
    work(redis)
    assert describe(redis, quiet.id)["done"] == 2
    assert load_batch(redis, quiet.id).files == 0


def test_a_groups_stale_error_files_are_deleted_but_never_one_that_resolves_outside_the_prefixes(tmp_path, monkeypatch):
    """drop_stale_errors (a group's files): each error file is judged where it really is first; one
    behind a symlink out of VELO_ALLOWED_PREFIXES stays, the others go in one delete_many."""
    from velosiped.jobs import error_uri
    from worker.shards import drop_stale_errors

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "in").mkdir(parents=True)
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    monkeypatch.setenv("VELO_ALLOWED_PREFIXES", str(allowed))
    inside_out, linked_out = str(allowed / "in" / "a.out.csv"), str(allowed / "link" / "b.out.csv")
    for out in (inside_out, str(outside / "b.out.csv")):
        with open(error_uri(out), "w") as f:
            f.write("{}")

    drop_stale_errors([a_payload(output=inside_out), a_payload(input="/b.csv", output=linked_out)])

    assert not (allowed / "in" / "a.out.csv.error.json").exists()
    assert (outside / "b.out.csv.error.json").exists(), "a refused path is never deleted"
