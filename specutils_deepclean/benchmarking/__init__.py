"""The benchmark protocols behind ``specutils-deepclean benchmark`` (described in the docs, :doc:`/denoising` and :doc:`/tellurics`)."""
