"""Command-line entry point ``dpface``.

Each sub-command lives in the module that owns the concept and exposes ``cli(argv) -> int``
with its own argument parser; this file only dispatches, so ``dpface --help`` stays fast
(heavy modules such as torch are imported only by the sub-command that needs them).

This is also the edge where errors stop: the kit's own errors (all ``ValueError`` subclasses that name
the file, key or option) and the expected OS and file-format errors become one line on stderr and exit
status 2; ``--debug`` anywhere on the command line (or ``DPFACE_DEBUG=1``) shows the traceback instead.
So do a compiled library that cannot be loaded (e.g. not mapped under a memory limit such as ``ulimit -v``),
a missing third-party package and ``MemoryError``: they are the environment's state, not bugs. An
interruption (Ctrl-C) exits with 130.
"""

from __future__ import annotations

import importlib
import os
import sys
import zipfile
from pathlib import Path

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": ("dpface_lib.pipeline", "run the notebook pipeline (papermill) described by a YAML file"),
    "simulate": ("dpface_lib.simulate", "generate a synthetic DP face set in the benchmark layout"),
    "train": ("dpface_lib.train", "train a registered model from its YAML config"),
    "eval": ("dpface_lib.evaluate", "evaluate a checkpoint or saved predictions -> per-sample tables"),
    "predict": ("dpface_lib.predict", "predict depth and normals from a DP left/right pair"),
    "dashboard": ("dpface_lib.servers", "serve the per-sample error dashboard over pipeline runs (Voila)"),
    "realism": ("dpface_lib.realism", "render real Pixel 4 scenes through each DP blur model; measure noise"),
}


def _usage() -> str:
    lines = ["usage: dpface <command> [options]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    lines.append("")
    lines.append("Run `dpface <command> --help` for the options of one command.")
    return "\n".join(lines)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors a command reports in one line: bad values and files, not bugs."""
    errors: list[type[BaseException]] = [ValueError, OSError, KeyError, OverflowError, EOFError,
                                         zipfile.BadZipFile]
    try:
        from PIL import Image

        errors.append(Image.DecompressionBombError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _environment_problem(exc: BaseException) -> str | None:
    """One line for an import that failed for reasons of the environment, else None (a kit bug)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError):
        return f"out of memory ({text or 'MemoryError'}); is a memory limit (ulimit -v) set too low?"
    if not isinstance(exc, ImportError):
        return None
    if isinstance(exc, ModuleNotFoundError) and exc.name and not exc.name.startswith("dpface"):
        return f"a required package is not installed ({text}); run `make setup`"
    if any(word in text for word in (".so", "shared object", "DLL", ".dylib")):
        hint = ("; is a memory limit (ulimit -v) set too low?" if "map segment" in text or "memory" in text
                else "; the environment may be incomplete (run `make setup`)")
        return f"cannot load a compiled library ({text}){hint}"
    return None


def _option_for(filename: str, args: list[str]) -> str | None:
    """``'--opt value'`` of the command-line option whose path is ``filename`` or a folder above it."""
    try:
        target = Path(filename).absolute()
    except (TypeError, ValueError):
        return None
    pairs = [(a, b) for a, b in zip(args, args[1:], strict=False) if a.startswith("--")]
    pairs += [tuple(a.split("=", 1)) for a in args if a.startswith("--") and "=" in a]
    for option, value in pairs:
        if value and not value.startswith("-") and target.is_relative_to(Path(value).absolute()):
            return f"{option} {value}"
    return None


def _one_line(exc: BaseException, args: list[str] | None = None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing key {text}"
    kit_error = type(exc).__module__.startswith("dpface")
    if isinstance(exc, OSError) and exc.filename and not kit_error:  # say which option pointed there
        option = _option_for(str(exc.filename), args or [])
        if option and option.split(" ", 1)[0] not in text:
            return f"{option}: {type(exc).__name__}: {text}"
    return text if kit_error else f"{type(exc).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``dpface <command> ...`` to ``<module>.cli(argv)``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("DPFACE_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
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
        return int(module.cli(rest) or 0)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            return _environment(name, err, debug)
        print(f"dpface {name}: not available in this version ({module_name} is missing)", file=sys.stderr)
        return 2
    except (ImportError, MemoryError) as err:
        return _environment(name, err, debug)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"dpface {name}: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as exc:
        if debug:
            raise
        print(f"dpface {name}: {_one_line(exc, rest)} (--debug shows the traceback)", file=sys.stderr)
        return 2


def _environment(name: str, err: BaseException, debug: bool) -> int:
    """Report an import or memory failure of the environment in one line (exit 2); re-raise a kit bug."""
    line = _environment_problem(err)
    if debug or line is None:
        raise err
    print(f"dpface {name}: {line} (--debug shows the traceback)", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
