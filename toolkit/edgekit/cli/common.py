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


DATA_HELP = ("fashion-mnist (looked up in EDGEKIT_DATA_DIR, Keras' cache, "
             "/usr/share/datasets/fashion-mnist), a folder holding its four IDX .gz files, or a "
             "folder of images with one sub-folder per class (optional train/ val/ test/).")


def _data_options(command: F, default: str | None, extra_help: str) -> F:
    command = click.option(
        "--skip-bad-images", is_flag=True,
        help="Skip (and count) files of a folder dataset that are not readable images, "
             "instead of stopping at the first.")(command)
    return click.option("--data", "data", default=default, show_default=default is not None,
                        metavar="fashion-mnist|DIR", help=DATA_HELP + extra_help)(command)


def data_option(command: F) -> F:
    """``--data`` and ``--skip-bad-images``: which dataset a command reads."""
    return _data_options(command, "fashion-mnist", "")


def recorded_data_option(command: F) -> F:
    """The same for commands on a trained model: by default, the data it was trained on."""
    return _data_options(command, None, " Default: the data the model was trained on (its "
                                        "run's dataset.json or the release's manifest), else "
                                        "fashion-mnist.")


def data_spec(data: str | None, skip_bad_images: bool, image_size: str | None = None,
              color_mode: str | None = None) -> Any:
    """The options as a DataSpec, or None for "the model's own" (bad values: usage errors)."""
    from edgekit.device import datasets

    if data is None:
        return None
    try:
        size = None if image_size is None else datasets.parse_image_size(image_size)
        return datasets.DataSpec(data, size, color_mode, skip_bad_images)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None

