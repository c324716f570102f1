"""The benchmark protocols behind ``specutils-deepclean benchmark`` (see the design notes)."""
