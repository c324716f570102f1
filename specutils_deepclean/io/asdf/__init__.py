"""The specutils-deepclean ASDF extension: tags, schemas and converters of model files."""
