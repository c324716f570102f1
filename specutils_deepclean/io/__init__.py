"""Input and output: the ASDF model format (:mod:`specutils_deepclean.io.asdf`) and model files."""
