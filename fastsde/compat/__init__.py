"""Compatibility layers that keep other codebases' import paths, names and defaults on top of fastsde's engine."""
