"""Rows of a dataset of the table (``sources.py``), read with ``datasets.load_dataset``.

A dataset's file is taken from one folder laid out as the hub lays out the repository at its
pinned revision, the first of:

1. ``<data.local_dir>/<hub id>/``: a local copy, when ``data.local_dir`` is set and that folder
   exists (the file must be in it);
2. ``<data.cache_dir>/hub/<hub id>/<revision>/``: the cache, when it holds the file;
3. the hub: the file of the pinned revision is downloaded into that cache folder, unless the hub
   is off (``HF_HUB_OFFLINE``).

``load_dataset(<folder>, data_files={split: file}, split=split)`` then reads it, with its Arrow
cache in ``<data.cache_dir>/arrow``. A dataset that none of them has raises DatasetUnavailable,
naming the dataset id and the setting that provides a local copy.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core.settings import DataSettings
from shared.datasets.sources import Source

LOCAL_SETTING = "data.local_dir (DUALPHASE_DATA__LOCAL_DIR)"


class DatasetUnavailable(FileNotFoundError):
    """A dataset that no local copy, cache or reachable hub holds; the message names its id and
    the setting that provides a local copy."""


@dataclass(frozen=True)
class Located:
    """Where a dataset's file was found: the folder load_dataset reads, and what it is."""

    folder: Path
    origin: str  # "local copy <folder>", "the cache <folder>" or "the hub, into <folder>"


def hint(source: Source) -> str:
    return (
        f"set {LOCAL_SETTING} to a folder holding {source.hub_id}/{source.data_file} as the hub "
        f"lays it out at revision {source.revision[:7]}, or run `dualphase data prepare` where "
        "the hub is reachable"
    )


def cache_folder(source: Source, data: DataSettings) -> Path:
    return data.cache_dir / "hub" / source.hub_id / source.revision


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def locate(source: Source, data: DataSettings) -> Located:
    """The folder holding the dataset's file: a local copy, the cache, or a download into it."""
    if data.local_dir is not None and (data.local_dir / source.hub_id).is_dir():
        folder = data.local_dir / source.hub_id
        if not (folder / source.data_file).is_file():
            raise DatasetUnavailable(
                f"{source.name}: the local copy of {source.hub_id} at {folder} has no "
                f"{source.data_file}; {hint(source)}"
            )
        return Located(folder, f"local copy {folder}")
    folder = cache_folder(source, data)
    if (folder / source.data_file).is_file():
        return Located(folder, f"the cache {folder}")
    download(source, data, folder)
    return Located(folder, f"the hub, into {folder}")


def download(source: Source, data: DataSettings, folder: Path) -> None:
    """The file of the pinned revision from the hub into ``folder``, at its repository path."""
    missing = (
        f"no local copy at {data.local_dir / source.hub_id}, "
        if data.local_dir is not None
        else f"{LOCAL_SETTING} unset, "
    )
    if hub_offline():
        raise DatasetUnavailable(
            f"{source.name}: cannot load {source.hub_id}: {missing}not in the cache {folder}, and "
            f"the hub is off (HF_HUB_OFFLINE); {hint(source)}"
        )
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(
            source.hub_id,
            source.data_file,
            repo_type="dataset",
            revision=source.revision,
            local_dir=folder,
        )
    except Exception as exc:  # no network, no such revision or file: all say the same to a user
        raise DatasetUnavailable(
            f"{source.name}: cannot load {source.hub_id}: {missing}not in the cache {folder}, and "
            f"the hub did not give {source.data_file} at {source.revision[:7]} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"{hint(source)}"
        ) from exc


def unfold(source: Source, located: Located, data: DataSettings) -> tuple[Path, str]:
    """A keyed file (one JSON object keyed by problem id) written as JSON Lines, the key as
    ``pid``, into the cache (again whenever the file it came from changes): (folder, file)."""
    original = located.folder / source.data_file
    stat = original.stat()
    stamp = f"{original.resolve()} {stat.st_size} {stat.st_mtime_ns}"
    folder = data.cache_dir / "unfolded" / source.hub_id / source.revision
    target = folder / (Path(source.data_file).stem + ".jsonl")
    stamp_file = folder / ".from"
    if not (target.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp):
        try:
            keyed = json.loads(original.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetUnavailable(
                f"{source.name}: {source.hub_id} ({located.origin}): {source.data_file} is not "
                f"one JSON object: {exc}; {hint(source)}"
            ) from exc
        if not isinstance(keyed, dict) or not all(isinstance(v, dict) for v in keyed.values()):
            raise DatasetUnavailable(
                f"{source.name}: {source.hub_id} ({located.origin}): {source.data_file} is not "
                f"one JSON object of rows keyed by problem id; {hint(source)}"
            )
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with partial.open("w", encoding="utf-8") as out:
            for pid, row in keyed.items():
                out.write(json.dumps({"pid": pid, **row}, ensure_ascii=False) + "\n")
        partial.replace(target)
        stamp_file.write_text(stamp)
    return folder, target.name


def read_rows(source: Source, data: DataSettings, located: Located) -> list[dict[str, Any]]:
    """Every row of the dataset's split, read by load_dataset from the folder ``locate`` found."""
    folder, data_file = (
        unfold(source, located, data) if source.keyed else (located.folder, source.data_file)
    )
    import datasets  # heavy: imported by the first load only

    datasets.disable_progress_bars()
    try:
        rows = datasets.load_dataset(
            str(folder),
            data_files={source.split: data_file},
            split=source.split,
            cache_dir=str(data.cache_dir / "arrow"),
        )
    except Exception as exc:  # a file load_dataset cannot read is a wrong copy, whatever it raised
        raise DatasetUnavailable(
            f"{source.name}: {source.hub_id} ({located.origin}): load_dataset cannot read "
            f"{folder / data_file}: {type(exc).__name__}: {exc}; {hint(source)}"
        ) from exc
    return [dict(row) for row in rows]


def materialize(source: Source, data: DataSettings) -> Located:
    """Put the dataset's file into the cache folder that services without a local copy read: a
    local copy is copied there (again when it changed), otherwise the hub's file is downloaded."""
    located = locate(source, data)
    cached = cache_folder(source, data)
    if located.folder != cached:
        original, copy = located.folder / source.data_file, cached / source.data_file
        if not (
            copy.is_file()
            and copy.stat().st_size == original.stat().st_size
            and copy.stat().st_mtime_ns == original.stat().st_mtime_ns
        ):
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(original, copy.with_name(copy.name + ".partial"))
            copy.with_name(copy.name + ".partial").replace(copy)
    return located
