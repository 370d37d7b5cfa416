"""Command-line entry point ``dpface``.

Each sub-command lives in the module that owns the concept and exposes ``cli(argv) -> int``
with its own argument parser; this file only dispatches, so ``dpface --help`` stays fast
(heavy modules such as torch are imported only by the sub-command that needs them).
"""

from __future__ import annotations

import importlib
import sys

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": ("dpface_lib.pipeline", "run the notebook pipeline (papermill) described by a YAML file"),
    "simulate": ("dpface_lib.simulate", "generate a synthetic DP face set in the benchmark layout"),
    "train": ("dpface_lib.train", "train a registered model from its YAML config"),
    "eval": ("dpface_lib.evaluate", "evaluate a checkpoint or saved predictions -> per-sample tables"),
    "predict": ("dpface_lib.predict", "predict depth and normals from a DP left/right pair"),
}


def _usage() -> str:
    lines = ["usage: dpface <command> [options]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    lines.append("")
    lines.append("Run `dpface <command> --help` for the options of one command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``dpface <command> ...`` to ``<module>.cli(argv)``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if args[0] in {"-V", "--version"}:
        from dpface_lib import __version__

        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"dpface: unknown command {name!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f"dpface {name}: not available in this version ({module_name} is missing)", file=sys.stderr)
        return 2
    return int(module.cli(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
