"""Thin ASDF converters for the package's model bundles and provenance records.

The converters import nothing heavy at module level (asdf imports them in every
process that uses an extension); the model class is resolved through the fixed
``specutils_deepclean.models.MODEL_REGISTRY`` inside ``from_yaml_tree``.
"""

from asdf.extension import Converter

from ...models import MODEL_REGISTRY
from .uris import NAMESPACE

__all__ = ["ModelConverter", "ProvenanceConverter"]


class ModelConverter(Converter):
    """Convert any registered `~specutils_deepclean.models.base.DeepCleanModel`.

    The tree is built by the model's ``_to_tree`` and read back by
    ``DeepCleanModel._from_tree``, which rebuilds the network from its
    configuration and checks every weight before copying it.  When the file is a
    local one, its tree is checked first as `~specutils_deepclean.load_model`
    does (no references to other files, no Python tags, bounded array sizes), so
    ``asdf.open(path)["model"]`` never builds a model from such a file.
    """

    tags = [f"{NAMESPACE}/tags/model-1.*"]
    types = [path.replace(":", ".") for path in MODEL_REGISTRY.values()]

    def to_yaml_tree(self, obj, tag, ctx):
        return obj._to_tree()

    def from_yaml_tree(self, node, tag, ctx):
        from ...models.base import DeepCleanModel
        from ..prescan import prescan_url

        prescan_url(ctx.url)
        return DeepCleanModel._from_tree(node)


class ProvenanceConverter(Converter):
    """Convert a `~specutils_deepclean.provenance.Provenance` record."""

    tags = [f"{NAMESPACE}/tags/provenance-1.*"]
    types = ["specutils_deepclean.provenance.Provenance"]

    def to_yaml_tree(self, obj, tag, ctx):
        return obj.to_dict()

    def from_yaml_tree(self, node, tag, ctx):
        from ...provenance import Provenance

        return Provenance.from_dict(node)
