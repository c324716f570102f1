"""ASDF entry points: the resource mappings and the extension of specutils-deepclean.

asdf imports this module in every process that opens or writes an ASDF file,
so it imports only the standard library and asdf; the converters (and, through
them, torch) are imported when an extension is actually requested.
"""

import importlib.resources

from asdf.extension import ManifestExtension
from asdf.resource import DirectoryResourceMapping

from .uris import MANIFEST_URI, MODEL_TAG, NAMESPACE, PROVENANCE_TAG

__all__ = [
    "NAMESPACE",
    "MANIFEST_URI",
    "MODEL_TAG",
    "PROVENANCE_TAG",
    "get_resource_mappings",
    "get_extensions",
]


def get_resource_mappings() -> list[DirectoryResourceMapping]:
    """Return the mappings from the package's schema and manifest URIs to its files.

    Registered with the ``asdf.resource_mappings`` entry point.

    Returns
    -------
    list of `asdf.resource.DirectoryResourceMapping`
        One mapping for the schemas, one for the manifests.
    """
    root = importlib.resources.files("specutils_deepclean.io.asdf") / "resources"
    return [
        DirectoryResourceMapping(root / "schemas", f"{NAMESPACE}/schemas/"),
        DirectoryResourceMapping(root / "manifests", f"{NAMESPACE}/manifests/"),
    ]


def get_extensions() -> list[ManifestExtension]:
    """Return the package's ASDF extensions.

    Registered with the ``asdf.extensions`` entry point.

    Returns
    -------
    list of `asdf.extension.ManifestExtension`
        The extension built from the current manifest with the package's converters.
    """
    from .converters import ModelConverter, ProvenanceConverter

    return [
        ManifestExtension.from_uri(
            MANIFEST_URI, converters=[ModelConverter(), ProvenanceConverter()]
        )
    ]
