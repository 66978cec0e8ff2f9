"""Exception hierarchy: every error histobag raises derives from :class:`HistobagError`.

Messages say what went wrong and what to do next, in the style of huggingface_hub's errors.
"""

from __future__ import annotations


class HistobagError(Exception):
    """Base class of every error raised by histobag."""


class PluginError(HistobagError):
    """A plugin pack is broken: it failed to import, or it clashes with another pack."""


class DuplicateExtractorError(PluginError):
    """Two installed providers register the same extractor (or transform, or writer) name."""


class UnknownExtractorError(HistobagError, KeyError):
    """No installed pack provides the requested extractor name."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class ExtractorArgumentError(HistobagError, TypeError):
    """An extractor was given a keyword argument it does not accept, or a bad value."""


class WeightsError(HistobagError):
    """Model weights could not be found, downloaded or loaded."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file (named by the user or recorded in a configuration) does not exist."""


class GatedWeightsError(WeightsError):
    """The weights live in a gated Hugging Face repository the user has no access to."""


class OfflineWeightsError(WeightsError):
    """Downloads are disabled (or impossible) and the weights are not in the local cache."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint contains pickled objects that are not plain tensors and was refused."""


class CheckpointMismatchError(WeightsError):
    """A checkpoint's keys or shapes do not match the model it is loaded into."""


class SlideError(HistobagError):
    """A whole-slide image could not be opened or read."""


class SlideOpenError(SlideError):
    """The slide file could not be opened (missing, unsupported or corrupt)."""


class SlideReadError(SlideError):
    """A region of an opened slide could not be read."""


class MissingMPPError(SlideError):
    """The slide does not record its microns-per-pixel; pass ``mpp=`` explicitly."""


class TFRecordError(HistobagError):
    """A TFRecord file or its index is malformed or corrupted."""


class ConfigError(HistobagError):
    """A configuration file (bags_config.json, project.json...) is missing, invalid or tampered."""


class IncompatibleBagsError(ConfigError):
    """Bags were made by another tile encoder, or at another tile size or magnification, than
    a slide encoder was trained on."""


class TileAccountingError(HistobagError):
    """A slide's tiles were not each accounted for exactly once (kept with features, or filtered).

    Raised instead of writing a bag that would silently miss (or repeat) tiles.
    """


class StorageError(HistobagError, OSError):
    """A file could not be written: no space left, a read-only folder, or no permission.

    Attributes:
        folder: The folder that could not be written.
        needed_bytes: About how many bytes the write needed, when known.
        free_bytes: Free bytes in ``folder`` when the error happened, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        errno_: int | None = None,
        folder: str | None = None,
        needed_bytes: int | None = None,
        free_bytes: int | None = None,
    ) -> None:
        super().__init__(message)
        self.errno = errno_
        self.strerror = message
        self.folder = folder
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes

    def __str__(self) -> str:
        return str(self.strerror)


class SharedMemoryError(HistobagError, OSError):
    """The tile-reading worker processes ran out of shared memory (``/dev/shm``); the message
    names the fix (e.g. Docker's ``--shm-size``)."""


class NonFiniteFeaturesError(HistobagError):
    """A model returned NaN or infinite features for some tiles; that slide gets no bag."""


class ArgumentError(HistobagError, ValueError):
    """An argument is of the wrong kind or out of range; the message says what is allowed."""


class MissingDependencyError(HistobagError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""

    def __init__(self, message: str, *, module: str, extra: str) -> None:
        super().__init__(message, name=module)
        self.module = module
        self.extra = extra


class TileTransformError(PluginError):
    """A tile transform raised, or returned something other than uint8 (B, 3, H', W') on the
    device of its input; the slide being extracted fails, naming the transform."""


class HistobagWarning(UserWarning):
    """Base class of the warnings histobag issues."""


class LowDiskSpaceWarning(HistobagWarning):
    """The output folder may not have room for the bags of a run."""


class RenamedNormalizerWarning(HistobagWarning):
    """A configuration names a stain normalizer whose meaning has changed since it was written;
    it is read as the method that made it."""


class EmptyRunWarning(HistobagWarning):
    """A run had nothing to do or produced nothing: no slides, or no slide gave a bag."""


class CheckpointDtypeWarning(HistobagWarning):
    """Checkpoint tensors of another dtype than the model's were converted without loss."""
