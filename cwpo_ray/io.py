"""Filesystem helpers: every output location is a URI (local path, s3://, gs://) via pyarrow.fs."""
from __future__ import annotations

import os

import pyarrow.fs as pafs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a ``scheme://`` URI."""
    if "://" in uri and not uri.startswith("file://"):
        return pafs.FileSystem.from_uri(uri)
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


OBJECT_STORES = ("s3", "gs", "gcs", "abfs", "abfss")  # schemes whose first path segment is a bucket / container


def check_storage(uri: str | None, what: str, must_exist: bool = False) -> None:
    """Fail fast, before any compute, with one line naming the field and the URI, when a location cannot
    be used: a scheme pyarrow does not know, an endpoint that does not answer, credentials it refuses, a
    bucket that does not exist (object stores); with ``must_exist``, nothing at the path."""
    from cwpo_ray.config import ConfigError

    if not uri or "://" not in uri or uri.startswith("file://"):
        if must_exist and uri and not exists(uri):
            raise ConfigError(f"config error: {what}: {uri!r} does not exist")
        return
    try:
        fs, path = resolve(uri)
        if uri.split("://", 1)[0] in OBJECT_STORES:
            bucket = path.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise ConfigError(f"config error: {what}: {uri}: bucket {bucket!r} does not exist (or these "
                                  "credentials cannot see it)")
        if must_exist and fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise ConfigError(f"config error: {what}: {uri!r} does not exist")
    except ConfigError:
        raise
    except Exception as e:  # unknown scheme, unreachable endpoint, refused credentials: the library's words
        detail = " ".join(str(e).split())
        raise ConfigError(f"config error: {what}: {uri}: storage not usable: {type(e).__name__}: {detail[:300]}") from None


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def rmtree(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def write_text(uri: str, text: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(uri: str) -> str:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()
