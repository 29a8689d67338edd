"""`velo profile`: the statistics workers gather while scoring, made from any folder (training data,
a validation set), and written as a JSON profile: the reference of later `velo report`s.

Every file is read, its features picked and scored exactly as a worker does (worker.scoring's
``score_stream``, velosiped.frames' feature picking), block by block: memory stays flat whatever
the data's size. The prediction's distribution is part of the profile. Outputs of earlier runs
(``*.out.csv``) are never taken as inputs. The profile is written whole or not at all (a local
temporary file renamed into place, or one S3 upload), as outputs are.
"""

from __future__ import annotations

import fnmatch
import io
from collections.abc import Sequence
from dataclasses import replace
from typing import IO, Any, cast

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from dispatcher.plan import DEFAULT_PATTERNS, is_output
from velosiped import storage
from velosiped.errors import ConfigError, InputError, one_line
from velosiped.jobs import PARTS_SUFFIX
from velosiped.models import version_of
from velosiped.sketch import Stats

__all__ = ["OUTPUT_SUFFIX", "inputs", "load_profile", "profile", "write_profile"]

OUTPUT_SUFFIX = ".out"
"""Files whose name ends so before their extension are outputs of a run, never profiled."""

_FIX = "fix the file, or leave it out (--pattern, another DATA): a profile reads every file"


class _Discard(io.RawIOBase):
    """Where the predictions' CSV goes: nowhere (only their statistics are kept)."""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(memoryview(b))


def inputs(source: str, patterns: Sequence[str]) -> list[storage.ObjectInfo]:
    """The files under ``source`` a profile reads: matching ``patterns``, outputs and parts left out."""
    found = []
    for info in storage.list_files(source, ("*",)):
        name = info.uri.rsplit("/", 1)[-1]
        if not any(fnmatch.fnmatch(name, p) for p in patterns) or is_output(info.uri, OUTPUT_SUFFIX):
            continue
        if PARTS_SUFFIX + "/" in info.uri:
            continue
        found.append(info)
    return found


def profile(
    source: str,
    model_uri: str,
    *,
    patterns: Sequence[str] = (),
    features: Sequence[str] | None = None,
    sep: str = ",",
    encoding: str = "utf-8",
    model_sha256: str | None = None,
    console: Console | None = None,
) -> Stats:
    """Every file's statistics under ``source`` scored by the model, merged.

    Raises:
        ConfigError: the model is missing or refused, or no file matches.
        InputError: a file cannot be scored (its message names it and why).
    """
    from worker import models
    from worker.scoring import Dialect, QuotedLineBreaks, is_parquet, score_stream

    source = storage.normalize(source)
    model_uri = storage.normalize(model_uri)
    model = models.load(model_uri, version_of(model_uri), model_sha256)
    patterns = tuple(patterns) or DEFAULT_PATTERNS
    files = inputs(source, patterns)
    if not files:
        raise ConfigError(f"no files matching {', '.join(patterns)} under {source}; check DATA or --pattern")
    merged = Stats()
    progress = Progress(
        TextColumn("profile"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[files]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=console is None or not console.is_terminal,
    )
    with progress:
        task = progress.add_task("profile", total=sum(f.size for f in files), files="")
        for n, info in enumerate(files, 1):
            progress.update(task, files=f"file {n} of {len(files)}")
            dialect = Dialect(sep, encoding)
            stats = Stats()
            for attempt in (dialect, replace(dialect, newlines_in_values=True)):
                try:
                    with storage.open_read(info.uri, info.version) as src:
                        score_stream(
                            src,
                            cast(IO[bytes], _Discard()),
                            model,
                            name=info.uri,
                            keep=[],
                            features=features,
                            dialect=attempt,
                            parquet=is_parquet(info.uri),
                            stats=stats,
                        )
                    break
                except QuotedLineBreaks as e:  # read it again tracking quotes, as a worker does
                    if attempt.newlines_in_values:
                        raise InputError(f"{e}; {_FIX}") from e
                except InputError as e:
                    raise InputError(f"{e}; {_FIX}") from e
                except Exception as e:
                    found = storage.translate(info.uri, e)
                    if found is None:
                        raise
                    raise found from e
            merged.merge(stats)
            progress.advance(task, info.size)
    return merged


def write_profile(uri: str, stats: Stats) -> str:
    """Write ``stats`` as a profile at ``uri`` (a local path or s3:// URI), whole or not at all."""
    uri = storage.normalize(uri)
    if uri.endswith("/"):
        raise ConfigError(f"-o {uri}: names a folder; give the profile's file name, e.g. profile.json")
    with storage.write_atomic(uri) as out:
        out.write(stats.to_json().encode() + b"\n")
    return uri


def load_profile(uri: str) -> Stats:
    """The profile at ``uri`` (written by `velo profile`).

    Raises:
        ConfigError: it is missing, or not a profile.
    """
    uri = storage.normalize(uri)
    if storage.head(uri) is None:
        raise ConfigError(f"{uri}: no such profile; make one with `velo profile DATA --model M -o {uri}`")
    with storage.open_read(uri) as f:
        data = f.read()
    try:
        return Stats.from_json(data)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{uri}: not a profile ({one_line(e)}); make one with `velo profile`") from e
