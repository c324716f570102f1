"""`DeepCleanModel`: the base class of every model, and its (de)serialisation to ASDF trees.

A model is rebuilt from its configuration (``_build``), never from code stored
in a file.  The network is first built on PyTorch's ``meta`` device (shapes only,
no memory), its size is checked against `MAX_WEIGHT_ELEMENTS` and the file's
weights key by key and shape by shape against it; only then is the real network
built and the weights copied in.  A configuration asking for a huge network is
thus refused before anything is allocated.
"""

import math
from numbers import Integral, Real

import astropy.units as u
import numpy as np
import torch

from ..provenance import Provenance
from . import model_class, registry_name

__all__ = ["DeepCleanModel", "MAX_EXTRA_ELEMENTS", "MAX_WEIGHT_ELEMENTS"]

#: Largest number of elements an ``extra`` array read from a file may declare.
MAX_EXTRA_ELEMENTS = 2**26
#: Largest number of weight elements (all tensors together) of a model read from a file.
MAX_WEIGHT_ELEMENTS = 2**28

_MEDIA = ("air", "vacuum")
_SCALARS = (str, bool, Integral, Real)


class DeepCleanModel(torch.nn.Module):
    """Base class of the package's models.

    A subclass implements ``_build(config)``, which creates the network's layers,
    parameters and buffers from the configuration, and ``forward``. Everything a
    model file holds is an attribute here: the configuration, the wavelength grid
    and its medium, the class names, extra arrays and the training provenance.
    Construct a subclass with its configuration; weights come from training or
    from a file (`~specutils_deepclean.io.models.load_model`).

    Parameters
    ----------
    config : dict
        ``"architecture"`` (str) and hyper-parameters: plain scalars, or lists
        (at most two levels deep) of scalars.
    wavelength : `~astropy.units.Quantity`
        The model grid: 1-D, finite, strictly increasing, a length unit.
    medium : {"air", "vacuum"}
        Medium of ``wavelength``.
    classes : sequence of str, optional
        Names of the stellar classes the model knows, in order.
    extra : dict of str to array_like, optional
        Further arrays the model needs (stored as NumPy arrays, not weights).
    provenance : `~specutils_deepclean.provenance.Provenance`, optional
        Training provenance (default: an empty record stamped with this version).
    name : str, optional
        Short name of the model (default: the registry name of its class).

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If an argument has a bad value.
    """

    def __init__(
        self,
        config: dict,
        *,
        wavelength: u.Quantity,
        medium: str,
        classes=None,
        extra: dict | None = None,
        provenance: Provenance | None = None,
        name: str | None = None,
    ):
        super().__init__()
        self.config = _check_config(config)
        self.wavelength = _check_wavelength(wavelength)
        self.medium = _check_medium(medium)
        self.classes = None if classes is None else _check_classes(classes)
        self.extra = _check_extra({} if extra is None else extra)
        if provenance is None:
            provenance = Provenance()
        if not isinstance(provenance, Provenance):
            raise TypeError(f"provenance must be a Provenance, got {type(provenance).__name__}")
        self.provenance = provenance
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self._name = name
        self._build(self.config)

    def _build(self, config: dict) -> None:
        """Create the network's parameters and buffers from ``config`` (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _build(config)")

    @property
    def name(self) -> str:
        """Short name of the model (its registry class name unless one was given)."""
        return self._name if self._name is not None else type(self).__name__

    @property
    def version(self) -> str:
        """specutils-deepclean version that trained the model (from its provenance)."""
        return self.provenance.package_version

    @property
    def n_pix(self) -> int:
        """Number of pixels of the model grid."""
        return len(self.wavelength)

    @property
    def device(self) -> torch.device:
        """Device of the model's weights (CPU for a model without any)."""
        for tensor in self.state_dict().values():
            return tensor.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        lo, hi = self.wavelength[0], self.wavelength[-1]
        return f"name={self.name!r}, n_pix={self.n_pix}, {lo:.1f}-{hi:.1f} ({self.medium})"

    def _to_tree(self) -> dict:
        """Return the ASDF tree of the model (tensors as CPU NumPy arrays)."""
        tree = {
            "class": registry_name(type(self)),
            "name": self.name,
            "config": _to_plain(self.config),
            "weights": {
                key: tensor.detach().cpu().contiguous().numpy()
                for key, tensor in self.state_dict().items()
            },
            "wavelength": self.wavelength,
            "medium": self.medium,
            "provenance": self.provenance,
        }
        if self.classes is not None:
            tree["classes"] = list(self.classes)
        if self.extra:
            tree["extra"] = dict(self.extra)
        return tree

    @classmethod
    def _from_tree(cls, tree: dict) -> "DeepCleanModel":
        """Rebuild a model from an ASDF tree such as `_to_tree` returns.

        The class is looked up by name in the fixed registry, the network is
        built from the configuration, and every weight is checked (key, shape,
        kind) before it is copied into memory.

        Raises
        ------
        ValueError
            If anything in the tree is missing, unknown or inconsistent; the
            message names the field (and, for weights, both shapes).
        """
        try:
            return cls._from_checked_tree(tree)
        except TypeError as exc:
            raise ValueError(f"invalid model file content: {exc}") from exc

    @classmethod
    def _from_checked_tree(cls, tree):
        if not isinstance(tree, dict):
            raise ValueError(f"a model node must be a mapping, got {type(tree).__name__}")
        required = ("class", "config", "weights", "wavelength", "medium", "provenance")
        missing = [key for key in required if key not in tree]
        if missing:
            raise ValueError(f"model node lacks required field(s): {', '.join(missing)}")
        unknown = sorted(set(tree) - {*required, "name", "classes", "extra"})
        if unknown:
            raise ValueError(f"model node has unknown field(s): {', '.join(map(str, unknown))}")
        model_cls = model_class(tree["class"])
        if not issubclass(model_cls, cls):
            raise ValueError(f"model class {tree['class']!r} is not a {cls.__name__}")
        arguments = {
            "wavelength": _expect(tree["wavelength"], u.Quantity, "wavelength"),
            "medium": tree["medium"],
            "classes": tree.get("classes"),
            "extra": _check_extra(_read_extra(tree.get("extra", {}))),
            "provenance": _expect(tree["provenance"], Provenance, "provenance"),
            "name": tree.get("name"),
        }
        with torch.device("meta"):  # shapes only: nothing is allocated
            probe = model_cls(tree["config"], **arguments)
        probe._check_weights(tree["weights"])
        model = model_cls(tree["config"], **arguments)
        model._load_weights(tree["weights"])
        return model

    def _check_weights(self, weights: dict) -> None:
        """Check the network's size, and ``weights``' keys, shapes and kinds against it."""
        size = sum(tensor.numel() for tensor in self.state_dict().values())
        if size > MAX_WEIGHT_ELEMENTS:
            raise ValueError(
                f"the configuration builds a network of {size} weight elements, more than "
                f"{MAX_WEIGHT_ELEMENTS}"
            )
        if not isinstance(weights, dict):
            raise ValueError(f"weights must be a mapping, got {type(weights).__name__}")
        expected = self.state_dict()
        for key in expected:
            if key not in weights:
                raise ValueError(
                    f"weight {key!r} is missing from the file "
                    f"(the configuration expects shape {tuple(expected[key].shape)})"
                )
        for key in weights:
            if key not in expected:
                shape = getattr(weights[key], "shape", None)
                raise ValueError(f"the file has an unexpected weight {key!r} (shape {shape})")
        for key, target in expected.items():
            _check_weight(key, weights[key], target)

    def _load_weights(self, weights: dict) -> None:
        """Copy ``weights`` in; `from_tree` checked them on a meta-device twin first."""
        expected = self.state_dict()
        arrays = {
            key: torch.from_numpy(np.array(weights[key], dtype=_numpy_dtype(target), copy=True))
            for key, target in expected.items()
        }
        self.load_state_dict(arrays, strict=True)


def _check_weight(key, value, target):
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"weight {key!r} is not an array (got {type(value).__name__})")
    if tuple(shape) != tuple(target.shape):
        raise ValueError(
            f"weight {key!r} has shape {tuple(shape)} in the file but the configuration "
            f"gives {tuple(target.shape)}"
        )
    kind = np.dtype(dtype).kind
    want = _numpy_dtype(target).kind
    if target.is_floating_point() and kind != "f":
        raise ValueError(f"weight {key!r} has dtype {dtype}, expected a floating-point array")
    if not target.is_floating_point() and kind != want:
        raise ValueError(f"weight {key!r} has dtype {dtype}, expected kind {want!r}")


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return torch.empty(0, dtype=tensor.dtype).numpy().dtype


def _expect(value, kind, field):
    if not isinstance(value, kind):
        tag = getattr(value, "_tag", None)
        found = f"tag {tag}" if tag else type(value).__name__
        raise ValueError(f"model field {field!r} must be a {kind.__name__}, got {found}")
    return value


def _check_config(config) -> dict:
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if not isinstance(config.get("architecture"), str):
        raise ValueError("config must have an 'architecture' entry (str)")
    checked = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise TypeError(f"config keys must be str, got {key!r}")
        checked[key] = _check_config_value(key, value, depth=0)
    return checked


def _check_config_value(key, value, depth):
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, _SCALARS):
        if isinstance(value, Real) and not isinstance(value, Integral) and math.isnan(value):
            raise ValueError(f"config[{key!r}] is NaN")
        return value
    if isinstance(value, list | tuple) and depth < 2:
        return [_check_config_value(key, item, depth + 1) for item in value]
    raise TypeError(
        f"config[{key!r}] must be a scalar or a list (at most two levels) of scalars, "
        f"got {type(value).__name__}"
    )


def _to_plain(value):
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(item) for item in value]
    return value


def _check_wavelength(wavelength) -> u.Quantity:
    if not isinstance(wavelength, u.Quantity):
        raise TypeError(f"wavelength must be a Quantity, got {type(wavelength).__name__}")
    if wavelength.unit.physical_type != "length":
        raise ValueError(f"wavelength must have a length unit, got {wavelength.unit}")
    wavelength = u.Quantity(wavelength, dtype=np.float64, copy=True)
    if wavelength.ndim != 1 or wavelength.size < 2:
        raise ValueError(
            f"wavelength must be 1-D with at least 2 pixels, got shape {wavelength.shape}"
        )
    if not np.all(np.isfinite(wavelength.value)) or np.any(np.diff(wavelength.value) <= 0):
        raise ValueError("wavelength must be finite and strictly increasing")
    return wavelength


def _check_medium(medium) -> str:
    if medium not in _MEDIA:
        raise ValueError(f"medium must be 'air' or 'vacuum', got {medium!r}")
    return medium


def _check_classes(classes) -> tuple:
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise TypeError(f"classes must be a sequence of str, got {classes!r}")
    return tuple(classes)


def _check_extra(extra) -> dict:
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict of arrays, got {type(extra).__name__}")
    checked = {}
    for key, value in extra.items():
        if not isinstance(key, str):
            raise TypeError(f"extra keys must be str, got {key!r}")
        array = np.array(value, copy=True)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"extra[{key!r}] must be a numeric array, got dtype {array.dtype}")
        checked[key] = array
    return checked


def _read_extra(extra) -> dict:
    """Check the declared sizes of a file's extra arrays before reading any data."""
    if not isinstance(extra, dict):
        raise ValueError(f"extra must be a mapping, got {type(extra).__name__}")
    for key, value in extra.items():
        shape = getattr(value, "shape", None)
        if shape is None:
            raise ValueError(f"extra[{key!r}] is not an array (got {type(value).__name__})")
        if math.prod(shape) > MAX_EXTRA_ELEMENTS:
            raise ValueError(
                f"extra[{key!r}] declares shape {tuple(shape)}, more than "
                f"{MAX_EXTRA_ELEMENTS} elements"
            )
    return extra
