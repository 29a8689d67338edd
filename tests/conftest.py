"""Shared pytest fixtures: a private redis-server, a moto S3 HTTP endpoint and the real `velo` CLI.

Every fixture is a yield fixture that cleans up after itself. Nothing here touches a shared service:
the Redis fixture starts its own `redis-server` on a free loopback port (never 6379) and the S3
fixture runs moto's server in this process on another free port.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# `from helpers import ...` works from every test module, whatever pytest's import mode.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from helpers import free_port

# Nothing a test runs writes under the user's home: model downloads (VELO_MODEL_CACHE, else
# ~/.cache/velosiped), the embedded Redis and run logs (VELO_STATE_DIR, else XDG_STATE_HOME or
# ~/.local/state/velosiped) go to one folder of this session, removed at its end. Set here, at
# import, so every test and every process a test starts (they inherit it) sees it; a `velo`
# started through the fixtures below gets the same (velo_env).
SESSION_HOME = Path(tempfile.mkdtemp(prefix="velo-tests-"))
ISOLATED_ENV = {
    "VELO_MODEL_CACHE": str(SESSION_HOME / "model-cache"),
    "VELO_STATE_DIR": str(SESSION_HOME / "state"),
    "XDG_STATE_HOME": str(SESSION_HOME / "xdg-state"),
    "XDG_CACHE_HOME": str(SESSION_HOME / "xdg-cache"),
}
os.environ.update(ISOLATED_ENV)
atexit.register(shutil.rmtree, SESSION_HOME, ignore_errors=True)

"""A shared Redis runs there: the fixtures must never use it."""

BUCKET = "velo-test"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
VELO_BIN = Path(sys.executable).parent / "velo"


def _find_redis_server() -> str | None:
    """`redis-server` on PATH, else the one next to this interpreter (the venv's bin/)."""
    found = shutil.which("redis-server")
    if found:
        return found
    return shutil.which("redis-server", path=str(Path(sys.executable).parent))


# --------------------------------------------------------------------------------------------- Redis


def _start_redis(binary: str, port: int, workdir: Path) -> subprocess.Popen:
    log = (workdir / f"redis-{port}.log").open("wb")
    try:
        return subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def _wait_for_ping(proc: subprocess.Popen, port: int, deadline_s: float = 10.0) -> bool:
    import redis

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            if client.ping():
                return True
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
        finally:
            client.close()
    return False


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free loopback port, for the whole session: `redis://127.0.0.1:P/0`."""
    binary = _find_redis_server()
    if binary is None:
        message = "redis-server is not on PATH: install it (apt-get install redis-server) to run these tests"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    workdir = tmp_path_factory.mktemp("redis")
    proc = None
    for _attempt in range(5):  # the free port may be taken between finding and binding it
        port = free_port()
        proc = _start_redis(binary, port, workdir)
        if _wait_for_ping(proc, port):
            break
        _stop(proc)
        proc = None
    if proc is None:
        logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in workdir.glob("redis-*.log"))
        pytest.fail(f"could not start {binary}:\n{logs}")

    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[str]:
    """The private Redis, empty before and after the test; yields its URL."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    try:
        yield redis_url
    finally:
        client.flushall()
        client.close()


@pytest.fixture
def redis_client(clean_redis: str):
    """A redis-py client on the (clean) private Redis, for white-box checks such as queue lengths."""
    import redis

    client = redis.Redis.from_url(clean_redis, decode_responses=True)
    yield client
    client.close()


# ------------------------------------------------------------------------------------------------ S3


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 served over HTTP on a free loopback port, for the whole session: `http://127.0.0.1:P`."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # Port 0: the OS picks a free port when the server binds, so no other process can steal it first.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class S3:
    """The test bucket on the moto endpoint, with small helpers. Keys are relative to `bucket`."""

    def __init__(self, endpoint: str, client, bucket: str, env: dict[str, str]):
        self.endpoint = endpoint
        self.client = client
        self.bucket = bucket
        self.env = env

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def head(self, key: str) -> dict:
        return self.client.head_object(Bucket=self.bucket, Key=key)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.head(key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def objects(self, prefix: str = "") -> dict[str, dict]:
        """key -> listing entry (LastModified, ETag, Size) of every object under prefix (paged)."""
        paginator = self.client.get_paginator("list_objects_v2")
        found: dict[str, dict] = {}
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = obj
        return found

    def keys(self, prefix: str = "") -> list[str]:
        """Sorted keys of every object under prefix (paged, so more than 1,000 is fine)."""
        return sorted(self.objects(prefix))


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """An empty moto S3 with one fresh bucket `velo-test`; AWS env set for this process and for `velo`."""
    import boto3
    import requests

    env = {**AWS_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Nothing from the developer's own AWS set-up may leak in and point boto3 elsewhere.
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    response = requests.post(f"{s3_endpoint}/moto-api/reset", timeout=10)
    response.raise_for_status()

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield S3(s3_endpoint, client, BUCKET, env)
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ velo CLI


class _ProcessGroups:
    """Every process group a test started, so teardown can end whatever is left of them."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> None:
        self.popens.append(proc)

    @staticmethod
    def kill_group(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        for proc in self.popens:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # spec: finish the file in hand, then exit
        for proc in self.popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            # The leader is gone (or hung): end its children too (e.g. `velo worker --processes N`).
            self.kill_group(proc)
            if proc.poll() is None:
                proc.wait(timeout=10)


@pytest.fixture
def velo_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A function building the environment of a `velo` subprocess from this process's environment."""
    state_dir = tmp_path_factory.mktemp("velo-state")
    s3_env: dict[str, str] = {}
    if "s3" in request.fixturenames:
        s3_env = request.getfixturevalue("s3").env

    def build(extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            name: value for name, value in os.environ.items() if not name.startswith("VELO_") and name != "REDIS_URL"
        }
        env.update(s3_env)
        env.update(
            {
                "VELO_MODEL_CACHE": ISOLATED_ENV["VELO_MODEL_CACHE"],
                "VELO_STATE_DIR": str(state_dir),
                # Plain, wide, uncoloured output: what a scheduler capturing stdout sees.
                "NO_COLOR": "1",
                "TERM": "dumb",
                "COLUMNS": "200",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        return env

    build.state_dir = state_dir
    return build


def _describe(args, proc_or_result, stdout: str, stderr: str) -> str:
    rc = getattr(proc_or_result, "returncode", None)
    return f"$ velo {' '.join(map(str, args))}\n[exit {rc}]\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"


@pytest.fixture
def velo(velo_env, tmp_path_factory: pytest.TempPathFactory):
    """Run the real `velo` console script: velo(*args, env=None, timeout=120, check=None, cwd=None).

    Returns the CompletedProcess (text stdout/stderr). With `check=N` the exit code must be N.
    REDIS_URL is removed from the environment unless given in `env`.
    """
    groups = _ProcessGroups()
    default_cwd = tmp_path_factory.mktemp("velo-cwd")

    def run(*args, env=None, timeout: float = 120, check: int | None = None, cwd=None):
        argv = [str(VELO_BIN), *map(str, args)]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=velo_env(env),
            cwd=str(cwd or default_cwd),
            start_new_session=True,  # its own process group: a timeout ends its workers too
        )
        groups.add(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            groups.kill_group(proc)
            stdout, stderr = proc.communicate()
            pytest.fail(f"timed out after {timeout}s\n" + _describe(args, proc, stdout, stderr))
        result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
        if check is not None and result.returncode != check:
            pytest.fail(f"expected exit {check}\n" + _describe(args, result, stdout, stderr))
        return result

    run.describe = lambda result: _describe(result.args[1:], result, result.stdout, result.stderr)
    run.state_dir = velo_env.state_dir
    yield run
    groups.cleanup()


class VeloProcess(subprocess.Popen):
    """A `velo` process running in the background (a Popen), its output going to files."""

    def __init__(self, args, *, stdout_path: Path, stderr_path: Path, **kwargs):
        self.velo_args = args
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            super().__init__([str(VELO_BIN), *map(str, args)], stdout=out, stderr=err, **kwargs)

    def read_stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def read_stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        return _describe(self.velo_args, self, self.read_stdout(), self.read_stderr())

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (finish the file in hand, then exit), then wait for the exit code."""
        if self.poll() is None:
            self.send_signal(signal.SIGTERM)
        return self.wait(timeout=timeout)


@pytest.fixture
def start_velo(velo_env, tmp_path_factory: pytest.TempPathFactory):
    """Start `velo ARGS` in the background (e.g. a worker without --burst): start_velo(*args, env=None).

    Returns a `VeloProcess` (a Popen; output in files, see `describe()`). Whatever is still running
    at teardown gets SIGTERM, then its whole process group SIGKILL.
    """
    groups = _ProcessGroups()
    logs = tmp_path_factory.mktemp("velo-bg")
    default_cwd = tmp_path_factory.mktemp("velo-bg-cwd")
    counter = iter(range(10**6))

    def start(*args, env=None, cwd=None) -> VeloProcess:
        n = next(counter)
        proc = VeloProcess(
            args,
            stdout_path=logs / f"{n}.stdout",
            stderr_path=logs / f"{n}.stderr",
            stdin=subprocess.DEVNULL,
            env=velo_env(env),
            cwd=str(cwd or default_cwd),
            start_new_session=True,  # its own process group: teardown ends its children too
        )
        groups.add(proc)
        return proc

    yield start
    groups.cleanup()


# ------------------------------------------------------------------------- Redis servers a test owns


class RedisServer:
    """A redis-server this test started itself, on a loopback port it keeps across restarts.

    `stop()` sends a signal and waits; `start()` brings it back on the same port with the same
    arguments (so with `--appendonly yes` it reloads its data).
    """

    def __init__(self, binary: str, workdir: Path, args: tuple[str, ...], password: str | None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.args = args
        self.password = password
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def url_with_password(self, password: str) -> str:
        return f"redis://:{password}@127.0.0.1:{self.port}/0"

    def client(self, **kwargs):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)

    def _ping(self, deadline_s: float) -> bool:
        import redis

        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            client = self.client(socket_connect_timeout=0.5, socket_timeout=0.5)
            try:
                if client.ping():
                    return True
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.05)
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
            finally:
                client.close()
        return False

    def start(self, deadline_s: float = 10.0) -> RedisServer:
        """Start the server (on a free port the first time, on the same port after that)."""
        for _attempt in range(1 if self.port else 5):
            port = self.port or free_port()
            log = (self.workdir / f"redis-{port}-{self.starts}.log").open("wb")
            argv = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.workdir), *self.args]
            if self.password:
                argv += ["--requirepass", self.password]
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            finally:
                log.close()
            self.starts += 1
            prior, self.port = self.port, port
            if self._ping(deadline_s):
                return self
            _stop(self.proc)
            self.port = prior
        logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in self.workdir.glob("redis-*.log"))
        raise RuntimeError(f"could not start {self.binary} {' '.join(self.args)}:\n{logs}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send `sig` (SIGTERM: save and exit; SIGKILL: crash) and wait until the server is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start a private redis-server for this test: redis_server(*args, password=None) -> RedisServer.

    `args` are extra redis-server arguments (default: no persistence); e.g.
    `redis_server("--appendonly", "yes")` for one that survives a restart, or
    `redis_server(password="secret")` for one that requires AUTH. Stopped at teardown.
    """
    binary = _find_redis_server()
    if binary is None:
        message = "redis-server is not on PATH: install it (apt-get install redis-server) to run these tests"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    servers: list[RedisServer] = []

    def start(*args: str, password: str | None = None) -> RedisServer:
        workdir = tmp_path_factory.mktemp("redis-own")
        server = RedisServer(binary, workdir, args or ("--save", "", "--appendonly", "no"), password)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop(signal.SIGKILL)


@pytest.fixture
def fault_proxy(s3_endpoint: str) -> Iterator:
    """A `faultproxy.FaultProxy` on 127.0.0.1:<free port> in front of the moto S3 endpoint.

    Point a `velo` process at it with `env={"AWS_ENDPOINT_URL": fault_proxy.url}`.
    """
    from faultproxy import FaultProxy

    proxy = FaultProxy(s3_endpoint).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def model():
    """A fitted model (helpers.fit_model's default), for the tests that score with one."""
    from helpers import fit_model

    return fit_model()


@pytest.fixture
def model_path(model, tmp_path):
    """`model` dumped with joblib in this test's folder."""
    from helpers import dump_model

    return dump_model(model, tmp_path / "model" / "model.joblib")
