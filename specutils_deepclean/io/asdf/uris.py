"""The URIs of the package's ASDF format: its namespace, manifest and tags.

Standard library only: the entry points, the converters and the model I/O all read
them from here.
"""

__all__ = ["NAMESPACE", "MANIFEST_URI", "MODEL_TAG", "PROVENANCE_TAG"]

#: Root of every URI the package defines (a host the project controls).
NAMESPACE = "asdf://specutils-deepclean.readthedocs.io/deepclean"
#: URI of the manifest that lists the tags of the current format.
MANIFEST_URI = f"{NAMESPACE}/manifests/deepclean-1.0.0"
#: Tag of a model bundle in the current format.
MODEL_TAG = f"{NAMESPACE}/tags/model-1.0.0"
#: Tag of a training provenance record in the current format.
PROVENANCE_TAG = f"{NAMESPACE}/tags/provenance-1.0.0"
