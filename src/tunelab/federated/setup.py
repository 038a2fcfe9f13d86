"""Whether Flower is installed: the federated extra is optional, and its absence is a user's fixable problem."""

from __future__ import annotations

import importlib.util

from tunelab.errors import ConfigError


def require_flower(simulation: bool = True) -> None:
    """Flower, and Ray for its simulation engine (the deployment engine needs no Ray)."""
    missing = [name for name in ("flwr", "ray")[: 2 if simulation else 1] if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"tunelab federate needs Flower with its simulation engine ({' and '.join(missing)} not installed): "
            "pip install 'tunelab[federated]'."
        )


def require_accountant() -> None:
    """federated.dp reports its epsilon through Flower's RDP accountant, which needs Google's dp-accounting."""
    if importlib.util.find_spec("dp_accounting") is None:
        raise ConfigError(
            "option 'federated.dp' reports the epsilon spent with Flower's privacy accountant, which needs the "
            "dp-accounting package: pip install 'tunelab[federated]'."
        )
