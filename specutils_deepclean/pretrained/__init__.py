"""Shipped pretrained model files; ``index.json`` maps short names to them.

Use the names with `specutils_deepclean.load_model`; list them with
`specutils_deepclean.io.models.pretrained_models`.
"""

__all__: list[str] = []
