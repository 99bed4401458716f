"""One module per CLI subcommand (discovered by :mod:`cpgformer.cli`)."""
