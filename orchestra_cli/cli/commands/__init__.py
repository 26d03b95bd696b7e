"""One module per command group; each command parses, calls the core, renders."""
