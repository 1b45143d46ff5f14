"""The model: backbone config and factory, the backbones, layers, attention masks and the attention probe."""
