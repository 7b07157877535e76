"""The `eos` command line."""
