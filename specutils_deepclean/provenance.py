"""Training provenance of a model: data, split, seed, code version, validation metrics.

Pure Python (no torch): a `Provenance` is stored in every model file under the
tag ``asdf://specutils-deepclean.readthedocs.io/deepclean/tags/provenance-1.0.0``.
"""

import dataclasses
import hashlib
import math
import os
import re
from datetime import UTC, datetime
from numbers import Integral, Real

__all__ = ["Provenance", "file_sha256", "package_version"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEXT_FIELDS = (
    "data_name",
    "data_path",
    "data_sha256",
    "data_description",
    "split",
    "package_version",
    "created",
    "script",
    "notes",
)


def package_version() -> str:
    """Return the installed package's version (``"0.0.0"`` in a never-installed source tree).

    Returns
    -------
    str
        The version written by the build into ``specutils_deepclean._version``.
    """
    try:
        from ._version import version
    except ImportError:  # pragma: no cover - only in a source tree that was never installed
        return "0.0.0"
    return version


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 hex digest of a file.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    str
        64 lower-case hexadecimal characters.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty"
    >>> _ = p.write_bytes(b"")
    >>> file_sha256(p)[:16]
    'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a model's weights came from.

    Every field is plain Python, so the record is stored in a model file as
    YAML and read back without executing anything.

    Parameters
    ----------
    data_name : str
        Name of the training data set (e.g. ``"MILES"``).
    data_path : str
        Path of the training data file, as used when training.
    data_sha256 : str
        SHA-256 of the training data file (64 hex characters), or ``""``.
    data_description : str
        Free-text description of the training data (selection, grid, ...).
    split : str
        Split(s) the weights were fitted on, e.g. ``"train"``.
    seed : int or None
        Random seed of the training run.
    package_version : str
        specutils-deepclean version that trained the model (default: this one).
    created : str
        ISO 8601 creation time (default: now, UTC).
    script : str
        Script or command that produced the model.
    metrics : dict of str to float
        Metrics on the validation split, name -> value.
    notes : str
        Anything else worth knowing.

    Raises
    ------
    TypeError
        If a field has the wrong type.
    ValueError
        If ``data_sha256`` is not a SHA-256 hex digest or ``created`` is not ISO 8601.

    Examples
    --------
    >>> from specutils_deepclean.provenance import Provenance
    >>> p = Provenance(data_name="MILES", split="train", seed=0, metrics={"val_mse": 3.5e-4})
    >>> p.metrics["val_mse"]
    0.00035
    >>> Provenance.from_dict(p.to_dict()) == p
    True
    """

    data_name: str = ""
    data_path: str = ""
    data_sha256: str = ""
    data_description: str = ""
    split: str = ""
    seed: int | None = None
    package_version: str = dataclasses.field(default_factory=package_version)
    created: str = dataclasses.field(default_factory=_now)
    script: str = ""
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: str = ""

    def __post_init__(self):
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"Provenance.{name} must be a str, got {type(value).__name__}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, Integral)
        ):
            raise TypeError(
                f"Provenance.seed must be an int or None, got {type(self.seed).__name__}"
            )
        if self.data_sha256 and not _SHA256.fullmatch(self.data_sha256):
            raise ValueError(
                f"Provenance.data_sha256 must be 64 lower-case hex digits, got {self.data_sha256!r}"
            )
        try:
            datetime.fromisoformat(self.created)
        except ValueError:
            raise ValueError(
                f"Provenance.created must be an ISO 8601 time, got {self.created!r}"
            ) from None
        object.__setattr__(self, "seed", None if self.seed is None else int(self.seed))
        object.__setattr__(self, "metrics", _check_metrics(self.metrics))

    def to_dict(self) -> dict:
        """Return the record as a dict of plain Python values (the ASDF tree).

        Returns
        -------
        dict
            Field name -> value; ``seed`` is left out when it is None.
        """
        tree = dataclasses.asdict(self)
        if tree["seed"] is None:
            del tree["seed"]
        return tree

    @classmethod
    def from_dict(cls, tree: dict) -> "Provenance":
        """Build a record from a dict such as `to_dict` returns.

        Parameters
        ----------
        tree : dict
            Field name -> value; ``package_version`` and ``created`` are required.

        Returns
        -------
        Provenance

        Raises
        ------
        ValueError
            If a required field is missing or an unknown one is present.
        """
        if not isinstance(tree, dict):
            raise TypeError(f"a provenance record must be a dict, got {type(tree).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(tree) - known)
        if unknown:
            raise ValueError(f"unknown provenance field(s): {', '.join(map(str, unknown))}")
        missing = [name for name in ("package_version", "created") if name not in tree]
        if missing:
            raise ValueError(f"provenance record lacks required field(s): {', '.join(missing)}")
        return cls(**tree)


def _check_metrics(metrics) -> dict[str, float]:
    if not isinstance(metrics, dict):
        raise TypeError(f"Provenance.metrics must be a dict, got {type(metrics).__name__}")
    checked = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"metric names must be str, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"metric {name!r} must be a real number, got {value!r}")
        if math.isnan(value):
            raise ValueError(f"metric {name!r} is NaN")
        checked[name] = float(value)
    return checked
