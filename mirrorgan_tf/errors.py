"""The project's one error type, and how every command line tool reports it.

`MirrorganError` is the base of every error that means "the input is wrong" (a config key, a flag,
a dataset, a run directory, a metric's input): its message names what is wrong and where. A
command prints it as one line, `error: <message>`, and exits with status 2 (as argparse does for a
bad flag). Anything else is a bug, ours or TensorFlow's or Keras's, and keeps its traceback.

The subclasses live beside the code that raises them: `config.ConfigError`, `data.DataError`,
`metrics.EvalError`, `sample.SampleError`, `client.ClientError`, `demo.DemoError` and
`pipelines.source.DatasetError`. All but ClientError also derive from ValueError, so code that
caught ValueError before still catches them.

A missing or already existing file (FileNotFoundError, FileExistsError) is reported the same way:
the project raises those with a message naming the path (a run directory without a checkpoint, a
backbone weights file, an export version that exists), and Python's own name the file too. Both
are the user's to fix, and neither is what a TensorFlow or Keras bug raises.

This module imports nothing from the project, so every layer (pipelines/ included) may use it.
"""

from __future__ import annotations

import sys
from typing import Callable


class MirrorganError(Exception):
    """Bad input: the message names the file, key, flag or run that is wrong. `exit_code` is the
    status a command exits with."""

    exit_code = 2


# What a command reports as `error: ...` instead of a traceback.
USER_ERRORS = (MirrorganError, FileNotFoundError, FileExistsError)


def run_cli(body: Callable[[], int]) -> int:
    """Run a command's body (no arguments; returns the exit status). A MirrorganError, or a
    FileNotFoundError / FileExistsError, becomes `error: <message>` on stderr and exit status 2
    (a MirrorganError's own `exit_code`); every other exception propagates with its traceback."""
    try:
        return body()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
