"""The error every invalid spec, override or config raises: it names the key, the value and why."""


class ConfigError(ValueError):
    """A spec, ``--set`` override or config value that cannot be used."""
