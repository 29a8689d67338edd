"""Usage and configuration errors: exit 2 and one clear line on stderr, never a traceback."""

from __future__ import annotations

import pytest
from helpers import assert_clean_error, csv_bytes, dump_model, fit_model, make_frame

pytestmark = pytest.mark.e2e

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture
def setup(s3, clean_redis, tmp_path):
    """A bucket with one CSV, a model on disk, a reachable Redis: each case breaks exactly one thing."""
    s3.put("in/1.csv", csv_bytes(make_frame(5)))
    model_path = dump_model(fit_model(), tmp_path / "model.joblib")
    return {"source": s3.uri("in/"), "model": str(model_path), "redis": clean_redis, "tmp": tmp_path}


CASES = {
    # name: (argv template, mentions expected in the stderr line, extra env)
    "dispatch-redis-unreachable": (
        ["dispatch", "{source}", "--model", "{model}", "--redis", UNREACHABLE],
        ["127.0.0.1:1"],
        None,
    ),
    "dispatch-REDIS_URL-unreachable": (
        ["dispatch", "{source}", "--model", "{model}"],
        ["127.0.0.1:1"],
        {"REDIS_URL": UNREACHABLE},
    ),
    "worker-redis-unreachable": (["worker", "--burst", "--redis", UNREACHABLE], ["127.0.0.1:1"], None),
    "status-redis-unreachable": (["status", "--redis", UNREACHABLE], ["127.0.0.1:1"], None),
    "run-redis-unreachable": (
        ["run", "{source}", "--model", "{model}", "--workers", "1", "--redis", UNREACHABLE],
        ["127.0.0.1:1"],
        None,
    ),
    "model-missing-local": (
        ["dispatch", "{source}", "--model", "/nonexistent.joblib", "--redis", "{redis}"],
        ["/nonexistent.joblib"],
        None,
    ),
    "model-missing-s3": (
        ["dispatch", "{source}", "--model", "s3://velo-test/models/missing.joblib", "--redis", "{redis}"],
        ["s3://velo-test/models/missing.joblib"],
        None,
    ),
    "bad-uri": (
        ["dispatch", "ftp://x/y", "--model", "{model}", "--redis", "{redis}"],
        ["ftp://x/y"],
        None,
    ),
    "bucket-missing": (
        ["dispatch", "s3://velo-no-such-bucket/in/", "--model", "{model}", "--redis", "{redis}"],
        ["velo-no-such-bucket"],
        None,
    ),
    "local-folder-missing": (
        ["dispatch", "{tmp}/no/such/folder", "--model", "{model}", "--redis", "{redis}"],
        ["no/such/folder"],
        None,
    ),
    # Outputs the plan could not tell from inputs: every input was skipped, silently, exit 0
    "suffix-empty": (
        ["dispatch", "{source}", "--model", "{model}", "--suffix", "", "--redis", "{redis}"],
        ["--suffix ''"],
        None,
    ),
    "run-suffix-empty": (
        ["run", "{source}", "--model", "{model}", "--suffix", "", "--workers", "1"],
        ["--suffix ''"],
        None,
    ),
    "output-inside-source": (
        ["dispatch", "{source}", "--model", "{model}", "--output", "s3://velo-test/in/out", "--redis", "{redis}"],
        ["--output s3://velo-test/in/out", "inside SOURCE"],
        None,
    ),
    "output-is-source": (
        ["dispatch", "s3://velo-test/in", "--model", "{model}", "--output", "{source}", "--redis", "{redis}"],
        ["--output s3://velo-test/in/", "every input would be skipped"],
        None,
    ),
    "output-holds-local-source": (
        ["watch", "{tmp}/data/in", "--model", "{model}", "--output", "{tmp}/data", "--redis", "{redis}"],
        ["--output", "/data", "every input would be skipped"],
        None,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_configuration_errors_exit_2_with_one_line(case, setup, velo):
    argv, mentions, env = CASES[case]
    # Given one thing wrong in an otherwise valid command line
    args = [arg.format(**setup) for arg in argv]

    # When velo runs
    result = velo(*args, env=env, timeout=60)

    # Then it exits 2 with one line on stderr naming the problem, and no traceback
    assert_clean_error(result, *mentions)
