"""Deprecated alias of :mod:`orderlab.train.module`, kept so old YAMLs and saved run configs still load."""

import warnings

from orderlab.train.module import *  # noqa: F403
from orderlab.train.module import __all__, data_info, lr_factor  # noqa: F401

warnings.warn("orderlab.module is deprecated: use orderlab.train.module", DeprecationWarning, stacklevel=2)
