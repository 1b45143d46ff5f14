"""Deprecated alias of :mod:`orderlab.train.callbacks`, kept so old YAMLs and saved run configs still load."""

import warnings

from orderlab.train.callbacks import *  # noqa: F403
from orderlab.train.callbacks import __all__  # noqa: F401

warnings.warn("orderlab.callbacks is deprecated: use orderlab.train.callbacks", DeprecationWarning, stacklevel=2)
