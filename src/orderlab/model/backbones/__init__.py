"""The built-in backbones."""
