"""`crystal-train`: train a model from the packaged Hydra configs."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from crystal_train.atomic_file import LockHeldError
from crystal_train.host_memory import keep_freed_memory
from crystal_train.secrets_guard import take_api_key_argument
from crystal_train.training.resume import ResumeConfigError
from crystal_train.training.sweep import ERROR_FILE

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM arrived during a single run: a batch scheduler's time limit or preemption, or `kill`.

    A BaseException, as KeyboardInterrupt is, so that no `except Exception` on the way (one crystal's graph skipped
    with its reason, a cache that cannot be read rebuilt) takes it for that code's own failure and carries on."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once, as Ctrl-C twice would
    raise Terminated()


@contextlib.contextmanager
def _sigterm_raises_terminated(enabled: bool):
    """While in the block, SIGTERM raises Terminated (in the main thread, where handlers can be set); then as before."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Hydra's record (.hydra/*.yaml) of the training in the run directory chosen on the command line, read before Hydra
# rewrites it for this launch: put back if this launch's resume is refused, so that it still describes that training.
_hydra_record_before: dict = {}


def main() -> None:
    """crystal-train: a Materials Project API key given as data.api_key=KEY is taken off the command line first, and
    a run directory another training is writing to is refused before Hydra writes into it."""
    sys.argv[1:] = take_api_key_argument(sys.argv[1:])
    run_dir = chosen_run_dir(sys.argv[1:])
    if run_dir is not None and int(os.environ.get("RANK") or 0) == 0:  # under torchrun only rank 0 takes the lock
        from crystal_train.training.run import check_run_dir_free  # torch is imported only once it is needed: --help is quick

        try:
            check_run_dir_free(run_dir)
        except LockHeldError as error:
            sys.exit(f"Error: {error}")
        record = {path.name: path.read_bytes() for path in (run_dir / ".hydra").glob("*.yaml")}
        _hydra_record_before.update(run_dir=run_dir.resolve(), files=record)
    train_job()


def _put_back_hydra_record(folder: Path, files: dict[str, bytes]) -> None:
    """Make `folder` hold `files` again: rewrite those, remove the YAML files the launch added."""
    for path in folder.glob("*.yaml"):
        if path.name not in files:
            path.unlink()
    for name, content in files.items():
        (folder / name).write_bytes(content)


def chosen_run_dir(arguments: list[str]) -> Path | None:
    """The hydra.run.dir=DIR of a single run's command line, if given (a sweep's jobs each get their own)."""
    if "-m" in arguments or "--multirun" in arguments:
        return None
    chosen = None
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if equals and key.lstrip("+") == "hydra.run.dir":
            chosen = Path(value.strip("'\""))
    return chosen


@hydra.main(version_base="1.3", config_path="pkg://crystal_train.configs", config_name="train")
def train_job(cfg: DictConfig) -> float:
    """Train and return the best validation MAE, or a classifier's log loss (the value a Hydra sweeper minimises).

    A diverging run or a refused resume exits with status 2, an interrupted one (Ctrl-C) with 130 and
    one stopped by SIGTERM (a scheduler's time limit) with 143, each with a note on how to resume it.
    Any other error of a single run (a setting, a missing file) exits with status 1, its message logged and its traceback kept in error.txt (HYDRA_FULL_ERROR=1
    raises it instead). In a multirun, a job that fails for any reason writes its error to error.txt
    and train.log and returns infinity instead, so the other jobs still run and the sweep summary
    lists it as failed; Ctrl-C stops the whole sweep.
    """
    from crystal_train.training.loop import NonFiniteLossError
    from crystal_train.training.run import train

    keep_freed_memory()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    error_file = run_dir / ERROR_FILE
    error_file.unlink(missing_ok=True)
    single_run = hydra_cfg.mode != RunMode.MULTIRUN
    try:
        with _sigterm_raises_terminated(single_run):
            return train(cfg, run_dir)
    except (KeyboardInterrupt, Terminated) as stop:
        if not single_run:
            raise
        _report_interrupt(run_dir, str(cfg.trainer.get("resume", "auto")).lower(), stop)
        sys.exit(143 if isinstance(stop, Terminated) else 130)
    except LockHeldError as error:  # the directory is another live run's: its files are not this one's to touch
        log.error("%s", error)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return math.inf
        sys.exit(1)
    except (NonFiniteLossError, ResumeConfigError) as error:  # explained in full by their message
        log.error("%s", error)
        failure, details, status = error, "", 2
        if isinstance(error, ResumeConfigError) and single_run and _hydra_record_before.get("run_dir") == run_dir.resolve():
            _put_back_hydra_record(run_dir / ".hydra", _hydra_record_before["files"])
    except Exception as error:
        if hydra_cfg.mode != RunMode.MULTIRUN and os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # a message, not a traceback, for what is mostly a setting or file to fix; in a sweep the next job follows
        log.error("%s: %s\n(the traceback is in %s)", type(error).__name__, error, error_file)
        failure, details, status = error, "".join(traceback.format_exception(error)), 1
    error_file.write_text(f"{type(failure).__name__}: {failure}\n{details}")  # train() made run_dir first thing
    del failure  # its traceback holds the failed job's model and tensors; the next job of a sweep needs the memory
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return math.inf
    sys.exit(status)


def _report_interrupt(run_dir: Path, resume: str, stop: BaseException | None = None) -> None:
    what = "Terminated (SIGTERM)" if isinstance(stop, Terminated) else "Interrupted"
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists():
        how = "the same command" if resume != "false" else "the same command with trainer.resume=auto (not false, which starts over)"
        log.warning("%s: %s holds the last finished epoch; run %s with hydra.run.dir=%s to continue", what, last, how, run_dir)
    else:
        log.warning("%s before the first epoch finished: there is no checkpoint to resume from", what)


if __name__ == "__main__":
    main()
