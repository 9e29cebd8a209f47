"""Settings declared once, as config fields with their flag, help and range."""

from spruce.config.files import from_config, read_config, to_config
from spruce.config.settings import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    REQUIRED,
    Bounds,
    Setting,
    check_settings,
    comma_names,
    flag_of,
    in_memory,
    section,
    sections_of,
    setting,
    settings_of,
)

__all__ = [
    "AT_LEAST_ONE",
    "FRACTION",
    "NON_NEGATIVE",
    "POSITIVE",
    "REQUIRED",
    "Bounds",
    "Setting",
    "check_settings",
    "comma_names",
    "flag_of",
    "from_config",
    "in_memory",
    "read_config",
    "section",
    "sections_of",
    "setting",
    "settings_of",
    "to_config",
]
