"""Filesystem helpers: every location is a local path or a URI (``s3://``, ``gs://``, any pyarrow.fs
filesystem), read and written through pyarrow.fs.

Local tools (``save_pretrained``, ``from_pretrained``, vLLM, matplotlib) need local folders; two helpers
bridge them to URIs, so that the stages hold no ``if "://" in path`` cases of their own:

* :func:`staged_dir` — a local folder to write into, uploaded to the URI when the block ends;
* :func:`local_model_dir` — a model / tokenizer folder at a URI, downloaded once per node into a
  content-keyed cache (``$XDG_CACHE_HOME/cwpo_ray/models/<key>``, default ``~/.cache``); local paths and
  hub ids are returned unchanged.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a ``scheme://`` URI."""
    if "://" in uri and not uri.startswith("file://"):
        return pafs.FileSystem.from_uri(uri)
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


def is_remote(uri: str | None) -> bool:
    """True for a ``scheme://`` URI other than ``file://`` (which is a local path)."""
    return bool(uri) and "://" in uri and not uri.startswith("file://")


def absolute(uri: str) -> str:
    """An absolute local path (``file://`` stripped) for a local location; a URI without a trailing slash."""
    return uri.rstrip("/") if is_remote(uri) else resolve(uri)[1]


def parent(uri: str) -> str:
    """The folder holding ``uri`` (:func:`absolute` form)."""
    return posixpath.dirname(absolute(uri))


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


def check_input(uri: str | None, what: str) -> None:
    """:func:`check_storage` for an input (a model, a tokenizer, a data folder) given as a URI: it must
    exist. Local paths and hub ids are left to their readers (``from_pretrained``, the input checks)."""
    if is_remote(uri):
        check_storage(uri, what, must_exist=True)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    """True for a folder (on an object store: a prefix with objects under it)."""
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def listdir(uri: str) -> list[str]:
    """The names of the files and folders directly under a folder, sorted; [] when it is no folder."""
    if not is_dir(uri):
        return []
    fs, path = resolve(uri)
    return sorted(f.base_name for f in fs.get_file_info(pafs.FileSelector(path)))


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
    """Write a text file whole: locally under a temporary name, then renamed (a reader or a killed run never
    sees half a file); on an object store one PUT, which is atomic already."""
    fs, path = resolve(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    local = isinstance(fs, pafs.LocalFileSystem)
    target = f"{path}.tmp-{uuid.uuid4().hex}" if local else path
    with fs.open_output_stream(target) as f:
        f.write(text.encode())
    if local:
        fs.move(target, path)


def read_text(uri: str) -> str:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def files_under(uri: str) -> list[pafs.FileInfo]:
    """Every file under a folder (recursively, sorted by path), or the file itself; [] when nothing is there."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [info]
    if info.type != pafs.FileType.Directory:
        return []
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted((f for f in found if f.type == pafs.FileType.File), key=lambda f: f.path)


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy the files of a local folder to ``uri`` (added to, or replacing files of the same name in, what is
    there already)."""
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@contextlib.contextmanager
def staged_dir(uri: str) -> Iterator[str]:
    """A local folder for the files of ``uri``, for tools that write local files: the folder itself (created)
    for a local path; for a URI a temporary folder, uploaded to it when the block ends without an error
    (and removed either way)."""
    if not is_remote(uri):
        path = absolute(uri)
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="cwpo_stage_") as d:
        yield d
        upload_dir(d, uri)


def copy_file(src: str, dst: str) -> None:
    """Copy one file between any two locations; a local copy is a hard link where the filesystem allows."""
    src_fs, s = resolve(src)
    dst_fs, d = resolve(dst)
    dst_fs.create_dir(posixpath.dirname(d), recursive=True)
    if isinstance(src_fs, pafs.LocalFileSystem) and isinstance(dst_fs, pafs.LocalFileSystem):
        try:
            os.link(s, d)
            return
        except OSError:
            pass
    pafs.copy_files(s, d, source_filesystem=src_fs, destination_filesystem=dst_fs)


def cache_root() -> str:
    """This node's cache of the package: ``$XDG_CACHE_HOME/cwpo_ray`` (default ``~/.cache/cwpo_ray``)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "cwpo_ray")


def lock_file(uri: str) -> str:
    """A path for a :class:`filelock.FileLock` that serialises the processes working in the folder ``uri``:
    ``{folder}/.lock`` for a local folder (created; a file system every node mounts serialises them all);
    for a URI, a file in this node's cache keyed by the URI (object stores have no locks: it serialises
    the processes of one node only, so callers that need more keep those processes on one node)."""
    if not is_remote(uri):
        os.makedirs(absolute(uri), exist_ok=True)
        return os.path.join(absolute(uri), ".lock")
    key = hashlib.blake2b(absolute(uri).encode(), digest_size=16).hexdigest()
    os.makedirs(os.path.join(cache_root(), "locks"), exist_ok=True)
    return os.path.join(cache_root(), "locks", f"{key}.lock")


def remote_key(uri: str, files: list[pafs.FileInfo]) -> str:
    """A key for the files under a remote folder without reading them: the URI and every file's relative
    name, size and modification time (object stores give no content hash that is the same across stores)."""
    root = resolve(uri)[1].rstrip("/")
    h = hashlib.blake2b(digest_size=16)
    h.update(absolute(uri).encode())
    for f in files:
        h.update(f"\0{f.path[len(root):]}\0{f.size}\0{f.mtime_ns}".encode())
    return h.hexdigest()


def local_model_dir(uri: str) -> str:
    """A local folder to ``from_pretrained`` (or hand to vLLM) the model / tokenizer at ``uri`` from.

    Local paths and hub ids are returned unchanged (``file://`` stripped). A URI's folder is downloaded
    once per node into ``{cache_root()}/models/<key>`` (:func:`remote_key`: a changed file is a new key),
    under a file lock (the workers and actors of one node download it once between them) into a temporary
    folder renamed into place, so that a folder in the cache is always complete."""
    if not is_remote(uri):
        return resolve(uri)[1] if uri.startswith("file://") else uri
    files = files_under(uri)
    if not files:
        raise FileNotFoundError(f"no model files at {uri}")
    if len(files) == 1 and files[0].path.rstrip("/") == resolve(uri)[1].rstrip("/"):
        raise ValueError(f"{uri} is a file; a model / tokenizer location is a folder")
    dst = os.path.join(cache_root(), "models", remote_key(uri, files))
    if os.path.isdir(dst):
        return dst
    from filelock import FileLock

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with FileLock(f"{dst}.lock"):
        if not os.path.isdir(dst):
            fs, path = resolve(uri)
            tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(dst))
            try:
                pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
                root = path.rstrip("/")
                want = {f.path[len(root) + 1:]: f.size for f in files}
                got = {f.path[len(tmp) + 1:]: f.size for f in files_under(tmp)}
                if got != want:  # rewritten between the listing (the key) and the copy: not this key's files
                    raise RuntimeError(f"{uri} changed while it was being downloaded; load it again")
                os.rename(tmp, dst)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return dst
