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
