"""The options `velo` commands share, and what they become: the Redis ones, and a dispatch's
(``velo run``, ``dispatch``, ``watch``), checked and turned into :class:`dispatcher.plan.Options`."""

from __future__ import annotations

import codecs
import inspect
from collections.abc import Callable
from typing import Any

import click

from dispatcher.enqueue import JOB_TIMEOUT
from dispatcher.plan import DEFAULT_PATTERNS, Options
from dispatcher.sharding import parse_size
from velosiped import settings, storage
from velosiped.errors import ConfigError
from velosiped.jobs import ENGINES
from velosiped.models import version_of

__all__ = ["dispatch_options", "make_options", "redis_option"]

SHARD_SIZE_ENV = settings.SHARD_SIZE.env

redis_help = (
    "Redis URL: redis://[:password@]host:6379/0, rediss://, unix://, or through Sentinel "
    "redis+sentinel://[:password@]host:26379[,host:port...]/mymaster/0 (default: env REDIS_URL)."
)
queue_help = "RQ queue name."
dry_run_help = "Print what would happen to each file, and why; enqueue nothing."
force_help = "Redo files already done."
pattern_help = "Input file name pattern; repeat for several (default: *.csv, *.csv.gz)."
output_help = "Write outputs under this prefix (outside SOURCE) instead of next to the inputs, keeping relative paths."
keep_help = "Input columns copied to the output, comma-separated (default: all)."
features_help = "Input columns fed to the model, in its order, comma-separated (default: the model's feature names)."
sep_help = "CSV delimiter of the inputs, kept for the outputs ('\\t' for tabs)."
encoding_help = "Text encoding of the CSV inputs (outputs are UTF-8)."
timeout_help = "Seconds one file may take before its job is stopped."
shard_size_help = (
    "Split plain CSVs above this size into shards of about this size, scored by many workers and "
    "assembled into one output (bytes, or 512MB, 1GB; 0: never; default: env VELO_SHARD_SIZE or 1GB). "
    "A quoted field holding a line break cannot be split: use 0 for such files."
)
stats_help = (
    "Gather each file's feature and prediction statistics while scoring it, for `velo report` "
    "(on by default; about 1-3.5% of scoring CPU as measured; --no-stats turns it off)."
)
shadow_help = (
    "A challenger model (path or s3:// URI) scored on the same read as --model, block by block; its "
    "outputs go under --shadow-output, the champion's stay as they are. Files are then scored whole "
    "(no shards: the default --shard-size is set aside, another refused). Implies gathering the "
    "champion-vs-challenger statistics `velo report` shows."
)
group_size_help = (
    "Score up to this many small files in one job, with one predict over their rows; each file still "
    "gets its own output, lineage and state (1: one job a file)."
)
group_bytes_help = (
    "Files below this size may share a job, and a job's files stop there in all, so bigger files still "
    "spread over every worker (see --group-size; bytes, or 4MB, 512KB)."
)
shadow_output_help = (
    "Where the challenger's outputs go, keeping relative paths (required with --shadow; outside SOURCE "
    "and apart from --output)."
)
engine_help = (
    "What predicts: scikit-learn's own predict, or treelite: a tree ensemble (HistGradientBoosting, "
    "random forest...) compiled once per model version (pip install 'velosiped[engine]', a C compiler), "
    "checked against scikit-learn on the first 1,000 rows it scores; any difference, or a model it cannot "
    "take, and scikit-learn predicts, said in one log line."
)


def redis_option(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--queue", "queue", default="velo", show_default=True, help=queue_help)(f)
    return click.option("--redis", "redis_url", envvar="REDIS_URL", default=None, help=redis_help)(f)


SOURCE_HELP = (
    "SOURCE is a local folder or file, or an S3 prefix taken as a folder, as `aws s3 cp --recursive` "
    "does: s3://bucket/in and s3://bucket/in/ both mean the folder in/ (never in2/); an object's "
    "exact key (s3://bucket/in/x.csv) means that one file."
)


def serve_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`velo serve`'s options (its --redis and --queue are every command's)."""
    int_from = click.IntRange
    for opt in reversed(
        [
            click.option("--model", required=True, help="The model to serve: a path or s3:// URI of a joblib dump."),
            click.option("--host", default="127.0.0.1", show_default=True, help=host_help),
            click.option("--port", type=int_from(0, 65535), default=8000, show_default=True, help="Port to listen on."),
            click.option("--workers", type=int_from(1), default=1, show_default=True, help=serve_workers_help),
            click.option("--model-sha256", default=None, help=serve_sha256_help),
            click.option("--model-poll", type=click.FloatRange(0), default=10.0, show_default=True, help=poll_help),
            click.option("--max-rows", type=int_from(1), default=100_000, show_default=True, help=max_rows_help),
            click.option("--max-body", default="64MB", show_default=True, help=max_body_help),
            click.option("--batch-rows", type=int_from(1), default=1024, show_default=True, help=batch_rows_help),
            click.option("--batch-wait-ms", type=click.FloatRange(0), default=0.0, show_default=True, help=wait_help),
            click.option("--reference-profile", default=None, metavar="URI", help=serve_profile_help),
            click.option(
                "--engine", type=click.Choice(ENGINES), default="sklearn", show_default=True, help=serve_engine_help
            ),
        ]
    ):
        f = opt(f)
    return f


host_help = "Address to listen on; beyond loopback it needs VELO_API_TOKEN."
serve_engine_help = (
    "What predicts: scikit-learn's own predict, or treelite, as for `velo run --engine` (checked against "
    "scikit-learn on the first 1,000 rows each server process answers); GET /info says which."
)
serve_workers_help = "Server processes (each loads the model)."
serve_sha256_help = "Serve the model only if its SHA-256 is this (checked at every load)."
poll_help = "Seconds between looks for a new model version (0: never)."
max_rows_help = "Rows one request may hold (more: 413)."
max_body_help = "Bytes one request body may hold (more: 413)."
batch_rows_help = "Rows the batcher gathers into one predict call at most."
serve_profile_help = (
    "The profile (`velo profile`) finished batches are judged against in their reports and drift "
    "gauges (default: each batch's previous one on the same source and model)."
)
wait_help = "Milliseconds a request may wait for others to join its predict call (0: only those arrived together)."


def dispatch_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """A dispatch's options and SOURCE argument, which the command's help explains after its own text."""
    f.__doc__ = inspect.cleandoc(f.__doc__ or "") + "\n\n" + SOURCE_HELP
    for opt in reversed(
        [
            click.argument("source"),
            click.option("--model", required=True, help="Path or s3:// URI of a joblib model."),
            click.option("--pattern", "patterns", multiple=True, help=pattern_help),
            click.option("--output", default=None, help=output_help),
            click.option("--suffix", default=".out", show_default=True, help="Added to output names."),
            click.option("--keep", default=None, help=keep_help),
            click.option("--features", default=None, help=features_help),
            click.option("--sep", default=",", show_default=True, help=sep_help),
            click.option("--encoding", default="utf-8", show_default=True, help=encoding_help),
            click.option("--proba", is_flag=True, help="Add one proba_<class> column per class."),
            click.option("--force", is_flag=True, help=force_help),
            click.option("--dry-run", is_flag=True, help=dry_run_help),
            click.option("--model-sha256", default=None, help="Pin the model's SHA-256 digest."),
            click.option("--timeout", default=JOB_TIMEOUT, show_default=True, type=int, help=timeout_help),
            click.option(
                "--shard-size", envvar=SHARD_SIZE_ENV, default=settings.SHARD_SIZE.default, help=shard_size_help
            ),
            click.option("--stats/--no-stats", default=True, show_default=True, help=stats_help),
            click.option("--group-size", type=click.IntRange(1), default=64, show_default=True, help=group_size_help),
            click.option("--group-bytes", default="4MB", show_default=True, help=group_bytes_help),
            click.option("--shadow", default=None, help=shadow_help),
            click.option("--shadow-output", default=None, help=shadow_output_help),
            click.option("--shadow-sha256", default=None, help="Pin the challenger's SHA-256 digest."),
            click.option(
                "--engine", type=click.Choice(ENGINES), default="sklearn", show_default=True, help=engine_help
            ),
        ]
    ):
        f = opt(f)
    return f


def make_options(
    source: str,
    model: str,
    patterns: tuple[str, ...],
    output: str | None,
    suffix: str,
    keep: str | None,
    proba: bool,
    force: bool,
    model_sha256: str | None,
    features: str | None,
    sep: str,
    encoding: str,
    shard_size: str = "0",
    stats: bool = True,
    shadow: str | None = None,
    shadow_output: str | None = None,
    shadow_sha256: str | None = None,
    engine: str = "sklearn",
    group_size: int = 1,
    group_bytes: str = "4MB",
) -> Options:
    _check_outputs(source, storage.normalize(output) if output else None, suffix)
    model = storage.normalize(model)
    version = version_of(model)
    model_sha256 = _pin(model, version, model_sha256, "--model-sha256")
    challenger = _challenger(source, output, shadow, shadow_output, shadow_sha256)
    if challenger and shard_size != settings.SHARD_SIZE.default and parse_size(shard_size):
        raise ConfigError(
            f"--shadow scores each file whole (a challenger's output is not assembled from shards), but "
            f"--shard-size {shard_size} would split big files; use --shard-size 0"
        )
    return Options(
        model=model,
        model_version=version,
        patterns=patterns or DEFAULT_PATTERNS,
        suffix=suffix,
        output=storage.normalize(output) if output else None,
        keep=_columns(keep),
        proba=proba,
        features=_columns(features),
        sep=_separator(sep),
        encoding=_encoding(encoding),
        force=force,
        model_sha256=model_sha256,
        shard_size=0 if challenger else parse_size(shard_size),  # a file scored by two models is scored whole
        stats=stats,
        group_size=group_size,
        group_bytes=parse_size(group_bytes, "--group-bytes"),
        **challenger,
        engine=engine,
    )


def _pin(model: str, version: str, sha256: str | None, option: str) -> str | None:
    """The digest a model is pinned to, checked against the one known at dispatch when there is one."""
    if not sha256:
        return None
    sha256 = sha256.lower().removeprefix("sha256:")
    if version.startswith("sha256:") and version != "sha256:" + sha256:
        raise ConfigError(f"{model}: digest {version} does not match {option} {sha256}; check both")
    return sha256


def _challenger(
    source: str, output: str | None, shadow: str | None, shadow_output: str | None, shadow_sha256: str | None
) -> dict[str, Any]:
    """The --shadow options, checked: {} without a challenger."""
    if not shadow:
        if shadow_output or shadow_sha256:
            raise ConfigError("--shadow-output and --shadow-sha256 need --shadow MODEL2 (the challenger)")
        return {}
    if not shadow_output:
        raise ConfigError("--shadow needs --shadow-output PREFIX: where the challenger's outputs go")
    model = storage.normalize(shadow)
    where = storage.normalize(shadow_output)
    _check_outputs(source, where, ".out", option="--shadow-output")
    if output:
        a, b = storage.normalize(output).rstrip("/") + "/", where.rstrip("/") + "/"
        if a.startswith(b) or b.startswith(a):
            raise ConfigError(
                f"--shadow-output {shadow_output}: overlaps --output {output}; "
                "the challenger's outputs need a prefix of their own"
            )
    try:
        version = version_of(model)
    except ConfigError:
        raise ConfigError(f"{model}: challenger model not found; check --shadow") from None
    return {
        "shadow": model,
        "shadow_version": version,
        "shadow_sha256": _pin(model, version, shadow_sha256, "--shadow-sha256"),
        "shadow_output": where,
    }


def _check_outputs(source: str, output: str | None, suffix: str, option: str = "--output") -> None:
    """Refuse outputs the plan could not tell from inputs: it would skip every input, silently."""
    if not suffix:
        raise ConfigError("--suffix '': outputs would take their inputs' names; use a suffix, e.g. --suffix .out")
    if output is None:
        return
    src, out = source.rstrip("/") + "/", output.rstrip("/") + "/"
    if src.startswith(out):  # the plan skips whatever is under --output: every input here
        raise ConfigError(
            f"{option} {output}: holds SOURCE {source}, so every input would be skipped; use a prefix outside SOURCE"
        )
    if out.startswith(src):
        raise ConfigError(
            f"{option} {output}: inside SOURCE {source}, so outputs would be listed as inputs; "
            "use a prefix outside SOURCE"
        )


def _columns(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text is not None else None


def _separator(sep: str) -> str:
    sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)
    if len(sep) != 1 or sep in '"\r\n':
        raise ConfigError(f"--sep {sep!r}: the delimiter must be one character (use '\\t' for tabs)")
    return sep


def _encoding(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError as e:
        raise ConfigError(f"--encoding {name!r}: unknown encoding; use e.g. utf-8, latin-1, cp1252") from e
