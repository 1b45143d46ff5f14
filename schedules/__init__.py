"""Built-in schedule plugins, one module per order. Importing this package registers them."""

from orderlab.schedules.diagonal import Diagonal
from orderlab.schedules.locality import Locality
from orderlab.schedules.lshape import LShape
from orderlab.schedules.mixture import Mixture
from orderlab.schedules.multiscale import Multiscale
from orderlab.schedules.random import Random
from orderlab.schedules.raster import Raster

from orderlab.plan_bank import Bank  # noqa: E402  (plans from a file: registered, not in list_schedules())

__all__ = ["Bank", "Diagonal", "LShape", "Locality", "Mixture", "Multiscale", "Random", "Raster"]
