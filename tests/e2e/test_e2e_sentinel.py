"""Redis failover through Sentinel: `redis+sentinel://` URLs for every command, on loopback.

Each test starts its own primary, one replica (`--replicaof`) and three sentinels (quorum 2,
`down-after-milliseconds 1000`), all on free ports, each sentinel with its own writable config
file (a sentinel rewrites it). Killing the primary with SIGKILL makes the sentinels promote the
replica in a few seconds; workers and a waiting dispatch, which ask the sentinels at every
reconnection, follow it. On loopback a replica is a millisecond behind, so the failover test
usually loses nothing; the re-dispatch test makes the replica lag on purpose, so the writes
asynchronous replication can lose (a whole dispatch) are lost, and the next dispatch repairs that.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import (
    assert_clean_error,
    batch_status,
    find_dispatch_line,
    free_port,
    is_sidecar,
    slow_frame,
    wait_until,
    write_csv,
)
from slowmodel import WORKER_ENV, dump_slow_model

pytestmark = pytest.mark.e2e

RedisServer = Any
"""conftest's RedisServer (a primary, a replica); not imported: `conftest` names another module under tests/unit."""


SERVICE = "mymaster"
BLOCK = 4096
SLOW = {"VELO_BLOCK_SIZE": str(BLOCK), **WORKER_ENV}
"""Small parser blocks, each predicted by a model sleeping a set time (`slowmodel`)."""


class Sentinels:
    """A primary, its replicas and ``count`` sentinels watching them as `mymaster` (quorum 2)."""

    def __init__(self, primary: RedisServer, replicas: list[RedisServer], workdir: Path) -> None:
        self.primary = primary
        self.replicas = replicas
        self.workdir = workdir
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []

    def start(self, binary: str, count: int) -> Sentinels:
        for n in range(count):
            port = free_port()
            conf = self.workdir / f"sentinel-{n}.conf"  # writable: a sentinel records what it learns there
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                "sentinel resolve-hostnames no\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} {min(2, count)}\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
            with (self.workdir / f"sentinel-{n}.log").open("wb") as log:
                proc = subprocess.Popen(
                    [binary, str(conf), "--sentinel"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            self.ports.append(port)
            self.procs.append(proc)
        # A failover needs a quorum that knows the replica and each other (they meet through the primary)
        wait_until(self.ready, timeout=30, message=f"{count} sentinels that see the replicas and each other")
        return self

    def ready(self) -> bool:
        for port in self.ports:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)
            try:
                state = client.sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if int(state["num-slaves"]) < len(self.replicas) or int(state["num-other-sentinels"]) < len(self.ports) - 1:
                return False
        return True

    def url(self, auth: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/0"

    def primary_port(self) -> int:
        client = redis.Redis(host="127.0.0.1", port=self.ports[0], socket_timeout=1)
        try:
            return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])
        finally:
            client.close()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-1500:] for p in sorted(self.workdir.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture
def start_sentinels(redis_server, tmp_path_factory: pytest.TempPathFactory):
    """start_sentinels(count=3, replicas=1): a running primary, replicas and sentinels (:class:`Sentinels`)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH")
    started: list[Sentinels] = []

    def start(count: int = 3, replicas: int = 1) -> Sentinels:
        plain = ("--save", "", "--appendonly", "no")
        primary = redis_server(*plain)
        followers = [redis_server(*plain, "--replicaof", "127.0.0.1", str(primary.port)) for _ in range(replicas)]

        def linked() -> bool:
            return all(r.client().info("replication").get("master_link_status") == "up" for r in followers)

        wait_until(linked, timeout=15, message="the replicas to sync with the primary")
        topology = Sentinels(primary, followers, tmp_path_factory.mktemp("sentinels"))
        started.append(topology)
        return topology.start(binary, count)

    yield start
    for topology in started:
        topology.stop()


@pytest.fixture
def lone_sentinel(start_sentinels) -> Sentinels:
    """One primary and one sentinel: enough to find the primary, not to fail over (ready at once)."""
    return start_sentinels(count=1, replicas=0)


def test_status_through_sentinels(lone_sentinel, velo):
    # Given a batch-less Redis behind a sentinel; When `velo status` is asked through it
    result = velo("status", "--redis", lone_sentinel.url(), check=0)
    # Then it answers, naming the sentinels and the service it looked in
    assert "no batch in Redis at redis+sentinel://" in result.stderr, velo.describe(result)
    assert f"/{SERVICE}/0" in result.stderr


@pytest.mark.parametrize(
    ("url", "mention"),
    [
        # the sentinels are up, but know no such service (the password must not show)
        ("redis+sentinel://:s3cr3t@127.0.0.1:{port}/nosuch/0", "no sentinel that answered knows a primary"),
        # nothing listens there
        ("redis+sentinel://:s3cr3t@127.0.0.1:1,127.0.0.1:2/mymaster/0", "no sentinel answered"),
        # malformed: no service
        ("redis+sentinel://:s3cr3t@127.0.0.1:{port}", "names no service"),
    ],
)
def test_a_bad_sentinel_url_is_one_line_and_exit_2(lone_sentinel, velo, url, mention):
    result = velo("status", "--redis", url.format(port=lone_sentinel.ports[0]))
    line = assert_clean_error(result, mention, "redis+sentinel://:***@")
    assert "s3cr3t" not in result.stdout + result.stderr, line


FILES = 12
"""Files in the batch: each 12 parser blocks, each block predicted by a model sleeping 0.1 s,
so about 1.3 s a file and 5 s for the batch on three worker processes."""


def outputs(folder: Path) -> dict[str, bytes]:
    """name -> bytes of every output in ``folder`` (no inputs, no lineage sidecars)."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.out.csv")) if not is_sidecar(p.name)}


@pytest.mark.timeout(180)
def test_sigkill_of_the_primary_mid_batch_loses_no_file(start_sentinels, velo, start_velo, model, model_path, tmp_path):
    # Given a primary, a replica and three sentinels
    topology = start_sentinels()
    url = topology.url()
    old, new = topology.primary, topology.replicas[0]
    # And twelve files, and the bytes a clean run (embedded Redis, no failover) writes for them
    data, clean = tmp_path / "data", tmp_path / "clean"
    for i in range(FILES):
        frame = slow_frame(12, BLOCK, seed=700 + i)
        write_csv(data / f"f{i:02d}.csv", frame)
        write_csv(clean / f"f{i:02d}.csv", frame)
    velo("run", clean, "--model", model_path, "--workers", "2", check=0, timeout=120)
    expected = outputs(clean)
    assert len(expected) == FILES
    slow = dump_slow_model(model, 0.1, tmp_path / "slow" / "model.joblib")
    # And three workers through the sentinels: a pool of two (its children make their own client) and one more
    workers = [
        start_velo("worker", "--processes", "2", "--redis", url, env=SLOW),
        start_velo("worker", "--redis", url, env=SLOW),
    ]

    # When the files are dispatched, and the dispatch waits for them
    # (one job a file: the kill lands mid-batch, between files; groups have test_e2e_groups)
    waiting = start_velo("dispatch", data, "--model", slow, "--redis", url, "--wait", "--group-size", "1", env=SLOW)
    # And the primary is killed with SIGKILL once the first files are done, mid-batch
    wait_until(lambda: len(outputs(data)) >= 3 or waiting.poll() is not None, 60, message="the first outputs")
    done_before = len(outputs(data))
    assert done_before < FILES, "the batch finished before the kill: nothing was tested\n" + waiting.describe()
    old.stop(signal.SIGKILL)
    killed = time.monotonic()

    # Then the sentinels promote the replica
    wait_until(lambda: topology.primary_port() == new.port, 30, message="the replica's promotion\n" + topology.logs())
    promoted = time.monotonic() - killed
    # And the waiting dispatch follows it and sees the batch finish, every file done, none failed or lost
    assert waiting.wait(timeout=120) == 0, waiting.describe() + "\n".join(w.describe() for w in workers)
    finished = time.monotonic() - killed
    batch_id, enqueued, _ = find_dispatch_line(waiting.read_stdout())
    assert enqueued == FILES
    final = batch_status(velo, url, batch_id)
    assert (final["total"], final["done"], final["failed"], final["queued"]) == (FILES, FILES, 0, 0), final
    # And the workers followed it too: still running, none gave up
    for worker in workers:
        assert worker.poll() is None, worker.describe()
    # And every output is there and whole: the bytes of the clean run
    assert outputs(data) == expected

    # When the folder is dispatched again (what an operator does after a failover)
    again = velo(
        "dispatch", data, "--model", slow, "--redis", url, "--wait", "--group-size", "1", env=SLOW, check=0, timeout=120
    )
    # Then it enqueues only files whose outcome the promoted replica never received (writes of the
    # old primary not yet replicated when it died: Redis replicates asynchronously) and whose output
    # is missing; on loopback that is usually none, and every file is "already done" by its output
    # (test_re_dispatch_repairs_what_asynchronous_replication_lost shows it enqueue what was lost).
    _, redone, skipped = find_dispatch_line(again.stdout)
    assert redone + skipped == FILES
    assert outputs(data) == expected
    print(
        f"\nfailover: {done_before}/{FILES} done at the SIGKILL, replica promoted {promoted:.1f} s and the batch "
        f"finished {finished:.1f} s after it; re-dispatch enqueued {redone}, skipped {skipped}"
    )
    # And the workers stop on SIGTERM as ever, exit 0 at once: no connection kept a reply from before
    for worker in workers:
        assert worker.stop(timeout=15) == 0, worker.describe()
        assert "Traceback" not in worker.read_stderr(), worker.describe()


def test_no_primary_up_is_one_line_saying_a_failover_may_be_under_way(lone_sentinel, velo):
    # Given sentinels that know the service, and its primary down (no replica to promote)
    lone_sentinel.primary.stop(signal.SIGKILL)
    probe = redis.Redis(host="127.0.0.1", port=lone_sentinel.ports[0], decode_responses=True)
    wait_until(lambda: probe.sentinel_master(SERVICE)["is_sdown"], 10, message="the sentinel to see it down")
    probe.close()
    # When a command starts; Then it exits 2 at once with one line saying so
    result = velo("status", "--redis", lone_sentinel.url(":s3cr3t@"))
    assert_clean_error(result, "failover may be under way", "redis+sentinel://:***@")
    assert "s3cr3t" not in result.stdout + result.stderr


@pytest.mark.timeout(120)
def test_re_dispatch_repairs_what_asynchronous_replication_lost(
    start_sentinels, velo, start_velo, model_path, tmp_path
):
    # Given a primary, a replica and three sentinels
    topology = start_sentinels()
    url = topology.url()
    old, new = topology.primary, topology.replicas[0]
    # And four files, and the bytes a clean run writes for them
    data, clean = tmp_path / "data", tmp_path / "clean"
    for i in range(4):
        frame = slow_frame(2, BLOCK, seed=800 + i)
        write_csv(data / f"g{i}.csv", frame)
        write_csv(clean / f"g{i}.csv", frame)
    velo("run", clean, "--model", model_path, "--workers", "1", check=0, timeout=120)
    expected = outputs(clean)
    # And a replica that has fallen behind: Redis replicates asynchronously, and writes a primary
    # acknowledged may not have reached its replica when it dies. The test widens that window at
    # will: the replica stops following (REPLICAOF a port where nothing listens), keeping its data.
    lagging = new.client()
    lagging.replicaof("127.0.0.1", str(free_port()))

    # When the files are dispatched (no worker runs yet): the primary alone holds the batch
    batch_id, enqueued, _ = find_dispatch_line(velo("dispatch", data, "--model", model_path, "--redis", url).stdout)
    assert enqueued == 4
    # And the primary dies (SIGKILL); the replica, following it again as if it had never stopped,
    # is promoted by the sentinels without the batch
    old.stop(signal.SIGKILL)
    lagging.replicaof("127.0.0.1", str(old.port))
    lagging.close()
    wait_until(lambda: topology.primary_port() == new.port, 30, message="the replica's promotion\n" + topology.logs())
    worker = start_velo("worker", "--redis", url)

    # Then the batch is gone with the old primary: nothing would ever score these files
    gone = velo("status", batch_id, "--redis", url)
    assert gone.returncode == 2 and f"no batch {batch_id!r}" in gone.stderr, velo.describe(gone)
    assert outputs(data) == {}
    # When the same dispatch runs again, and waits
    again = velo("dispatch", data, "--model", model_path, "--redis", url, "--wait", check=0, timeout=60)
    # Then it enqueues exactly the four files the promoted replica never heard of, and they are
    # scored: every output there, the bytes of the clean run
    assert find_dispatch_line(again.stdout)[1:] == (4, 0), velo.describe(again)
    assert outputs(data) == expected
    assert worker.stop(timeout=15) == 0, worker.describe()
