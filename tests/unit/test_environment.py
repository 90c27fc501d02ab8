"""The environment is the lock: what `make setup` installed is exactly what requirements.lock pins."""
import re
from importlib import metadata

from packaging.utils import canonicalize_name

from fmnist.tracking import registry
from tests.conftest import ROOT

# Not in the lock: the installer itself and this project (installed editable from the checkout).
UNLOCKED = {"pip", "fmnist-pipeline"}


def locked() -> dict[str, str]:
    return {name: pin.split("==", 1)[1] for name, pin in registry.lock_pins(ROOT / "requirements.lock").items()}


def test_every_installed_package_is_the_version_the_lock_pins():
    pins = locked()
    assert {"torch", "mlflow", "dvc", "numpy", "scikit-learn"} <= set(pins)
    text = (ROOT / "requirements.lock").read_text()
    hashed = re.findall(r"^\S+==\S+ \\\n\s+--hash=sha256:[0-9a-f]{64}", text, re.M)
    assert len(hashed) == len(pins), "every pin carries its hashes (pip install --require-hashes)"
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    for name in UNLOCKED:
        installed.pop(name, None)
    assert installed == pins, {
        "not as locked": {n: (v, pins.get(n)) for n, v in installed.items() if pins.get(n) != v},
        "locked, not installed": sorted(set(pins) - set(installed)),
    }
