"""Imports the built-in converters so that they register (the registry imports this module on its first lookup)."""

from orderlab.published import arpg, lpd, randar  # noqa: F401
