"""Models: loading from the Hub or a folder, or building from a config."""
