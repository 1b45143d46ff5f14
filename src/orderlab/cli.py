"""The ``orderlab`` command: LightningCLI for fit/validate/test, jsonargparse functions for everything else.

Every subcommand is a typed function in ``orderlab.commands``; jsonargparse turns its signature into flags, so
there is one config system and no hand-written argparse layer. A bad input ends in one
``orderlab CMD: error: ...`` line on stderr and exit code 2 (``ORDERLAB_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import sys

# subcommand -> "module:function" (imported lazily: `import lightning` alone costs about 5 s)
COMMANDS: dict[str, str] = {
    "schedules": "orderlab.commands.schedules_cmd:schedules",
    "prepare": "orderlab.commands.prepare_cmd:prepare",
    "bench": "orderlab.commands.bench_cmd:bench",
    "evaluate": "orderlab.commands.evaluate_cmd:evaluate",
    "sample": "orderlab.commands.sample_cmd:sample",
    "demo": "orderlab.commands.demo_cmd:demo",
    "search": "orderlab.commands.search_cmd:search",
    "plans": "orderlab.commands.plans_cmd:plans",
    "convert": "orderlab.commands.convert_cmd:convert",
    "study": "orderlab.commands.study_cmd:study",
}
# flags whose natural name is a Python keyword: translated before jsonargparse reads the command line
FLAG_ALIASES: dict[str, dict[str, str]] = {"convert": {"--from": "--source"},
                                           "evaluate": {"--ref-stats": "--ref_stats"}}
# LightningCLI subcommands (orderlab.train.lightning_cli), described here because they have no function of ours
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "Train a model: --config YAML plus --trainer.*, --model.*, --data.* overrides.",
    "validate": "Score a checkpoint (--ckpt_path) on the validation split.",
    "test": "Score a checkpoint (--ckpt_path) on the test split (the validation split when there is none).",
}
# the order `orderlab --help` lists them in: the order of a first session
_HELP_ORDER = ("prepare", "fit", "validate", "test", "sample", "evaluate", "schedules", "search", "study", "bench",
               "convert", "demo")


def subcommands() -> list[str]:
    """Every subcommand of ``orderlab``, in help order."""
    names = [*COMMANDS, *LIGHTNING_COMMANDS]
    return sorted(names, key=lambda n: (_HELP_ORDER.index(n) if n in _HELP_ORDER else len(_HELP_ORDER), n))


def _summary(cmd: str) -> str:
    """First line of the command's docstring, read from its source (no import: help stays fast)."""
    if cmd in LIGHTNING_COMMANDS:
        return LIGHTNING_COMMANDS[cmd]
    module, func = COMMANDS[cmd].split(":")
    spec = importlib.util.find_spec(module)
    with open(spec.origin, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func), None)
    doc = ast.get_docstring(node) if node is not None else None
    return doc.strip().splitlines()[0] if doc else ""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orderlab")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from orderlab import __version__

        return __version__


def _help() -> str:
    names = subcommands()
    width = max(map(len, names))
    lines = ["usage: orderlab <command> [options]   (orderlab <command> --help: the command's options)", "",
             "Generation order in autoregressive image generation: schedules, training, sampling, evaluation.", "",
             "commands:"]
    lines += [f"  {n:<{width}}  {_summary(n)}" for n in names]
    lightning = ", ".join(LIGHTNING_COMMANDS)
    lines += ["", (f"{lightning} are LightningCLI subcommands: they read a --config YAML (see experiments/) and take "
                   "--trainer.*, --model.* and --data.* keys; `orderlab fit --help` lists them."),
              "The other commands take their flags, or a --config YAML of the same keys, from their function.", "",
              "options:", "  -h, --help  show this message and exit", "  --version   print the version and exit"]
    return "\n".join(lines)


def _fail(cmd: str, message: str) -> None:
    """One ``error:`` line on stderr, exit code 2."""
    sys.stderr.write(f"{cmd}: error: {' '.join(str(message).split())}\n")
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``orderlab`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_help())
        return
    if argv[0] == "--version":
        print(f"orderlab {_version()}")
        return
    cmd, rest = argv[0], argv[1:]
    if cmd in LIGHTNING_COMMANDS:
        from orderlab.train.lightning_cli import run_lightning_cli

        run_lightning_cli([cmd, *rest])
        return
    if cmd not in COMMANDS:
        from orderlab.suggest import did_you_mean

        _fail("orderlab", f"unknown command {cmd!r}{did_you_mean(cmd, subcommands())} (commands: "
                          f"{', '.join(subcommands())}; orderlab --help describes them)")
    from jsonargparse import CLI, ArgumentError

    for old, new in FLAG_ALIASES.get(cmd, {}).items():
        rest = [new + a[len(old):] if a == old or a.startswith(old + "=") else a for a in rest]
    module, func = COMMANDS[cmd].split(":")
    fn = getattr(importlib.import_module(module), func)
    try:
        CLI(fn, args=rest, prog=f"orderlab {cmd}", exit_on_error=False, allow_abbrev=False)
    except ArgumentError as err:  # a bad flag, value or config key
        from orderlab.suggest import suggest_for_message

        keys = [*inspect.signature(fn).parameters, "config", "print_config"]
        _fail(f"orderlab {cmd}", suggest_for_message(" ".join(str(err).split()), keys))
    except (ValueError, KeyError, OSError) as err:  # bad input: one line (ORDERLAB_DEBUG=1 for the trace)
        if os.environ.get("ORDERLAB_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        _fail(f"orderlab {cmd}", msg)


if __name__ == "__main__":
    main()
