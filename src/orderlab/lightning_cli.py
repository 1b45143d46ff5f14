"""``orderlab fit | validate | test``: LightningCLI over :class:`OrderModule` and :class:`OrderDataModule`.

Config mistakes (unknown key, unknown schedule, steps > N, a data grid that does not fit the model) end in one
``orderlab fit: error: ...`` line that names the key, before any training starts.
"""

from __future__ import annotations

import sys
import warnings

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from orderlab.data.datamodule import OrderDataModule
from orderlab.data.shards import ShardError
from orderlab.module import OrderModule, check_data_matches
from orderlab.plan import PlanError

__all__ = ["OrderCLI", "run_lightning_cli", "build_cli", "CONFIG_ERRORS"]

# errors that mean "the config is wrong", reported as one line; anything else keeps its traceback
CONFIG_ERRORS = (ValueError, KeyError, TypeError, PlanError, ShardError, FileNotFoundError, ArgumentError,
                 MisconfigurationException)


class _ConfigError(Exception):
    pass


class OrderCLI(LightningCLI):
    """LightningCLI that checks data against model before any trainer work and reports config errors in one line."""

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


def _one_line(err: BaseException) -> str:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(msg).split())


def _make(args: list[str], run: bool) -> OrderCLI:
    with warnings.catch_warnings():  # the console script passes sys.argv on as args, which Lightning warns about
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return OrderCLI(OrderModule, OrderDataModule, args=args, run=run, save_config_kwargs={"overwrite": True},
                        parser_kwargs={"exit_on_error": False}, auto_configure_optimizers=False)


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
