"""Sigma rules (pySigma) in the SOC: loaded from a folder, compiled for every event store, run on
a schedule (see docs/soc.md, "Sigma rules")."""

from soc.sigma.correlate import Correlation, Match, correlate
from soc.sigma.pipeline import WEB_FIELDS, onegate_pipeline
from soc.sigma.rules import LoadError, SigmaRule, compile_rule, load_folder
from soc.sigma.scheduler import ScheduledRunner

__all__ = [
    "WEB_FIELDS",
    "Correlation",
    "LoadError",
    "Match",
    "ScheduledRunner",
    "SigmaRule",
    "compile_rule",
    "correlate",
    "load_folder",
    "onegate_pipeline",
]
