"""What every command shares: defaults, the dataset option, and turning errors into one line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgekit import errors

DEFAULT_EXPORT_DIR = Path("exported")
DEFAULT_MODEL = DEFAULT_EXPORT_DIR / "model.keras"
DEFAULT_DEVICE_MODEL = DEFAULT_EXPORT_DIR / "model_int8.tflite"

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(command: F) -> F:
    """Turn library errors into ``Error: ...`` lines and exit code 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except errors.EdgekitError as error:
            raise click.ClickException(str(error)) from None
        except ModuleNotFoundError as error:
            raise click.ClickException(
                f"{error.name} is not installed; this command needs the workstation extra: "
                "pip install 'edgekit[train]'"
            ) from None
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM (see edgekit.cli.signals): run() prints the one line.
            raise click.exceptions.Abort() from None

    return wrapper  # type: ignore[return-value]


def config_or_bad_parameter(factory: Callable[..., Any], **fields: Any) -> Any:
    try:
        return factory(**fields)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder with the four Fashion-MNIST .gz files (default: EDGEKIT_DATA_DIR, Keras' cache, "
         "/usr/share/datasets/fashion-mnist).")


def optional_str(path: Path | None) -> str | None:
    return str(path) if path else None
