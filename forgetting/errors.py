"""The study's one error for bad input, apart so that code which must run before the project's dependencies are
installed (flows/pins.py, which `make install PINS=` calls on a bare virtual environment) can raise it too."""


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field."""
