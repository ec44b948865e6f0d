"""Core: the model notation, architectures, masks and models, data-set facts, settings, errors, safe file reads.
Imports nothing else of randmask (the bottom layer); set_schema, safe_files, settings, data_arrays, errors: no torch."""
