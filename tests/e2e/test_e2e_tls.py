"""Redis over TLS (`rediss://`): dispatch and workers work end to end; a wrong CA is one clear line."""

from __future__ import annotations

import shutil
import subprocess
import time

import pandas as pd
import pytest
import redis
from helpers import (
    assert_clean_error,
    assert_output_matches,
    dump_model,
    expected_output,
    fit_model,
    free_port,
    make_frame,
)

pytestmark = pytest.mark.e2e


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(folder, name: str) -> None:
    """A throwaway self-signed CA in ``folder``: ca.key and ca.crt."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "1", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip


@pytest.fixture
def tls_redis(tmp_path):
    """A private redis-server that speaks only TLS, with a throwaway CA; yields (url, ca path)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path / "tls"
    d.mkdir()
    _make_ca(d, "velo-test-ca")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=d,
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "redis.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        cwd=d,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(d),
            "--tls-cert-file",
            "redis.crt",
            "--tls-key-file",
            "redis.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            "no",
        ],
        cwd=d,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={d / 'ca.crt'}"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.skip("this redis-server was built without TLS")
            time.sleep(0.1)
    yield url, d / "ca.crt"
    proc.terminate()
    proc.wait(timeout=10)


def test_dispatch_and_worker_over_tls(tls_redis, velo, tmp_path):
    url, _ = tls_redis
    model = fit_model()
    model_path = dump_model(model, tmp_path / "m.joblib")
    data = tmp_path / "data"
    data.mkdir()
    frame = make_frame(12, seed=7)
    frame.to_csv(data / "1.csv", index=False)
    # When a batch goes through a TLS-only Redis
    velo("dispatch", str(data), "--model", str(model_path), "--redis", url, check=0)
    velo("worker", "--burst", "--redis", url, check=0)
    # Then it is scored, and status reads it back
    assert_output_matches(pd.read_csv(data / "1.out.csv"), expected_output(frame, model))
    assert '"done": 1' in velo("status", "--json", "--redis", url, check=0).stdout


def test_a_server_certificate_the_ca_does_not_sign_is_one_clear_line(tls_redis, velo, tmp_path):
    url, _ = tls_redis
    other = tmp_path / "other"
    other.mkdir()
    _make_ca(other, "someone-else")
    bad = url.split("?")[0] + f"?ssl_ca_certs={other / 'ca.crt'}"
    assert_clean_error(velo("status", "--redis", bad), "cannot reach Redis")
