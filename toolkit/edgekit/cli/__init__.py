"""The ``edgekit`` command line, one module per command (or group of commands).

Command modules import only Click at the top; heavy modules (TensorFlow, ONNX, matplotlib) are
imported inside the command that needs them, so ``edgekit --help`` and ``edgekit predict`` start
fast and TensorFlow-free. Library errors (``EdgekitError``) become one ``Error:`` line and exit
code 1; Ctrl-C exits 130 and SIGTERM 143, each with one line.
"""

from __future__ import annotations

from edgekit.cli import signals

signals.install()  # first of all, before Click and any command's imports: a SIGTERM is honoured

import signal  # noqa: E402
import sys  # noqa: E402

import click  # noqa: E402

from edgekit import __version__  # noqa: E402
from edgekit.cli import (  # noqa: E402
    benchmark,
    data_cmd,
    evaluate,
    explain,
    export,
    micro,
    predict,
    serve,
    train,
    verify,
)
from edgekit.workstation import tf_startup  # noqa: E402

# Quiet TensorFlow's C++ start-up chatter, before any command imports it (the variables, and
# Abseil's lines that ignore them: see edgekit.workstation.tf_startup).
tf_startup.install()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def main() -> None:
    """Train an image classifier, export it for devices, and prove the device runs it.

    \b
    Typical run:
      edgekit train --output-dir exported
      edgekit evaluate
      edgekit export --format all
      edgekit verify exported
      edgekit benchmark exported
      edgekit predict shirt.png
    """


for command in (data_cmd.data_command, train.train, train.tune, evaluate.evaluate,
                export.export, predict.predict, verify.verify, benchmark.benchmark, serve.serve,
                explain.explain, micro.micro):
    main.add_command(command)

INTERRUPTED = ("Error: interrupted. Files already written are complete; an interrupted "
               "`edgekit train` continues with `--resume` and the same --output-dir.")
TERMINATED = ("Error: terminated (SIGTERM). Files already written are complete; an interrupted "
              "`edgekit train` continues with `--resume` and the same --output-dir.")


def run() -> None:
    """Console entry point: every user error, usage errors included, exits with code 1."""
    signals.install()  # again, in case a caller imported edgekit.cli and restored SIGTERM
    try:
        code = main.main(standalone_mode=False)
    except click.ClickException as error:
        error.show()
        sys.exit(1)
    except click.exceptions.Abort:
        # Every file is written to a temporary name first, so nothing is half-written.
        if signals.received() == signal.SIGTERM:
            click.echo(TERMINATED, err=True)
            sys.exit(128 + signal.SIGTERM)
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except KeyboardInterrupt:  # arrived outside a command (while Click parsed the options)
        terminated = signals.received() == signal.SIGTERM
        click.echo(TERMINATED if terminated else INTERRUPTED, err=True)
        sys.exit(128 + signal.SIGTERM if terminated else 130)
    sys.exit(code if isinstance(code, int) else 0)
