"""The command line: thin parsers that validate options and call the pipelines."""
