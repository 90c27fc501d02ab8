"""A registered ensemble version logged before the library moved to fmnist/ still loads and predicts.

The fixture is such a version as MLflow stored it (commit eace21d's CI-profile run): its MLmodel, its python_model
file and its code, the whole stages/ package of the time, under code/stages/. Its weights, ensemble.pt, are
left out and written here by today's code: the file format did not change, which this also checks."""
import json
import subprocess
import sys
import tarfile

import numpy as np

from fmnist.files import save_torch
from tests.conftest import ROOT, subprocess_env, tiny_ensemble

FIXTURE = ROOT / "tests/fixtures/ensemble-model-logged-before-fmnist.tar.gz"
# Loads the model the way `mlflow models predict` does, in a fresh process started in this checkout, where
# `import stages` would find today's stage package: MLflow puts the model's own code first on sys.path.
LOAD_AND_PREDICT = """
import json, sys
import mlflow.pyfunc, numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = model.predict(np.load(sys.argv[2]))
print(json.dumps({"classes": list(frame["class"]), "probabilities": frame.iloc[:, 2:].to_numpy().tolist(),
                  "code": sys.modules["stages.ensemble"].__file__}))
"""


def test_a_version_logged_before_the_move_loads_and_predicts_like_todays_code(tmp_path):
    model = tmp_path / "model"
    with tarfile.open(FIXTURE) as archive:
        # the "data" filter (no links out, no absolute paths) exists from Python 3.11.4; the fixture is ours anyway
        archive.extractall(model, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    assert (model / "code/stages/ensemble_pyfunc.py").is_file() and not (model / "code/fmnist").exists()
    ensemble = tiny_ensemble(classes=[f"c{i}" for i in range(10)])
    ensemble.temperatures = np.array([0.8])
    (model / "artifacts").mkdir(exist_ok=True)
    save_torch(model / "artifacts/ensemble.pt", ensemble.to_state())
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(model), str(tmp_path / "images.npy")],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert served["code"].startswith(str(model / "code/stages"))  # its own code, not this checkout's stages/
    expected = ensemble.predict_proba(images)
    np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-6)
    assert served["classes"] == [ensemble.classes[i] for i in expected.argmax(1)]
