"""The deployment files parse, agree with each other, and only ask velo for what it has.

Covers Dockerfile, .dockerignore, docker-compose.yml, infra/ (systemd, cloud-init, Kubernetes
with KEDA) and docs/OPERATIONS.md, with no Docker, cluster or network: every YAML file is
parsed, every `velo ...` command line found in them is parsed by the real click CLI (without
running it), every environment variable they set is one the code (or boto3) reads, and the
KEDA trigger watches the Redis keys RQ really uses for the worker's queue.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import botocore
import click
import pytest
from rq import Queue
from rq.registry import StartedJobRegistry

from dispatcher.cli import cli

yaml = pytest.importorskip("yaml", reason="PyYAML parses the deployment files: add pyyaml to the dev extra")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
UNIT = ROOT / "infra" / "systemd" / "velo-worker.service"
ENV_EXAMPLE = ROOT / "infra" / "systemd" / "worker.env.example"
CLOUD_INIT = ROOT / "infra" / "cloud-init" / "worker.yaml"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"

MIN_GRACE_SECONDS = 300
"""A stop grace period shorter than this would cut most files short."""

DEPLOYMENT_ONLY_ENV = {"VELO_PROCESSES"}
"""Variables the deployment files use themselves (systemd's ExecStart), not read by velo."""

SHELL_SEPARATORS = {"&&", "||", ";", "|", "&"}


# ---- helpers ------------------------------------------------------------------------------------


def parse_velo(argv: list[str], where: str) -> tuple[str, dict[str, Any]]:
    """Parse ``velo ARGV`` with the real CLI, without running it: (command name, its parameters)."""
    if not argv:
        pytest.fail(f"{where}: `velo` with no command")
    if argv[0].startswith("-"):  # group options (--version, --help) only exit: check they exist
        known = {opt for param in cli.params for opt in param.opts} | {"-h", "--help"}
        unknown = [a for a in argv if a not in known]
        assert not unknown, f"{where}: `velo {shlex.join(argv)}`: no such option {unknown}"
        return "", {}
    name, *rest = argv
    command = cli.commands.get(name)
    if command is None:
        pytest.fail(f"{where}: `velo {shlex.join(argv)}`: velo has no command {name!r} (it has {sorted(cli.commands)})")
    parent = click.Context(cli, info_name="velo")
    try:
        ctx = command.make_context(name, list(rest), parent=parent, resilient_parsing=False)
    except click.ClickException as e:
        pytest.fail(f"{where}: `velo {shlex.join(argv)}`: {e.format_message()}")
    return name, ctx.params


def shell_commands(text: str) -> list[list[str]]:
    """Each simple command of a shell text, as argv (comments dropped, continuations joined)."""
    commands: list[list[str]] = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # prose or an unbalanced quote: not a command line
            continue
        current: list[str] = []
        for token in tokens:
            if token in SHELL_SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def velo_argvs(text: str) -> list[list[str]]:
    """The arguments of every `velo` (or `.../bin/velo`) run in a shell text."""
    found = []
    for argv in shell_commands(text):
        while argv and (argv[0] in {"sudo", "exec", "env"} or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0])):
            argv = argv[1:]
        if argv and (argv[0] == "velo" or argv[0].endswith("/bin/velo")):
            found.append(argv[1:])
    return found


def seconds(text: str | int) -> int:
    """A duration as Compose ("10m", "1h30m") or systemd ("10min", "600") write it."""
    if isinstance(text, int) or str(text).isdigit():
        return int(text)
    units = {"h": 3600, "min": 60, "m": 60, "s": 1, "sec": 1}
    parts = re.findall(r"(\d+)\s*(h|min|m|sec|s)", str(text))
    assert parts, f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def env_file(text: str) -> tuple[dict[str, str], set[str]]:
    """A KEY=value file: the settings, and the names of commented-out ones."""
    active = dict(re.findall(r"(?m)^([A-Z][A-Z0-9_]*)=(.*)$", text))
    commented = set(re.findall(r"(?m)^#\s*([A-Z][A-Z0-9_]*)=", text))
    return active, commented


def systemd_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file: section -> key -> values (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line in the unit: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """Replace systemd's ${VAR} and $VAR in each word, failing on an undefined one."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in env, f"${name} is used but never set"
        return env[name]

    return [re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, a) for a in argv]


def under(uri: str, prefixes: str) -> bool:
    return any(uri == p or uri.startswith(p.rstrip("/") + "/") for p in (p.strip() for p in prefixes.split(",")) if p)


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined."""
    out = []
    for raw in re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text()).splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


@cache
def code_env_names() -> frozenset[str]:
    """REDIS_URL and the VELO_* variables the code under dispatcher/ and worker/ reads."""
    names = set()
    for package in ("dispatcher", "velosiped", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"[\"'](VELO_[A-Z0-9_]+|REDIS_URL)[\"']", path.read_text()))
    return frozenset(names)


@cache
def botocore_source() -> str:
    return "\n".join(p.read_text(errors="replace") for p in Path(botocore.__file__).parent.rglob("*.py"))


def assert_env_name_is_read(name: str, where: str) -> None:
    if name.startswith("AWS_"):
        service = re.fullmatch(r"AWS_ENDPOINT_URL_([A-Z0-9_]+)", name)
        if service:  # botocore builds AWS_ENDPOINT_URL_<SERVICE ID> itself
            assert "AWS_ENDPOINT_URL_{" in botocore_source(), f"{where}: botocore reads no {name}"
            return
        assert f"'{name}'" in botocore_source() or f'"{name}"' in botocore_source(), (
            f"{where}: {name} is not an environment variable boto3 reads"
        )
        return
    if name in DEPLOYMENT_ONLY_ENV:
        return
    assert name in code_env_names(), (
        f"{where}: {name} is read by no code under dispatcher/ or worker/ (they read {sorted(code_env_names())})"
    )


# ---- every YAML file ----------------------------------------------------------------------------

YAML_FILES = sorted([ROOT / "docker-compose.yml", *ROOT.glob("infra/**/*.yaml"), *ROOT.glob("infra/**/*.yml")])


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path}: no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: a document is not a mapping"


def test_every_infra_area_is_present() -> None:
    for path in (UNIT, ENV_EXAMPLE, CLOUD_INIT, K8S / "kustomization.yaml", OPERATIONS):
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"


# ---- Dockerfile and .dockerignore ---------------------------------------------------------------


def test_dockerfile_slim_python_and_only_the_package_is_copied() -> None:
    instructions = dockerfile()
    bases = [args.split()[0] for ins, args in instructions if ins == "FROM"]
    assert bases and all(b.startswith("python:3.11-slim") for b in bases), bases
    assert not [args for ins, args in instructions if ins == "ADD"], "ADD can fetch or unpack anything: use COPY"

    packages = re.search(r"packages\s*=\s*\[([^\]]*)\]", (ROOT / "pyproject.toml").read_text())
    assert packages, "pyproject.toml names no wheel packages"
    wanted = {p.strip().strip("\"'") for p in packages.group(1).split(",") if p.strip()}
    allowed = {"pyproject.toml", "README.md"} | {f"{p}/" for p in wanted} | wanted
    copied = set()
    for ins, args in instructions:
        if ins == "COPY" and "--from=" not in args:
            *sources, _dest = shlex.split(args)
            copied |= set(sources)
    assert copied <= allowed, f"the image copies more than the package (models or data?): {sorted(copied - allowed)}"
    assert {p.rstrip("/") for p in copied} >= wanted | {"pyproject.toml", "README.md"}, copied

    runs = " ".join(args for ins, args in instructions if ins == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the project is not installed with `pip install .`"
    assert "[dev" not in runs, "the image must not install the dev extra"


def test_an_engine_image_is_one_build_argument_away() -> None:
    # --engine treelite needs its extra where the venv is built, and gcc where models are compiled
    # (the final stage, at run time); a plain build has neither
    instructions = dockerfile()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    build, final = instructions[:last_from], instructions[last_from:]
    assert ("ARG", "ENGINE=") in build and ("ARG", "ENGINE=") in final
    assert any(ins == "RUN" and 'if [ -n "$ENGINE" ]' in args and "'.[engine]'" in args for ins, args in build)
    assert any(ins == "RUN" and 'if [ -n "$ENGINE" ]' in args and " gcc " in args for ins, args in final)
    assert "engine" in (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]


def test_dockerfile_runs_velo_worker_as_non_root() -> None:
    stage = final_stage()
    users = [args for ins, args in stage if ins == "USER"]
    assert users, "the final stage runs as root: add a USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"USER {users[-1]} is root"
    entrypoint = [json.loads(args) for ins, args in stage if ins == "ENTRYPOINT"]
    cmd = [json.loads(args) for ins, args in stage if ins == "CMD"]
    assert entrypoint == [["velo"]], entrypoint
    assert cmd == [["worker"]], cmd
    assert parse_velo(cmd[0], "Dockerfile CMD")[0] == "worker"
    assert ("STOPSIGNAL", "SIGTERM") in stage


def test_dockerignore_keeps_data_models_and_venv_out() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    required = {".git", ".venv", "demo", "bench/data", "tests", "**/__pycache__", ".pytest_cache", ".ruff_cache"}
    assert required <= patterns, f".dockerignore misses {sorted(required - patterns)}"
    assert any(p.endswith(".joblib") for p in patterns), "model files are not excluded"
    for needed in ("pyproject.toml", "README.md", "dispatcher", "worker", "dispatcher/cli.py", "worker/task.py"):
        hits = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(needed, p)]
        assert not hits, f".dockerignore {hits} excludes {needed}, which the build needs"


# ---- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "minio", "createbucket", "dispatcher", "worker"} <= set(services)

    redis = services["redis"]
    assert redis["image"].startswith("redis:7"), redis["image"]
    command = redis["command"] if isinstance(redis["command"], list) else shlex.split(redis["command"])
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes", command
    volume = next(v.split(":")[0] for v in redis["volumes"] if v.endswith(":/data"))
    assert volume in (compose.get("volumes") or {}), f"redis data is not on a named volume: {volume}"

    minio = services["minio"]
    assert minio["image"].startswith("minio/minio")
    assert minio["healthcheck"]["test"], "minio needs a healthcheck (createbucket waits on it)"

    bucket = services["createbucket"]
    assert bucket["image"].startswith("minio/mc")
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    mc_args = bucket["command"] if isinstance(bucket["command"], list) else shlex.split(bucket["command"])
    assert "mb" in mc_args and mc_args[-1].endswith("/velo"), mc_args

    for name in ("dispatcher", "worker"):
        service = services[name]
        assert service.get("build") in (".", {"context": "."}), f"{name} is not the project image"
        assert "entrypoint" not in service, f"{name} must keep the image's `velo` entrypoint"


def test_compose_dispatcher_is_a_one_shot_dispatch(compose: dict[str, Any]) -> None:
    dispatcher = compose["services"]["dispatcher"]
    name, params = parse_velo(dispatcher["command"], "docker-compose.yml dispatcher")
    assert name == "dispatch" and params["wait"], dispatcher["command"]
    assert params["source"] == "s3://velo/in/" and params["model"] == "s3://velo/models/model.joblib"
    depends = dispatcher["depends_on"]
    assert {"redis", "createbucket"} <= set(depends)
    assert depends["createbucket"]["condition"] == "service_completed_successfully"
    assert dispatcher.get("restart", "no") == "no"

    env = dispatcher["environment"]
    assert under(params["source"], env["VELO_ALLOWED_PREFIXES"]), "the workers may not read the dispatched files"
    assert under(params["model"], env["VELO_MODEL_PREFIXES"]), "the workers may not load the dispatched model"
    created = compose["services"]["createbucket"]["command"][-1].rsplit("/", 1)[-1]
    assert params["source"].startswith(f"s3://{created}/"), "dispatching from a bucket createbucket does not make"


def test_compose_worker_scales(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    name, params = parse_velo(worker["command"], "docker-compose.yml worker")
    assert name == "worker" and params["processes"] == 1
    assert "container_name" not in worker, "a container_name prevents --scale worker=N"
    assert "ports" not in worker, "host ports on the worker prevent --scale worker=N"
    assert seconds(worker["stop_grace_period"]) >= MIN_GRACE_SECONDS
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_compose_serve_listens_on_loopback_of_the_host_with_a_token(compose: dict[str, Any]) -> None:
    serve = compose["services"]["serve"]
    name, params = parse_velo(serve["command"], "docker-compose.yml serve")
    assert name == "serve" and params["host"] == "0.0.0.0" and params["model"].startswith("s3://velo/models/")
    assert "VELO_API_TOKEN" in serve["environment"], "beyond loopback velo serve refuses to start without a token"
    assert all(port.startswith("127.0.0.1:") for port in serve["ports"]), serve["ports"]


def test_k8s_serve_has_probes_a_token_and_a_service(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    (container,) = k8s[("Deployment", "velo-serve")]["spec"]["template"]["spec"]["containers"]
    name, params = parse_velo(container["args"], "infra/k8s/serve.yaml")
    assert name == "serve" and params["host"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    secrets = [e["secretRef"] for e in container["envFrom"] if "secretRef" in e]
    assert {"name": "velo-api"} in secrets, "the token's Secret must be required, not optional"
    service = k8s[("Service", "velo-serve")]
    assert service["spec"]["ports"][0]["port"] == params["port"]


@pytest.mark.parametrize("service", ["dispatcher", "worker", "serve"])
def test_compose_velo_environment(compose: dict[str, Any], service: str) -> None:
    env = compose["services"][service]["environment"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["VELO_ALLOWED_PREFIXES"] == "s3://velo/"
    assert env["VELO_MODEL_PREFIXES"] == "s3://velo/models/"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env)
    for name in env:
        assert_env_name_is_read(name, f"docker-compose.yml {service}")


# ---- systemd ------------------------------------------------------------------------------------


def unit_service() -> dict[str, list[str]]:
    return systemd_unit(UNIT.read_text())["Service"]


def test_systemd_unit_runs_velo_worker_from_its_env_file() -> None:
    service = unit_service()
    assert service["EnvironmentFile"] == ["/etc/velosiped/worker.env"]
    defaults = dict(v.split("=", 1) for v in service.get("Environment", []))
    settings, _ = env_file(ENV_EXAMPLE.read_text())
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/bin/velo"), argv
    assert "${VELO_PROCESSES}" in argv, "the process count comes from VELO_PROCESSES"
    for env in (defaults, {**defaults, **settings}):  # EnvironmentFile= overrides Environment=
        name, params = parse_velo(expand(argv[1:], env), "velo-worker.service ExecStart")
        assert name == "worker" and params["processes"] == int(env["VELO_PROCESSES"])


def test_systemd_unit_stops_gracefully_and_is_hardened() -> None:
    service = unit_service()
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["KillMode"][0] in {"mixed", "control-group"}
    assert "control-group" in UNIT.read_text() and "mixed" in UNIT.read_text(), "explain the KillMode choice"
    assert seconds(service["TimeoutStopSec"][0]) >= MIN_GRACE_SECONDS
    assert service["User"][0] not in {"root", "0"}
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    (cache_dir,) = service["CacheDirectory"]
    defaults = dict(v.split("=", 1) for v in service.get("Environment", []))
    assert defaults["VELO_MODEL_CACHE"].startswith(f"/var/cache/{cache_dir}/"), (
        "under ProtectSystem=strict the model cache must be in the writable CacheDirectory"
    )


def test_worker_env_example() -> None:
    settings, commented = env_file(ENV_EXAMPLE.read_text())
    required = {
        "REDIS_URL",
        "VELO_PROCESSES",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "VELO_ALLOWED_PREFIXES",
        "VELO_MODEL_PREFIXES",
    }
    assert required <= set(settings), f"worker.env.example misses {sorted(required - set(settings))}"
    assert "AWS_ENDPOINT_URL" in set(settings) | commented
    assert settings["VELO_PROCESSES"].isdigit()
    assert settings["REDIS_URL"].startswith("redis://")
    for name in set(settings) | commented:
        assert_env_name_is_read(name, "worker.env.example")
    for value in settings.values():
        assert not value.startswith(("'", '"')), "systemd would keep the quotes"


# ---- cloud-init ---------------------------------------------------------------------------------


def test_cloud_init_installs_and_starts_the_unit() -> None:
    text = CLOUD_INIT.read_text()
    assert text.splitlines()[0] == "#cloud-config"
    config = yaml.safe_load(text)
    assert {"python3", "python3-venv"} <= set(config["packages"])

    unit_user = unit_service()["User"][0]
    assert unit_user in [u["name"] for u in config["users"] if isinstance(u, dict)]

    files = {f["path"]: f for f in config["write_files"]}
    assert files["/etc/velosiped/worker.env"]["content"] == ENV_EXAMPLE.read_text(), (
        "the env file in cloud-init drifted from infra/systemd/worker.env.example"
    )
    assert files["/etc/systemd/system/velo-worker.service"]["content"] == UNIT.read_text(), (
        "the unit in cloud-init drifted from infra/systemd/velo-worker.service"
    )
    assert files["/etc/velosiped/worker.env"]["permissions"] == "0600", "the env file holds secrets"

    script = "\n".join(c if isinstance(c, str) else shlex.join(c) for c in config["runcmd"])
    assert "PLACEHOLDER" in script and re.search(r"(?m)^\s*VELOSIPED_PACKAGE=", script)
    venv = Path(shlex.split(unit_service()["ExecStart"][0])[0]).parent.parent
    commands = shell_commands(script)
    assert ["python3", "-m", "venv", str(venv)] in commands
    assert [str(venv / "bin" / "pip"), "install", "--no-cache-dir", "$VELOSIPED_PACKAGE"] in commands
    assert ["systemctl", "enable", "--now", "velo-worker.service"] in commands
    for argv in velo_argvs(script):
        parse_velo(argv, "cloud-init runcmd")


# ---- Kubernetes and KEDA ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return k8s_objects()


def worker_deployment(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return k8s[("Deployment", "velo-worker")]


def worker_container(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (container,) = worker_deployment(k8s)["spec"]["template"]["spec"]["containers"]
    return container


def worker_queue(k8s: dict[tuple[str, str], dict[str, Any]]) -> str:
    container = worker_container(k8s)
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv[0] == "velo", argv
    name, params = parse_velo(argv[1:], "infra/k8s/worker.yaml")
    assert name == "worker"
    return params["queue"]


def test_kustomization_lists_the_manifests() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists a missing {resource}"
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    unlisted = {m for m in manifests if not m.endswith(".example.yaml")} - set(resources)
    assert not unlisted, f"not in kustomization.yaml: {sorted(unlisted)}"
    assert {"redis.yaml", "worker.yaml", "keda-scaledobject.yaml"} <= set(resources)


def test_k8s_redis_persists_with_aof(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    redis = k8s.get(("Deployment", "redis")) or k8s[("StatefulSet", "redis")]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv[argv.index("--appendonly") + 1] == "yes", argv
    data_dir = argv[argv.index("--dir") + 1] if "--dir" in argv else "/data"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in redis["spec"]["template"]["spec"].get("volumes", [])}
    claim_templates = {t["metadata"]["name"] for t in redis["spec"].get("volumeClaimTemplates", [])}
    volume = mounts[data_dir]
    assert volume in claim_templates or "persistentVolumeClaim" in volumes[volume], "Redis data is not on a PVC"
    if volume in volumes:
        assert ("PersistentVolumeClaim", volumes[volume]["persistentVolumeClaim"]["claimName"]) in k8s
    service = k8s[("Service", "redis")]
    assert 6379 in [p["port"] for p in service["spec"]["ports"]]


def test_k8s_worker_deployment(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = worker_deployment(k8s)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= MIN_GRACE_SECONDS
    assert pod["securityContext"]["runAsNonRoot"] is True
    image_uid = next(args for ins, args in reversed(final_stage()) if ins == "USER").split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == image_uid, "runAsUser should be the image's user"

    container = worker_container(k8s)
    _, params = parse_velo([*container["command"], *container["args"]][1:], "infra/k8s/worker.yaml")
    assert params["processes"] == 1
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"worker {kind} need cpu and memory"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    refs = [ref for source in container["envFrom"] for ref in source.values()]
    config_maps = [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s]
    secrets = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
    assert refs and all(("ConfigMap", name) in k8s for name in config_maps)
    example_secrets = {d["metadata"]["name"] for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text())}
    assert set(secrets) <= example_secrets, "each Secret the worker reads needs an example"

    config = k8s[("ConfigMap", config_maps[0])]["data"]
    cache_dir = config["VELO_MODEL_CACHE"]
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    mount = next((path for path in mounts if cache_dir.startswith(path.rstrip("/") + "/")), None)
    assert mount, "VELO_MODEL_CACHE is not on a mounted volume (the root filesystem is read-only)"


def test_k8s_environment_names_are_read(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    container = worker_container(k8s)
    names = {e["name"] for e in container.get("env", [])}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            names |= set(k8s[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for doc in yaml.safe_load_all((K8S / "secret.example.yaml").read_text()):
        names |= set(doc.get("stringData", {})) | set(doc.get("data", {}))
    names |= set(re.findall(r"(?m)^\s*#\s*([A-Z][A-Z0-9_]+):", (K8S / "worker.yaml").read_text()))
    assert {"REDIS_URL", "VELO_ALLOWED_PREFIXES", "VELO_MODEL_PREFIXES", "AWS_ACCESS_KEY_ID"} <= names
    for name in names:
        assert_env_name_is_read(name, "infra/k8s")


def test_keda_scales_the_worker_on_rq_keys(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    scaled = next(obj for (kind, _), obj in k8s.items() if kind == "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == worker_deployment(k8s)["metadata"]["name"]
    assert spec["minReplicaCount"] == 0, "idle fleets scale to zero"
    assert spec["maxReplicaCount"] >= 1
    assert spec["cooldownPeriod"] > 0

    queue = worker_queue(k8s)
    waiting = Queue.redis_queue_namespace_prefix + queue  # rq:queue:<name>, a list
    running = StartedJobRegistry.key_template.format(queue)  # rq:wip:<name>, a sorted set
    assert waiting == f"rq:queue:{queue}" and running == f"rq:wip:{queue}"

    triggers = spec["triggers"]
    assert all(t["type"] == "redis" for t in triggers)
    lists = [t["metadata"]["listName"] for t in triggers]
    assert waiting in lists, f"no trigger on the worker's queue {waiting}: {lists}"
    assert set(lists) <= {waiting, running}, f"triggers on keys RQ does not use for {queue!r}: {lists}"

    config_name = next(s["configMapRef"]["name"] for s in worker_container(k8s)["envFrom"] if "configMapRef" in s)
    url = k8s[("ConfigMap", config_name)]["data"]["REDIS_URL"]
    m = re.fullmatch(r"redis://(?:[^@/]*@)?([^:/]+):(\d+)/(\d+)", url)
    assert m, f"REDIS_URL {url} is not redis://host:port/db"
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["address"] == f"{m.group(1)}:{m.group(2)}", "KEDA watches another Redis than the workers"
        assert str(meta.get("databaseIndex", "0")) == m.group(3)
        assert int(meta["listLength"]) >= 1


# ---- docs/OPERATIONS.md -------------------------------------------------------------------------


def doc_shell_blocks() -> list[str]:
    return re.findall(r"```(?:sh|bash|shell)\n(.*?)```", OPERATIONS.read_text(), flags=re.S)


def test_operations_doc_commands_parse(compose: dict[str, Any]) -> None:
    checked = 0
    for block in doc_shell_blocks():
        for argv in velo_argvs(block):
            parse_velo(argv, "docs/OPERATIONS.md")
            checked += 1
        for argv in shell_commands(block):  # docker compose run [--opts] SERVICE [velo args]
            if argv[:3] != ["docker", "compose", "run"]:
                continue
            rest = argv[3:]
            while rest and rest[0].startswith("-"):
                rest = rest[1:]
            service, *args = rest
            if service in {"dispatcher", "worker"}:
                parse_velo(args or compose["services"][service]["command"], "docs/OPERATIONS.md")
                checked += 1
    assert checked >= 5, "the walk-through shows fewer velo commands than expected"


def test_operations_doc_settings_table_matches_the_code() -> None:
    text = OPERATIONS.read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}
    required = {"REDIS_URL", "AWS_ENDPOINT_URL", "VELO_ALLOWED_PREFIXES", "VELO_MODEL_PREFIXES"}
    required |= {"VELO_MODEL_CACHE", "VELO_STATE_DIR"}
    assert required <= documented, f"settings table misses {sorted(required - documented)}"
    read = {n for n in code_env_names() if not n.startswith("VELO_TEST_")}
    assert read <= documented, f"the code reads undocumented settings: {sorted(read - documented)}"
    for name in documented:
        assert_env_name_is_read(name, "docs/OPERATIONS.md settings table")


RUN_APART = {"__init__", "serve_baseline", "spark_job"}
"""Benchmark modules that run in their own process (a server, a Spark job), not imported."""


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in RUN_APART))
def test_every_benchmark_imports(module: str) -> None:
    # `make bench` runs rarely: a moved function must not break it unseen (bench.big_model did once)
    importlib.import_module(f"bench.{module}")
