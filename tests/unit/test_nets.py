import pytest
import torch

from fmnist.model import nets
from fmnist.model.names import NETS
from fmnist.params import Augment
from fmnist.training import augment


@pytest.mark.parametrize("name", NETS)
def test_every_net_maps_a_batch_to_class_logits(name):
    model = nets.build(name, 10, (28, 28)).eval()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", NETS)
def test_inference_copy_folds_batchnorm_without_changing_outputs(name):
    torch.manual_seed(0)
    model = nets.build(name, 10, (28, 28))
    model.train()(torch.randn(64, 1, 28, 28))  # non-trivial running statistics to fold
    folded = nets.for_inference(model)
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    if name == "fast":  # conv -> BN pairs only there; the WRN's BNs precede their convs
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) or name == "cmasch"


def test_a_wide_resnet_is_named_by_depth_and_width():
    plain, named = nets.build("wrn", 10, (28, 28)), nets.build("wrn-16-4", 10, (28, 28))
    assert nets.count_parameters(plain) == nets.count_parameters(named) == 2_748_602
    small = nets.build("wrn-10-1", 10, (28, 28)).eval()
    assert small(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert nets.count_parameters(small) < nets.count_parameters(plain) / 10


@pytest.mark.fault
@pytest.mark.parametrize("name, expected", [
    ("wrn-17-4", r"depth must be 6n\+4"), ("wrn-16-0", "width must be 1 to 32"),
])
def test_a_net_no_one_can_build_is_refused_by_name(name, expected):
    with pytest.raises(ValueError, match=expected):
        nets.build(name, 10, (28, 28))


def test_cmasch_matches_the_published_keras_model_size():
    # Keras reports 493,898 including BatchNormalization's 128 moving statistics, which are buffers here.
    assert nets.count_parameters(nets.build("cmasch", 10, (28, 28))) == 493_898 - 128


def test_unknown_net_lists_the_choices():
    choices = "cmasch, fast, fast_whiten, fast_whiten2, fast_pool, wrn"
    with pytest.raises(ValueError, match=f"unknown net 'resnet9'; choose one of {choices}"):
        nets.build("resnet9", 10, (28, 28))


def test_early_pooling_runs_batchnorm_and_later_convs_on_pooled_pixels():
    def batchnorm_sizes(name):
        model, sizes = nets.build(name, 10, (28, 28)).eval(), []
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.register_forward_hook(lambda _module, _inputs, out: sizes.append(out.shape[-1]))
        model(torch.zeros(1, 1, 28, 28))
        return sizes, nets.count_parameters(model)

    whiten_sizes, whiten_params = batchnorm_sizes("fast_whiten")
    pool_sizes, pool_params = batchnorm_sizes("fast_pool")
    assert whiten_sizes == [28, 14, 14, 7, 7]
    assert pool_sizes == [14, 7, 7, 3, 3]
    assert pool_params == whiten_params  # the same layers, in another order
    # airbench's unpadded 2 x 2 whitening trims a pixel, and each pool rounds down: 27, then 13, then 6
    assert batchnorm_sizes("fast_whiten2")[0] == [27, 13, 13, 6, 6]


def test_patch_whitening_decorrelates_patches_and_is_frozen():
    torch.manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(200, 1, 30, 30), 3, 1)  # neighbours strongly correlated
    layer = nets.PatchWhitening(size=3, eps=1e-6)
    layer.fit(smooth)
    assert not layer.conv.weight.requires_grad and layer.conv.bias.requires_grad
    # On full patches (no padding) the 9 positive filters give uncorrelated unit-variance responses,
    # the other 9 their negatives.
    out = layer(smooth)[:, :, 1:-1, 1:-1].transpose(0, 1).reshape(18, -1).double()
    torch.testing.assert_close(torch.cov(out[:9]), torch.eye(9, dtype=torch.float64), atol=0.02, rtol=0)
    torch.testing.assert_close(out[9:], -out[:9])


def test_two_by_two_whitening_decorrelates_patches_and_must_be_unpadded():
    torch.manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(200, 1, 30, 30), 3, 1)
    layer = nets.PatchWhitening(size=2, eps=1e-6, padded=False)
    layer.fit(smooth)
    out = layer(smooth).transpose(0, 1).reshape(8, -1).double()
    torch.testing.assert_close(torch.cov(out[:4]), torch.eye(4, dtype=torch.float64), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="a padded layer needs an odd patch size, got 2"):
        nets.PatchWhitening(size=2)


def test_whitened_net_is_fitted_from_images_and_keeps_its_filters_in_the_state_dict():
    torch.manual_seed(0)
    model = nets.build("fast_whiten", 10, (28, 28))
    before = model.features[0].conv.weight.clone()
    nets.fit_whitening(model, torch.randn(50, 1, 28, 28))
    assert not torch.equal(before, model.features[0].conv.weight)
    rebuilt = nets.build("fast_whiten", 10, (28, 28))
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def batch():
    return (torch.arange(4 * 28 * 28) % 256).to(torch.uint8).reshape(4, 1, 28, 28)


NORMALIZE = nets.Normalizer(torch.tensor(0.3), torch.tensor(0.4), channels_last=False)


def test_augmentations_off_only_normalize_the_batch():
    gen = torch.Generator().manual_seed(0)
    out = augment.augment(batch(), Augment(flip=False, translate=0, erasing=0.0), gen, NORMALIZE)
    assert torch.equal(out, NORMALIZE(batch()))


def test_augmentation_is_reproducible_from_the_generator():
    cfg = Augment(flip=True, translate=2, erasing=0.5)
    first = augment.augment(batch(), cfg, torch.Generator().manual_seed(1), NORMALIZE)
    second = augment.augment(batch(), cfg, torch.Generator().manual_seed(1), NORMALIZE)
    assert torch.equal(first, second) and first.shape == batch().shape and first.dtype == torch.float32


def test_a_shift_uncovers_background_not_the_mean():
    # An all-white batch: after a shift, every pixel is either white or the black background a real image has
    # at its edge; normalizing first would have uncovered 0, the mean's grey.
    white = torch.full((64, 1, 28, 28), 255, dtype=torch.uint8)
    out = augment.augment(white, Augment(flip=False, translate=1, erasing=0.0), torch.Generator().manual_seed(0),
                          NORMALIZE)
    background, foreground = (NORMALIZE(torch.tensor(v, dtype=torch.uint8)).item() for v in (0, 255))
    assert set(out.unique().tolist()) == {background, foreground}


def test_flip_mirrors_or_keeps_each_image():
    out = augment.flip(batch(), torch.Generator().manual_seed(0))
    for image, original in zip(out, batch()):
        assert torch.equal(image, original) or torch.equal(image, original.flip(-1))


def test_translate_shifts_within_bounds_and_fills_zeros():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 13, 13] = 1
    out = augment.translate(x, 2, torch.Generator().manual_seed(0))
    rows, cols = out[:, 0].nonzero()[:, 1], out[:, 0].nonzero()[:, 2]
    assert out.sum() == 64 and rows.min() >= 11 and rows.max() <= 15 and cols.min() >= 11 and cols.max() <= 15
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5  # different images got different shifts


def test_erasing_zeroes_a_rectangle():
    out = augment.erase(torch.ones(8, 1, 28, 28), 1.0, torch.Generator().manual_seed(0))
    erased = (out == 0).sum(dim=(1, 2, 3)).float() / (28 * 28)
    assert ((erased >= 0.005) & (erased <= 0.30)).all()
