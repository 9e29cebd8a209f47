"""Settings declared once, as config fields with their flag, help and range."""

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
    "setting",
    "settings_of",
]
