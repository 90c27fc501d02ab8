"""Ensemble voting, evaluation metrics, pictures, and prediction input handling."""
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix

from fmnist.cli.predict import read_inputs
from fmnist.errors import StageError
from fmnist.evaluation.calibration import calibration, fit_temperature
from fmnist.evaluation.compatibility import check_compatible
from fmnist.evaluation.figures import evaluation_pictures
from fmnist.evaluation.scores import accuracy, log_loss, per_class_scores, score
from fmnist.files import save_torch
from fmnist.model.ensemble import Ensemble, combine, member_weights, tempered_probabilities
from fmnist.serving.inputs import as_images, convert_like_fashion_mnist, prediction_frame
from tests.conftest import tiny_ensemble

RNG = np.random.default_rng(0)


def random_probs(m, n, c):
    logits = RNG.normal(size=(m, n, c))
    return np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)


def test_soft_voting_of_identical_members_equals_the_member():
    member = random_probs(1, 50, 10)[0]
    for method in ("soft", "weighted"):
        np.testing.assert_allclose(combine(np.stack([member] * 4), method, np.array([0.9, 0.8, 0.7, 0.95])), member)


def test_hard_voting_counts_votes():
    probs = np.array([[[0.6, 0.4]], [[0.7, 0.3]], [[0.1, 0.9]]])
    np.testing.assert_allclose(combine(probs, "hard"), [[2 / 3, 1 / 3]])


def test_weighted_voting_follows_the_weights():
    probs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(combine(probs, "weighted", np.array([3.0, 1.0])), [[0.75, 0.25]])
    np.testing.assert_allclose(member_weights([0.9, 0.9], "weighted"), [0.5, 0.5])


def test_perfect_predictions_score_one_with_a_diagonal_confusion_matrix():
    labels = np.arange(100) % 10
    perfect = np.eye(10)[labels]
    assert accuracy(perfect, labels) == 1.0
    assert log_loss(perfect, labels) == pytest.approx(0.0, abs=1e-12)
    matrix = confusion_matrix(labels, perfect.argmax(1))
    assert (matrix == np.diag(np.diag(matrix))).all() and np.diag(matrix).sum() == 100
    ece, _ = calibration(perfect, labels, 15)
    assert ece == pytest.approx(0.0)


def test_overconfident_wrong_predictions_have_high_calibration_error():
    labels = np.zeros(100, dtype=int)
    wrong = np.tile([0.0, 1.0], (100, 1))
    ece, bins = calibration(wrong, labels, 10)
    assert ece == pytest.approx(1.0) and bins["counts"][-1] == 100


def test_temperature_fitted_on_overconfident_logits_restores_calibration():
    # Logits drawn so that the class probabilities at temperature 2 are the true ones: labels are sampled from
    # them, and a net that reports logits x 2 is overconfident by exactly that factor.
    rng = np.random.default_rng(1)
    true_logits = rng.normal(scale=2.0, size=(20000, 5))
    true_probs = tempered_probabilities([true_logits], 1.0)
    labels = np.array([rng.choice(5, p=p) for p in true_probs])
    overconfident = true_logits * 2
    temperature = fit_temperature([overconfident], labels)
    assert temperature == pytest.approx(2.0, rel=0.05)
    before = calibration(tempered_probabilities([overconfident], 1.0), labels, 15)[0]
    after = calibration(tempered_probabilities([overconfident], temperature), labels, 15)[0]
    assert before > 0.1 and after < 0.02


def test_temperature_of_an_underconfident_net_is_below_one_and_keeps_the_argmax():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 3000)
    logits = rng.normal(size=(3000, 4)) * 0.3
    logits[np.arange(3000), labels] += 1.0  # right most of the time, but never sure of it
    temperature = fit_temperature([logits, logits + rng.normal(scale=0.1, size=logits.shape)], labels)
    assert temperature < 1
    np.testing.assert_array_equal(tempered_probabilities([logits], temperature).argmax(1), logits.argmax(1))


def test_ensemble_temperatures_scale_member_logits_and_survive_the_file(tmp_path):
    ensemble = tiny_ensemble()
    images = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    logits = ensemble.member_logits(images)
    ensemble.temperatures = np.array([0.5])
    np.testing.assert_allclose(ensemble.predict_proba(images), tempered_probabilities([logits[0] * 2], 1.0),
                               rtol=1e-6)
    save_torch(tmp_path / "e.pt", ensemble.to_state())
    loaded = Ensemble.load(tmp_path / "e.pt")
    np.testing.assert_array_equal(loaded.temperatures, [0.5])
    assert loaded.tta_translate is False  # an ensemble file from before translation TTA predicts as it did
    np.testing.assert_allclose(loaded.member_probabilities([logits], calibrated=False)[0],
                               tempered_probabilities([logits[0]], 1.0))


def test_score_reports_members_mean_std_and_the_ensemble_gain():
    labels = np.arange(6) % 3
    right, wrong = np.eye(3)[labels], np.eye(3)[(labels + 1) % 3]
    members = np.stack([right, right * 0.6 + wrong * 0.4, right * 0.4 + wrong * 0.6])
    ensemble_probs = combine(members, "soft")
    f1 = per_class_scores(labels, ensemble_probs.argmax(1), 3)["f1"]
    report = score(members, ensemble_probs, labels, ["a", "b", "c"], ["x", "y", "z"], f1, ece=0.25)
    assert report["members_accuracy_mean"] == pytest.approx(2 / 3, abs=1e-6)
    assert report["members_accuracy_std"] == pytest.approx(np.std([1, 1, 0], ddof=1), abs=1e-6)
    assert report["ensemble_accuracy"] == 1.0 and report["ensemble_gain_over_best_member"] == 0.0
    assert report["member_c_accuracy"] == 0.0 and set(report["per_class_f1"]) == {"x", "y", "z"}
    assert report["ensemble_ece"] == 0.25


@pytest.mark.fault
def test_evaluation_refuses_a_model_for_other_classes(tmp_path):
    with pytest.raises(StageError, match=r"model classes \['a', 'b', 'c'\] do not match dataset.classes"):
        check_compatible(tiny_ensemble(), tmp_path / "e.pt", ["a", "b", "d"], [28, 28], np.zeros((1, 28, 28)))
    with pytest.raises(StageError, match=r"model expects images of \[28, 28\], dataset has \[32, 32\]"):
        check_compatible(tiny_ensemble(), tmp_path / "e.pt", ["a", "b", "c"], [32, 32], np.zeros((1, 32, 32)))


def test_ensemble_file_round_trips_with_weights_only(tmp_path):
    ensemble = tiny_ensemble()
    save_torch(tmp_path / "e.pt", ensemble.to_state())
    loaded = Ensemble.load(tmp_path / "e.pt")
    images = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict_proba(images), ensemble.predict_proba(images), rtol=1e-5)
    assert loaded.classes == ["a", "b", "c"]


def test_ensemble_computes_in_its_precision_and_keeps_it_in_the_file(tmp_path):
    ensemble = tiny_ensemble()
    images = RNG.integers(0, 256, (64, 28, 28), dtype=np.uint8)
    fp32 = ensemble.member_logits(images)
    ensemble.precision = "bf16"
    save_torch(tmp_path / "e.pt", ensemble.to_state())
    loaded = Ensemble.load(tmp_path / "e.pt")
    assert loaded.precision == "bf16"
    bf16 = loaded.member_logits(images)
    # bf16 keeps 8 bits of mantissa: the logits move, by far less than their spread
    assert 0 < np.abs(bf16 - fp32).max() < 0.05 * fp32.std()
    np.testing.assert_array_equal(loaded.member_logits(images), bf16)


def test_an_ensemble_file_without_a_precision_computes_in_fp32(tmp_path):
    state = tiny_ensemble().to_state()
    del state["precision"]  # files written before the ensemble recorded it
    save_torch(tmp_path / "e.pt", state)
    assert Ensemble.load(tmp_path / "e.pt").precision == "fp32"


def test_ensemble_folds_batchnorm_once_not_per_prediction(monkeypatch):
    ensemble = tiny_ensemble()
    images = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    first = ensemble.predict_proba(images)

    def refuse(model):
        raise AssertionError("BatchNorm folded again on a prediction call")

    monkeypatch.setattr("fmnist.model.nets.for_inference", refuse)
    np.testing.assert_array_equal(ensemble.predict_proba(images), first)


def test_flip_tta_averages_the_image_and_its_mirror():
    ensemble = tiny_ensemble()
    images = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    expected = (ensemble.predict_proba(images) + ensemble.predict_proba(images[:, :, ::-1])) / 2
    ensemble.tta_flip = True
    np.testing.assert_allclose(ensemble.predict_proba(images), expected, rtol=1e-5)


def test_translation_tta_weighs_the_shifted_views_half_and_survives_the_file(tmp_path):
    ensemble = tiny_ensemble()
    images = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    down_right, up_left = np.zeros_like(images), np.zeros_like(images)
    down_right[:, 1:, 1:], up_left[:, :-1, :-1] = images[:, :-1, :-1], images[:, 1:, 1:]  # black edge
    ensemble.tta_flip = True
    flipped = [ensemble.predict_proba(x) for x in (images, down_right, up_left)]
    ensemble.tta_translate = True
    np.testing.assert_allclose(ensemble.predict_proba(images),
                               flipped[0] / 2 + (flipped[1] + flipped[2]) / 4, rtol=1e-5)
    save_torch(tmp_path / "e.pt", ensemble.to_state())
    loaded_views, loaded_weights = Ensemble.load(tmp_path / "e.pt").views
    assert loaded_views == ensemble.views[0] and np.array_equal(loaded_weights, ensemble.views[1])
    assert len(ensemble.views[0]) == 6 and ensemble.views[1].sum() == pytest.approx(1.0)


def test_pictures_are_written_and_non_empty(tmp_path):
    labels = np.arange(60) % 3
    probs = random_probs(1, 60, 3)[0]
    images = RNG.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    scores = {"precision": np.full(3, 0.5), "recall": np.full(3, 0.6), "f1": np.full(3, 0.55)}
    reliability = {"calibrated": calibration(probs, labels, 10),
                   "without temperature": calibration(random_probs(1, 60, 3)[0], labels, 10)}
    paths = evaluation_pictures(tmp_path, images, labels, probs, reliability, scores, ["a", "b", "c"], 12, "test")
    assert len(paths) == 4
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, path


def test_photo_is_converted_the_fashion_mnist_way(tmp_path):
    photo = Image.new("RGB", (300, 200), "white")
    photo.paste((40, 40, 40), (50, 80, 250, 120))  # a dark 200x40 product on white
    converted = convert_like_fashion_mnist(photo)
    assert converted.shape == (28, 28) and converted.dtype == np.uint8
    # trimmed, scaled to 28 wide, centred: light object rows 11-16 on a black background
    assert converted[0].max() == 0 and converted[27].max() == 0
    assert converted[14].min() > 180 and converted[:, 0].max() > 180
    photo.save(tmp_path / "p.png")
    images, names = read_inputs([tmp_path / "p.png"], (28, 28))
    assert images.shape == (1, 28, 28) and names == [str(tmp_path / "p.png")]


def test_model_input_accepts_images_or_flat_pixels_and_refuses_others():
    flat = RNG.integers(0, 256, (2, 784))
    assert as_images(flat, (28, 28)).shape == (2, 28, 28)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 28, 28\) or \(N, 784\), got \(2, 10\)"):
        as_images(np.zeros((2, 10)), (28, 28))
    with pytest.raises(ValueError, match="pixel values in"):
        as_images(np.full((1, 28, 28), 300), (28, 28))


def test_prediction_frame_names_the_class():
    frame = prediction_frame(np.array([[0.1, 0.9], [0.8, 0.2]]), ["cat", "dog"])
    assert frame["class"].tolist() == ["dog", "cat"] and frame["probability"].tolist() == [0.9, 0.8]
