"""What the user sees: per stage a progress bar and one summary line; library logs go to files.

``cwpo`` runs quiet unless given ``--verbose`` (:func:`setup`):

- Python logging of every library the stages use (Ray, Ray Data / Train / Tune, vLLM, DeepSpeed,
  transformers, ...) and Python warnings go to ``{log_dir}/driver.log``; only this package's own
  warnings and errors also reach the console.
- Ray does not forward its workers' stdout/stderr (Ray Train workers, vLLM engines, DeepSpeed,
  Ray Data actors) to the console; Ray keeps them in its session's log folder, linked as
  ``{log_dir}/ray``. Ray Data's own progress bars are off.
- Progress bars are tqdm on stderr, shown on a terminal and left out of a non-interactive stream.

Verbose, and any use of the package as a library (nothing here is called), keep everything on the
console as before. The state is per process; Ray workers never read it.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# loggers whose records go to the log file only (their handlers writing to the console are removed)
LIBRARIES = ("ray", "vllm", "deepspeed", "DeepSpeed", "transformers", "torch", "datasets", "accelerate",
             "peft", "filelock", "fsspec", "urllib3", "httpx", "py.warnings", "tensorboardX", "numexpr")
DRIVER_LOG = "driver.log"


class _State:
    quiet = False
    log_dir: Path | None = None
    file_handler: logging.Handler | None = None


STATE = _State()


def quiet() -> bool:
    """True after :func:`setup` without ``verbose``: summaries only, logs in files."""
    return STATE.quiet


def forward_worker_logs() -> bool:
    """Whether Ray should stream worker stdout/stderr to this process's console."""
    return not STATE.quiet


class _OwnMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("cwpo_ray")


def setup(log_dir: str | os.PathLike | None, verbose: bool) -> None:
    """Configure this process's console (called once by ``cwpo``). ``log_dir``: where the driver log
    goes (a local folder; None: the current folder's ``cwpo-logs``)."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        STATE.quiet = False
        return
    STATE.quiet = True
    STATE.log_dir = Path(log_dir or "cwpo-logs").resolve()
    STATE.log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fh = logging.FileHandler(STATE.log_dir / DRIVER_LOG)
    fh.setLevel(logging.INFO)  # Ray Data's logger runs at DEBUG for its own file (ray-data.log)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    STATE.file_handler = fh
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.addFilter(_OwnMessages())
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(console)
    logging.captureWarnings(True)
    # Ray Data renders its own bars per operator; the stages show one bar each instead.
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    # libraries that check these at import
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    _import_deepspeed_quietly()
    try:  # transformers' own weight-loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    route_library_logs()


def _import_deepspeed_quietly() -> None:
    """DeepSpeed's logger writes to stdout from the moment it is created, and its import logs which
    accelerator it chose; importing it here, with stdout captured, puts that line in the log file."""
    import importlib.util
    import io
    from contextlib import redirect_stdout

    if importlib.util.find_spec("deepspeed") is None:
        return
    buf = io.StringIO()
    with redirect_stdout(buf):
        from cwpo_ray.runtime import import_deepspeed

        import_deepspeed()
    ds_log = logging.getLogger("DeepSpeed")
    for h in list(ds_log.handlers):
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is buf:
            ds_log.removeHandler(h)
    ds_log.propagate = True
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.info("deepspeed: %s", line)


def route_library_logs() -> None:
    """Send the library loggers that exist by now to the log file only. Libraries add console handlers
    when they are imported (Ray Data and vLLM do), so this runs again at Ray start and at each stage."""
    if not STATE.quiet:
        return
    for name, lg in list(logging.root.manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger) or name.split(".")[0] not in LIBRARIES:
            continue
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                    and getattr(h, "stream", None) in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                lg.removeHandler(h)
        lg.propagate = True  # to the root logger's file handler (the console handler only takes ours)


def link_ray_logs() -> Path | None:
    """``{log_dir}/ray`` -> this Ray session's log folder (workers' stdout/stderr, Ray Data, Train)."""
    if not STATE.quiet or STATE.log_dir is None:
        return None
    try:
        import ray

        src = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    except Exception:  # a client connection or a Ray without this attribute: nothing to link
        return None
    dst = STATE.log_dir / "ray"
    try:
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src, target_is_directory=True)
    except OSError:
        return None
    return dst


def where_logs() -> str:
    """The console's pointer to the full logs."""
    if STATE.log_dir is None:
        return "run with --verbose to see the libraries' logs"
    return f"full log: {STATE.log_dir / DRIVER_LOG} (Ray workers: {STATE.log_dir / 'ray'})"


def info(msg: str) -> None:
    """A progress line: printed as before when verbose or used as a library, the log file's when quiet."""
    if STATE.quiet:
        log.info("%s", msg)
    else:
        print(msg, flush=True)


def stage_line(text: str) -> str:
    """A stage summary as the console shows it: quiet keeps the first line and any WARNING lines."""
    if not STATE.quiet:
        return text
    lines = text.splitlines()
    return "\n".join(lines[:1] + [ln for ln in lines[1:] if "WARNING" in ln])


def bar(**kwargs):
    """A tqdm bar on stderr; hidden when stderr is not a terminal (``disable=None``)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", None)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(file=sys.stderr, **kwargs)


@contextmanager
def metrics_bar(metrics_path: str | list[str], desc: str, unit: str = "step", loss_key: str = "loss", poll_s: float = 0.5):
    """A bar of optimizer steps that follows a training run's ``metrics.jsonl`` (written on the Ray
    Train controller as workers report), with the last loss; for the length of the ``with`` block. Several
    paths (the runs of one training job, trained one after the other): one bar over all their steps."""
    paths = [metrics_path] if isinstance(metrics_path, str) else list(metrics_path)
    if any("://" in p for p in paths) or not sys.stderr.isatty():
        yield None
        return
    pbar = bar(desc=desc, unit=unit)
    stop = threading.Event()

    def follow():
        pos, steps, totals = [0] * len(paths), [0] * len(paths), [0] * len(paths)
        while not stop.wait(poll_s):
            for i, path in enumerate(paths):
                try:
                    with open(path) as f:
                        f.seek(pos[i])
                        chunk = f.read()
                except OSError:
                    continue
                # complete lines only; a partly written row is read again next time
                done = chunk[:chunk.rfind("\n") + 1]
                pos[i] += len(done)
                for line in done.splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    totals[i] = int(row.get("total_steps", totals[i]))
                    steps[i] = int(row.get("step", steps[i]))
                    if loss_key in row:
                        pbar.set_postfix({loss_key: f"{row[loss_key]:.4f}"}, refresh=False)
            if any(totals) and pbar.total != sum(totals):
                pbar.total = sum(totals)
            pbar.n = sum(steps)
            pbar.refresh()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    try:
        yield pbar
    finally:
        stop.set()
        t.join(timeout=2)
        pbar.close()
