"""orderlab: generation order in autoregressive image generation, as plugins and experiments."""

from orderlab.model.base import Backbone
from orderlab.model.registry import get_backbone, list_backbones, register_backbone
from orderlab.plan import Plan, PlanError
from orderlab.plan_metrics import plan_metrics
from orderlab.schedule import (
    GeometricSchedule,
    OrderSchedule,
    Schedule,
    fit_groups,
    get_schedule,
    list_schedules,
    register_schedule,
    schedule_class,
)
from orderlab.sizes import list_size_rules, register_size_rule, resolve_sizes

__version__ = "0.1.0"
__all__ = [
    "Backbone", "get_backbone", "list_backbones", "register_backbone",
    "GeometricSchedule", "OrderSchedule", "Plan", "PlanError", "Schedule", "fit_groups", "get_schedule",
    "list_schedules", "list_size_rules", "plan_metrics", "register_schedule", "register_size_rule", "resolve_sizes",
    "schedule_class",
]
