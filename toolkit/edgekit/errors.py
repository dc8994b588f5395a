"""The one family of errors edgekit raises for problems a user can fix.

Library code raises these; only the CLI turns them into ``Error: ...`` lines.
"""


class EdgekitError(Exception):
    """Base class: the message says what went wrong and what to do."""


class DataError(EdgekitError):
    """The dataset is missing, truncated or malformed."""


class ModelError(EdgekitError):
    """A model file cannot be loaded or does not fit the input contract."""


class ExportError(EdgekitError):
    """A conversion to TFLite or ONNX failed."""


class ManifestError(EdgekitError):
    """The manifest is unreadable, incomplete, or disagrees with the files."""


class ImageError(EdgekitError):
    """An image file cannot be read or turned into model input."""


class ParityError(EdgekitError):
    """An artifact missed one or more parity bars."""
