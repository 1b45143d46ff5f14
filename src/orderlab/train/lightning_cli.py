"""``orderlab fit | validate | test``: LightningCLI over :class:`OrderModule` and :class:`OrderDataModule`.

Config mistakes (unknown key, unknown schedule, steps > N, a data grid that does not fit the model) end in one
``orderlab fit: error: ...`` line that names the key, before any training starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import re
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.cli import LightningCLI

from orderlab.data.datamodule import OrderDataModule
from orderlab.data.shards import ShardError
from orderlab.plan import PlanError
from orderlab.suggest import did_you_mean, suggest_for_message
from orderlab.train.module import OrderModule, check_data_matches

__all__ = ["CONFIG_ERRORS", "LastCheckpointLink", "OrderCLI", "build_cli", "run_lightning_cli"]

# errors that mean "the config is wrong", reported as one line; anything else keeps its traceback
CONFIG_ERRORS = (ValueError, KeyError, TypeError, PlanError, ShardError, FileNotFoundError, ArgumentError,
                 MisconfigurationException)


class _ConfigError(Exception):
    pass


class LastCheckpointLink(Callback):
    """A path that holds across reruns: ``<save_dir>/<name>/last.ckpt`` links to the newest run's last checkpoint.

    A logger with numbered versions puts each run in a new ``version_N`` folder, so ``version_0/.../last.ckpt`` is
    the first run's, not the latest's. Once a run has saved a last checkpoint, this points the link beside the
    version folders at it (relative, replaced atomically; rank zero only). Loggers with a fixed version, and runs
    without a logger, are left alone; so is a regular file of that name.
    """

    def __init__(self) -> None:
        self._linked: str | None = None

    def _update(self, trainer) -> None:
        logger = trainer.logger
        if not trainer.is_global_zero or logger is None or not isinstance(getattr(logger, "version", None), int):
            return
        root = getattr(logger, "root_dir", None)  # <save_dir>/<name> of TensorBoardLogger and CSVLogger
        last = next((cb.last_model_path for cb in trainer.checkpoint_callbacks
                     if getattr(cb, "last_model_path", "") and os.path.exists(cb.last_model_path)), "")
        if not root or not last or last == self._linked:
            return
        link = os.path.join(root, "last.ckpt")
        if os.path.abspath(link) == os.path.abspath(last) or (os.path.lexists(link) and not os.path.islink(link)):
            return
        self._linked = last
        tmp = f"{link}.tmp-{os.getpid()}"
        try:
            if os.path.lexists(tmp):
                os.remove(tmp)
            os.symlink(os.path.relpath(last, root), tmp)
            os.replace(tmp, link)
        except OSError as err:  # a file system without symlinks: the version folders still hold everything
            warnings.warn(f"could not link {link} -> {last}: {err}", stacklevel=1)

    def on_train_batch_end(self, trainer, *args) -> None:
        self._update(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._update(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._update(trainer)


class OrderCLI(LightningCLI):
    """LightningCLI that checks data against model before any trainer work and reports config errors in one line."""

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:  # an unknown or mistyped key: name it, and the nearest valid one
            raise _ConfigError(_explain(_one_line(err), parser)) from err

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the hyperparameters of --ckpt_path here, before anything else: check the file first
        sub = self.config.get(self.config.get("subcommand") or "") or {}
        path = sub.get("ckpt_path") if hasattr(sub, "get") else None
        if path and path not in ("last", "best", "hpc") and not str(path).startswith("registry") \
                and not Path(path).is_file():
            raise _ConfigError(f"ckpt_path={path!r} " + ("is a folder, not a checkpoint file" if os.path.isdir(path)
                                                          else "does not exist"))
        try:
            super()._parse_ckpt_path()
        except ArgumentError as err:  # readable, but its saved hyperparameters do not parse
            raise _ConfigError(f"ckpt_path={path!r}: its saved model hyperparameters do not fit this config: "
                               f"{_one_line(err)}") from err
        except Exception as err:  # a text file, a truncated download, another program's pickle
            from orderlab.train.checkpoint import load_error

            raise _ConfigError(f"ckpt_path={path!r} is not an orderlab checkpoint (cannot be read: "
                               f"{load_error(err)})") from err

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except CONFIG_ERRORS as err:
            raise _ConfigError(_one_line(err)) from err
        dm = self.datamodule
        if dm is not None and hasattr(dm, "manifest"):
            try:
                check_data_matches(self.model.config, dm.manifest)
            except ValueError as err:
                raise _ConfigError(f"{err}; data.root={dm.root}") from err
            try:  # a missing, truncated or corrupt shard fails here, before any trainer work (setup skips it then)
                dm.setup()
            except ShardError as err:
                raise _ConfigError(f"{_one_line(err)}; data.root={dm.root}") from err


def _one_line(err: BaseException | str) -> str:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(msg).split())


def _init_params(cls: type) -> list[str]:
    """The keyword names a class is configured with (a dataclass's fields, else its ``__init__`` parameters)."""
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.init]
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _parser_keys(parser) -> set[str]:
    """Every key a LightningCLI parser accepts (subcommands merged), with the fields of nested dataclasses."""
    keys: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action._name_parser_map.values():
                keys |= _parser_keys(sub)
            continue
        dest = action.dest
        if dest in (argparse.SUPPRESS, "help") or dest.endswith(".help"):
            continue
        keys.add(dest)
        hint = getattr(action, "_typehint", None)
        for cls in (getattr(hint, "__args__", None) or (hint,)):
            if isinstance(cls, type) and dataclasses.is_dataclass(cls):  # e.g. model.backbone.depth
                keys |= {f"{dest}.{name}" for name in _init_params(cls)}
    return keys


_NESTED = re.compile(r'Parser key "(?P<key>[^"]+)".*?Problem with given class_path \'(?P<cls>[^\']+)\': '
                     r"Option '(?P<opt>[^']+)' is not accepted")


def _explain(message: str, parser) -> str:
    """A jsonargparse error with "did you mean" for an unknown key, shortened to the point for a nested class."""
    m = _NESTED.search(message)
    if m:
        module, _, name = m["cls"].rpartition(".")
        try:
            params = _init_params(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            params = []
        return f"{m['key']}: unknown key {m['opt']!r} for {m['cls']}{did_you_mean(m['opt'], params)}"
    try:
        keys = _parser_keys(parser)
    except (AttributeError, TypeError, ValueError):  # suggestions are a courtesy: never hide the error itself
        return message
    return suggest_for_message(message, keys)


# no abbreviations: `--trainer.max_step` is a typo to report, not a prefix of `--trainer.max_steps`
_PARSER_KWARGS = {"exit_on_error": False, "allow_abbrev": False,
                  **{c: {"exit_on_error": False, "allow_abbrev": False} for c in ("fit", "validate", "test")}}


def _make(args: list[str], run: bool) -> OrderCLI:
    with warnings.catch_warnings():  # the console script passes sys.argv on as args, which Lightning warns about
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return OrderCLI(OrderModule, OrderDataModule, args=args, run=run, save_config_kwargs={"overwrite": True},
                        parser_kwargs=_PARSER_KWARGS, auto_configure_optimizers=False,
                        trainer_defaults={"callbacks": [LastCheckpointLink()]})


def build_cli(args: list[str]) -> OrderCLI:
    """The model, data module and trainer of ``fit`` args (no subcommand), not run; config errors -> ValueError.

    ``orderlab search`` trains its trials through this, so a trial is configured exactly as ``orderlab fit``.
    """
    try:
        return _make(args, run=False)
    except (ArgumentError, _ConfigError) as err:
        raise ValueError(_one_line(err)) from None


def run_lightning_cli(args: list[str], run: bool = True) -> OrderCLI | None:
    """Run a LightningCLI subcommand (fit/validate/test) with ``args``; exits 2 with one line on a config error."""
    cmd = args[0] if args else "fit"
    try:
        return _make(args, run)
    except (ArgumentError, _ConfigError) as err:
        sys.stderr.write(f"orderlab {cmd}: error: {_one_line(err)}\n")
        raise SystemExit(2) from None
    except ShardError as err:  # a shard that breaks while training, after the checks before it passed
        if os.environ.get("ORDERLAB_DEBUG"):
            raise
        msg = str(err)  # raised in a DataLoader worker: the worker's traceback, then "...ShardError: <message>"
        msg = msg.rsplit("ShardError: ", 1)[-1] if "Traceback" in msg else msg
        sys.stderr.write(f"orderlab {cmd}: error: {_one_line(msg)}\n")
        raise SystemExit(2) from None
