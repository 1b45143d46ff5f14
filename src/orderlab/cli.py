"""The ``orderlab`` command: LightningCLI for fit/validate/test, jsonargparse functions for everything else.

Every subcommand is a typed function in ``orderlab.commands``; jsonargparse turns its signature into flags, so
there is one config system and no hand-written argparse layer.
"""

from __future__ import annotations

import importlib
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
}
LIGHTNING_COMMANDS: tuple[str, ...] = ("fit", "validate", "test")


def _usage() -> str:
    return "usage: orderlab {" + ",".join(sorted([*COMMANDS, *LIGHTNING_COMMANDS])) + "} [--help] ..."


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``orderlab`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    cmd, rest = argv[0], argv[1:]
    if cmd in LIGHTNING_COMMANDS:
        from orderlab.lightning_cli import run_lightning_cli

        run_lightning_cli([cmd, *rest])
        return
    if cmd not in COMMANDS:
        raise SystemExit(f"orderlab: unknown command {cmd!r}; choose one of {sorted([*COMMANDS, *LIGHTNING_COMMANDS])}")
    from jsonargparse import CLI

    module, func = COMMANDS[cmd].split(":")
    fn = getattr(importlib.import_module(module), func)
    try:
        CLI(fn, args=rest, prog=f"orderlab {cmd}")
    except (ValueError, KeyError, FileNotFoundError) as err:  # bad input: one line (ORDERLAB_DEBUG=1 for the trace)
        if os.environ.get("ORDERLAB_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        sys.stderr.write(f"orderlab {cmd}: error: {' '.join(str(msg).split())}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
