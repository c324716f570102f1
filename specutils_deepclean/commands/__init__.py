"""Sub-commands of the ``specutils-deepclean`` command line (:mod:`specutils_deepclean.cli`)."""
