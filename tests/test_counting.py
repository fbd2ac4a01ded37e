"""Cell counting engine: targets, the sparse loss, training on generated nuclei, the store, batch.

One tiny counter (depth-3 encoder, 64 px patches) is trained once per module on a generated
image with a third of its centres given and is shared by the tests that only read it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_cellsparse.core.errors import BadInputError
from napari_cellsparse.core.paths import HOME_ENV
from napari_cellsparse.counting.evaluate import localisation_f1, match_centres
from napari_cellsparse.counting.targets import (
    check_points,
    density_targets,
    heatmap_targets,
    trusted_mask,
)
from napari_cellsparse.samples.generated import make_nuclei

pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")

TINY = {"encoder_depth": 3, "decoder_width": 8, "patch_size": 64, "batch_size": 4}


def nuclei(seed: int, shape=(160, 160), n: int = 24):
    """A generated image, its exact centres and painted background (> 6 px from nuclei)."""
    image, labels = make_nuclei(shape, n_objects=n, radius=(5.0, 7.0), seed=seed)
    ids = np.arange(1, labels.max() + 1)
    centres = np.array(ndi.center_of_mass(labels > 0, labels, ids))
    background = ndi.distance_transform_edt(labels == 0) > 6
    return image, centres, background


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory):
    """A tiny counter trained on one image with a third of its points (own store folder)."""
    from napari_cellsparse.counting import train_counter

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_ENV, str(tmp_path_factory.mktemp("counter-home")))
        image, centres, background = nuclei(seed=1)
        given = centres[np.random.default_rng(0).permutation(len(centres))[: len(centres) // 3]]
        trained = train_counter(
            [image], [given], name="tiny", background=[background], steps=150, **TINY
        )
    return trained


def test_density_targets_integrate_to_the_number_of_points() -> None:
    points = np.array([[10.0, 10.0], [30.5, 40.2], [0.0, 0.0], [63.0, 20.0], [31.0, 41.0]])
    for sigma in (1.0, 2.5, 6.0):
        density = density_targets(points, (64, 64), sigma)
        assert density.dtype == np.float32 and density.shape == (64, 64)
        assert density.sum() == pytest.approx(len(points), abs=1e-3)
    assert density_targets(np.zeros((0, 2)), (8, 8), 2.0).sum() == 0.0
    heat = heatmap_targets(points[:1], (64, 64), 2.0)
    assert heat.max() == pytest.approx(1.0) and heat[10, 10] == pytest.approx(1.0)


def test_points_are_checked() -> None:
    assert check_points([[1, 2], [3, 4]], (10, 10), "x").shape == (2, 2)
    assert check_points(np.zeros((0, 2)), (10, 10), "x").shape == (0, 2)
    assert check_points([[0, 5, 5]], (10, 10), "x").tolist() == [[5.0, 5.0]]  # napari z y x
    with pytest.raises(BadInputError, match="outside"):
        check_points([[1, 2], [12, 3]], (10, 10), "image 1")
    with pytest.raises(BadInputError, match="N x 2"):
        check_points([1, 2, 3], (10, 10), "image 1")


def test_trusted_mask_is_background_discs_and_regions() -> None:
    background = np.zeros((40, 40), bool)
    background[:, :5] = True
    regions = np.zeros((40, 40), bool)
    regions[30:, 30:] = True
    mask = trusted_mask(np.array([[20.0, 20.0]]), (40, 40), 3.0, background, regions)
    assert mask[:, :5].all() and mask[30:, 30:].all()
    assert mask[20, 23] and not mask[20, 24]
    assert mask.sum() == 40 * 5 + 100 + ((np.indices((7, 7)) - 3) ** 2).sum(0).__le__(9).sum()


def test_probable_background_is_the_dark_space_between_cells() -> None:
    from napari_cellsparse.counting.targets import probable_background

    image = np.zeros((60, 60, 1), np.float32)
    image[10:20, 10:20] = 1.0  # a bright cell
    image[40:50, 40:50] = 1.0  # another, with a given point
    probable = probable_background(image, 1.0, np.array([[45.0, 45.0]]), 12.0, margin=2.0)
    assert not probable[10:20, 10:20].any() and not probable[8, 15]  # cell and its margin
    assert probable[5, 50] and probable[30, 5]  # dark space
    assert not probable[45, 35]  # within the given point's disc
    assert not probable_background(-image, -1.0, np.zeros((0, 2)), 5.0, 2.0)[15, 15]


def test_loss_ignores_unannotated_foreground() -> None:
    """Changing the targets outside the trusted mask changes neither loss nor gradient."""
    import torch

    from napari_cellsparse.counting.network import counting_loss

    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(2, 1, 16, 16)), dtype=torch.float32)
    target = torch.tensor(rng.uniform(0, 1, size=(2, 1, 16, 16)), dtype=torch.float32)
    mask = torch.tensor(rng.random((2, 1, 16, 16)) < 0.4)
    changed = torch.where(mask, target, torch.full_like(target, 7.0))  # a "cell" everywhere
    results = []
    for t in (target, changed):
        x = logits.clone().requires_grad_(True)
        loss = counting_loss(x, t, mask, mse_weight=2.0)
        loss.backward()
        results.append((float(loss.detach()), x.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1])
    assert float(results[0][1][~mask].abs().max()) == 0.0
    assert float(results[0][1][mask].abs().max()) > 0.0


def test_matching_is_one_to_one_within_reach() -> None:
    truth = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]])
    found = np.array([[0.0, 1.0], [0.0, 2.0], [10.0, 14.0], [50.0, 50.0]])
    f, t = match_centres(found, truth, 5.0)
    assert sorted(zip(f.tolist(), t.tolist(), strict=True)) == [(0, 0), (2, 1)]
    assert localisation_f1(found, truth, 5.0) == pytest.approx(2 * 2 / 7)
    assert localisation_f1(np.zeros((0, 2)), np.zeros((0, 2)), 5.0) == 1.0


def test_centres_are_refined_below_the_pixel() -> None:
    from napari_cellsparse.counting.centres import find_centres
    from napari_cellsparse.counting.targets import heatmap_targets

    truth = np.array([[10.3, 20.7], [40.6, 12.2]])
    heat = heatmap_targets(truth, (64, 64), sigma=2.5)
    coarse = find_centres(heat, 0.5, 4)
    fine = find_centres(heat, 0.5, 4, refine=1.5 * 2.5)
    order = np.argsort(coarse[:, 0])
    assert np.allclose(coarse[order], np.round(truth))
    assert np.abs(fine[order] - truth).max() < 0.05


def test_centres_snap_to_the_centroid_of_their_cells_pixels() -> None:
    from skimage.draw import ellipse

    from napari_cellsparse.counting.centres import snap_to_foreground

    labels = np.zeros((120, 160), np.int32)
    labels[ellipse(40, 40, 9, 17, shape=labels.shape)] = 1  # elongated
    labels[ellipse(40, 95, 14, 14, shape=labels.shape)] = 2  # touches neither
    labels[ellipse(90, 60, 10, 16, rotation=0.6, shape=labels.shape)] = 3
    labels[ellipse(90, 86, 10, 12, shape=labels.shape)] = 4  # touches 3
    ids = np.arange(1, 5)
    truth = np.array(ndi.center_of_mass(labels > 0, labels, ids))
    rough = truth + np.array([[3.0, -5.0], [-4.0, 3.0], [2.5, 4.0], [-3.0, -2.0]])
    snapped = snap_to_foreground(rough, labels > 0, diameter=28.0)
    assert np.abs(rough - truth).max(axis=1).min() >= 2.0
    assert np.linalg.norm(snapped - truth, axis=1).max() < 1.5, snapped - truth
    # A centre whose share is mostly a cell it is not on (more than 0.3 diameters away) stays.
    lonely = np.array([[40.0, 40.0]])
    far = snap_to_foreground(lonely, labels == 2, diameter=28.0, reach=3.0)
    assert np.array_equal(far, lonely)
    assert np.array_equal(snap_to_foreground(rough, np.zeros_like(labels, bool), 28.0), rough)


def test_a_centre_alone_on_a_cell_larger_than_the_typical_one_snaps_to_all_of_it() -> None:
    """The heat map places the centres of large, elongated nuclei roughly (a fifth of a
    diameter off); the snap must take in the cell's far end too, not only its near part."""
    from skimage.draw import ellipse

    from napari_cellsparse.counting.centres import snap_to_foreground

    cell = np.zeros((100, 140), bool)
    cell[ellipse(50, 70, 12, 21, shape=cell.shape)] = True  # 42 px long, typical diameter 28
    truth = np.array(ndi.center_of_mass(cell))
    rough = truth[None] + np.array([[1.0, 6.0]])
    snapped = snap_to_foreground(rough, cell, diameter=28.0)
    assert np.linalg.norm(snapped[0] - truth) < 0.5, snapped[0] - truth


def test_two_bumps_of_one_ridge_are_one_centre_touching_cells_stay_two() -> None:
    """A large nucleus read too small shows the network two low bumps of one ridge; two
    touching cells give two peaks with the heat map falling near zero between them."""
    from napari_cellsparse.counting.centres import find_centres

    yy, xx = np.mgrid[:64, :96]

    def bump(y: float, x: float, sigma: float) -> np.ndarray:
        return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2.0 * sigma**2))

    ridge = bump(32, 20, 4.5) + 0.9 * bump(32, 32, 4.5)  # dips by a sixth between
    pair = bump(32, 62, 8.0 / 3.0) + 0.9 * bump(32, 78, 8.0 / 3.0)  # dips to nearly zero
    heat = ridge + pair
    assert len(find_centres(heat, 0.3, 8)) == 4
    found = find_centres(heat, 0.3, 8, refine=4.0, prominence=0.25)
    assert len(found) == 3, found
    assert np.abs(found[np.argmin(found[:, 1])] - (32, 21)).max() < 2.0
    assert sorted(np.round(found[:, 1]).astype(int).tolist())[1:] == [62, 78]


def _neck_pair(shape: tuple[int, int] = (60, 100)) -> tuple[np.ndarray, np.ndarray]:
    """Two discs of 20 px joined by a 4 px bridge (one foreground region, two cells), and
    their true centres."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = np.array([[30.0, 30.0], [30.0, 52.0]])
    mask = np.zeros(shape, bool)
    for y, x in centres:
        mask |= (yy - y) ** 2 + (xx - x) ** 2 <= 10.0**2
    mask[28:33, 30:52] = True
    return mask, centres


def test_a_cell_touching_a_counted_one_across_a_neck_gets_a_centre() -> None:
    from napari_cellsparse.counting.centres import fill_empty_pieces, foreground_pieces

    mask, truth = _neck_pair()
    mask[5:8, 80:83] = True  # a speck of 9 px: under half a cell, no centre
    pieces = foreground_pieces(mask, 20.0)
    assert len(np.unique(pieces[mask])) == 3
    given = truth[:1] + 1.0
    filled = fill_empty_pieces(given, pieces, 20.0)
    assert len(filled) == 2 and np.array_equal(filled[0], given[0])
    assert np.linalg.norm(filled[1] - truth[1]) < 1.5, filled
    assert np.array_equal(fill_empty_pieces(filled, pieces, 20.0), filled)


def test_a_centre_alone_on_its_piece_takes_the_pieces_centroid() -> None:
    from napari_cellsparse.counting.centres import foreground_pieces, snap_to_foreground

    mask, truth = _neck_pair()
    rough = truth[:1] + np.array([[3.0, 4.0]])
    pieces = foreground_pieces(mask, 20.0)
    on_piece = snap_to_foreground(rough, pieces, diameter=20.0)
    on_region = snap_to_foreground(rough, mask, diameter=20.0)
    assert np.linalg.norm(on_piece[0] - truth[0]) < 1.0, on_piece
    assert np.linalg.norm(on_region[0] - truth[0]) > 2.0, on_region


def test_peaks_and_density_count_only_near_the_cell_foreground() -> None:
    from napari_cellsparse.counting.centres import cell_support
    from napari_cellsparse.counting.counter import Counter, CounterConfig
    from napari_cellsparse.counting.targets import heatmap_targets

    config = CounterConfig(sigma=8.0 / 3.0, peak_threshold=0.3)
    counter = Counter(None, config, 1, "cpu")
    cells = np.array([[20.0, 20.0], [20.0, 60.0], [60.0, 20.0], [60.0, 60.0], [100.0, 40.0]])
    stray = np.array([[100.0, 100.0]])  # a peak on background, as on a faint speck
    heat = heatmap_targets(np.concatenate([cells, stray]), (128, 128), sigma=config.sigma)
    yy, xx = np.mgrid[:128, :128]
    foreground = np.zeros((128, 128), bool)
    for y, x in cells:
        foreground |= (yy - y) ** 2 + (xx - x) ** 2 <= 8.0**2
    near = cell_support(foreground, 16.0)
    assert near[foreground].all() and near[20, 32] and not near[20, 33]
    support = counter.support(heat, foreground, 16.0)
    found = counter.centres(heat, support=support)
    assert len(counter.centres(heat)) == 6
    assert np.allclose(np.sort(found, axis=0), np.sort(cells, axis=0), atol=0.5)
    assert counter.density(heat).sum() == pytest.approx(6.0, rel=0.03)
    assert counter.density(heat, support).sum() == pytest.approx(5.0, rel=0.03)
    # A foreground that would remove over a third of the density missed cells: not used.
    assert counter.support(heat, foreground & (yy < 40), 16.0) is None
    assert counter.support(heat, None, 16.0) is None


def _ideal_heatmap(image: np.ndarray) -> np.ndarray:
    """A stand-in for a trained network: a unit peak on each bright blob 6-40 px wide (the
    canonical cell is 16 px), none on smaller or larger ones."""
    from napari_cellsparse.counting.targets import heatmap_targets

    labels, n = ndi.label(image.mean(-1) > 0.5)
    ids = np.arange(1, n + 1)
    width = 2.0 * np.sqrt(np.asarray(ndi.sum(np.ones(labels.shape), labels, ids)) / np.pi)
    centres = np.array(ndi.center_of_mass(labels > 0, labels, ids)).reshape(-1, 2)
    keep = (width >= 6) & (width <= 40)
    return heatmap_targets(centres[keep], labels.shape, 8.0 / 3.0)


def test_images_of_large_cells_are_read_again_for_small_ones() -> None:
    from napari_cellsparse.counting.counter import Counter, CounterConfig

    yy, xx = np.mgrid[:240, :240]
    image = np.zeros((240, 240), np.float32)
    large = np.array([[60.0, 60], [60, 170], [170, 60], [170, 170]])
    small = np.array([[115.0, 115], [20, 115], [215, 115]])
    for (y, x), r in [(c, 24) for c in large] + [(c, 6) for c in small]:
        image[(yy - y) ** 2 + (xx - x) ** 2 <= r**2] = 1.0
    config = CounterConfig(sigma=8.0 / 3.0, peak_threshold=0.3, test_time_augmentation=False)
    results = {}
    for flag in (False, True):
        counter = Counter(None, config.with_settings(small_cells=flag), 1, "cpu")
        counter.heatmap = _ideal_heatmap  # read at 1/3, 12 px cells are 4 px: unseen
        results[flag] = counter.count(image, diameter=48.0)
    plain, both = results[False], results[True]
    assert len(plain.centres) == 4 and plain.count == pytest.approx(4.0, rel=0.02)
    # The second reading (at 2/3) sees the small cells; its peaks on the large ones, whose
    # regions already hold a centre, are not added.
    assert len(both.centres) == 7 and both.count == pytest.approx(7.0, rel=0.02)
    assert both.density.sum() == pytest.approx(both.count, rel=0.01)
    for group in (large, small):
        gap = np.linalg.norm(both.centres[:, None] - group[None], axis=-1).min(axis=0)
        assert gap.max() < 1.0, gap
    alone = Counter(
        None, config.with_settings(foreground_gate=False, snap_to_foreground=False), 1, "cpu"
    )
    alone.heatmap = _ideal_heatmap
    assert len(alone.count(image, diameter=48.0).centres) == 7


def test_count_is_the_centres_plus_the_density_none_of_them_accounts_for() -> None:
    # A network trained on a few rough points draws its peaks lower and wider than the
    # targets: their density's sum over-counts; a faint cell gives density but no peak.
    from napari_cellsparse.counting.counter import Counter, CounterConfig
    from napari_cellsparse.counting.targets import heatmap_targets

    config = CounterConfig(
        sigma=8.0 / 3.0, peak_threshold=0.3, test_time_augmentation=False, foreground_gate=False
    )
    cells = np.array([[20.0, 20.0], [20.0, 50.0], [50.0, 20.0], [50.0, 50.0], [80.0, 35.0]])
    faint = np.array([[100.0, 100.0]])
    wide = 0.6 * heatmap_targets(cells, (128, 128), sigma=1.5 * config.sigma)
    dim = 0.25 * heatmap_targets(faint, (128, 128), sigma=2.0 * config.sigma)

    def read(flag: bool, heat: np.ndarray) -> tuple[float, float, int]:
        counter = Counter(None, config.with_settings(centre_count=flag), 1, "cpu")
        counter.heatmap = lambda image: heat
        result = counter.count(np.zeros((128, 128), np.float32), diameter=16.0)
        return result.count, float(result.density.sum()), len(result.centres)

    count, mass, found = read(True, wide)
    assert found == 5 and mass > 5.5  # the density alone says 6 or more
    assert count == pytest.approx(5.0, abs=0.15)
    count, mass, found = read(True, np.maximum(wide, dim))
    assert found == 5 and count == pytest.approx(6.0, abs=0.2)  # the faint cell's density
    count, mass, _ = read(False, wide)
    assert count == pytest.approx(mass) and count > 5.5


def test_training_images_are_read_at_their_blob_scale_when_the_points_agree() -> None:
    # A few rough clicks read the cell size to +-20 %; the image's blob scale, over all its
    # cells, is steadier. Points that agree with it within 30 % leave it as it is.
    from napari_cellsparse.core.images import normalize
    from napari_cellsparse.counting.config import CounterConfig
    from napari_cellsparse.counting.training_data import calibrate
    from napari_cellsparse.models.scale import foreground_diameter

    rng = np.random.default_rng(5)
    images, points, found = [], [], []
    for seed in range(3):
        image, labels = make_nuclei((192, 192), n_objects=30, radius=(6.0, 6.0), seed=seed)
        ids = np.arange(1, labels.max() + 1)
        centres = np.array(ndi.center_of_mass(labels > 0, labels, ids))[:5]
        images.append(normalize(image[..., None]))
        points.append(centres + rng.uniform(-3.0, 3.0, centres.shape))
        found.append(foreground_diameter(images[-1], 1.0))
    config, diameters = calibrate(CounterConfig(), images, points)
    assert config.diameter_calibration == 1.0
    assert diameters == pytest.approx(found)
    # Where the blob scale reads cells of another size (texture breaks tissue into
    # fragments; here a third), the points calibrate it and read the images themselves.
    from napari_cellsparse.counting import training_data

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_data, "foreground_diameter", lambda img, p: 12.0 / 3.0)
        config, diameters = calibrate(CounterConfig(), images, points)
    assert 2.4 <= config.diameter_calibration <= 3.6
    assert all(9.0 <= d <= 15.0 for d in diameters), diameters
    assert training_data._image_diameter(30.0, 10.0, 1.0) == 30.0  # points disagree
    assert training_data._image_diameter(None, 10.0, 2.0) == 20.0  # too few points


def test_diameter_is_read_at_the_given_points() -> None:
    from napari_cellsparse.core.images import normalize
    from napari_cellsparse.counting.targets import points_diameter

    for radius in (5.0, 15.0):
        image, labels = make_nuclei((384, 384), n_objects=25, radius=(radius, radius), seed=3)
        ids = np.arange(1, labels.max() + 1)
        centres = np.array(ndi.center_of_mass(labels > 0, labels, ids))
        areas = np.bincount(labels.ravel())[1:]
        true = 2.0 * np.sqrt(np.median(areas[areas > 0]) / np.pi)
        found = points_diameter(normalize(image[..., None]), centres[:8], polarity=1.0)
        assert found == pytest.approx(true, rel=0.25), (found, true)
    assert points_diameter(normalize(image[..., None]), centres[:2], 1.0) is None


def test_test_time_augmentation_is_equivariant_to_flips_and_turns() -> None:
    from napari_cellsparse.counting.counter import CounterConfig
    from napari_cellsparse.counting.network import build_network, heatmap

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = build_network({**CounterConfig().to_dict(), **TINY}, 1)
    image = np.random.default_rng(0).random((64, 96, 1), dtype=np.float32)
    plain = heatmap(net, image, 8, "cpu")
    assert not np.allclose(heatmap(net, image[::-1].copy(), 8, "cpu")[::-1], plain, atol=1e-4)
    averaged = heatmap(net, image, 8, "cpu", augment=True)
    for view, back in (
        (lambda a: a[::-1], lambda a: a[::-1]),
        (lambda a: np.rot90(a), lambda a: np.rot90(a, -1)),
    ):
        turned = heatmap(net, np.ascontiguousarray(view(image)), 8, "cpu", augment=True)
        assert np.allclose(back(turned), averaged, atol=1e-5)


def test_every_given_point_is_an_equally_likely_crop_centre() -> None:
    from napari_cellsparse.counting.patches import CountingData

    # a crop from the small image is recognisable by its pixels (all 1)
    big, small = np.zeros((400, 400, 1), np.float32), np.ones((64, 64, 1), np.float32)
    data = CountingData(
        [big, small],
        [np.zeros(big.shape[:2], np.float32), np.zeros(small.shape[:2], np.float32)],
        [np.ones(big.shape[:2], np.float32), np.zeros(small.shape[:2], np.float32)],
        [np.array([[200.0, 200.0]]), np.full((9, 2), 32.0)],
    )
    rng = np.random.default_rng(0)
    from_small = sum(int(data.sample(rng, 1, 32, augment=False)[0].max() > 0) for _ in range(2000))
    # half the crops are point-centred (9 of 10 points in the small image); the others
    # follow the trusted pixels, all in the big image
    assert from_small / 2000 == pytest.approx(0.5 * 0.9, abs=0.04)


def test_network_reads_the_scale_when_the_estimate_is_far_off(counter) -> None:
    from napari_cellsparse.core.images import normalize

    image, labels = make_nuclei((256, 256), n_objects=30, radius=(5.0, 7.0), seed=4)
    normalized = normalize(image[..., None])
    areas = np.bincount(labels.ravel())[1:]
    true = 2.0 * np.sqrt(np.median(areas[areas > 0]) / np.pi)
    near = counter.network_diameter(normalized, true * 1.2)
    assert near == pytest.approx(true * 1.2)  # small corrections are left alone
    # read 4x too large, cells shrink to dots that the network hardly answers; at their
    # own size its peaks are clearly higher
    read = counter.network_diameter(normalized, true * 4.0)
    assert true / 2.0 <= read <= true * 2.0, (read, true)


def test_training_recovers_the_count_of_generated_nuclei(counter) -> None:
    image, centres, _ = nuclei(seed=2)
    result = counter.count(image)
    assert result.density.dtype == np.float32 and result.density.shape == image.shape
    assert result.count >= len(result.centres)
    assert abs(result.count - len(centres)) <= 0.1 * len(centres), (result.count, len(centres))
    assert localisation_f1(result.centres, centres, 4.0) >= 0.8
    assert result.centres.shape[1] == 2


def test_points_only_on_the_brightest_cells_still_count_all_cells(tmp_path, monkeypatch) -> None:
    # A person clicks the cells that stand out: the given points are no fair sample.
    from napari_cellsparse.counting import train_counter

    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    image, labels = make_nuclei((160, 160), n_objects=24, radius=(5.0, 7.0), seed=1)
    ids = np.arange(1, labels.max() + 1)
    centres = np.array(ndi.center_of_mass(labels > 0, labels, ids))
    brightness = np.asarray(ndi.mean(image, labels, ids))
    order = np.argsort(brightness)
    given = centres[order[-len(ids) // 3 :]]  # the brightest third
    assert (
        brightness[order[-len(ids) // 3 :]].mean()
        > 1.3 * brightness[order[: -len(ids) // 3]].mean()
    )
    background = ndi.distance_transform_edt(labels == 0) > 6
    biased = train_counter(
        [image], [given], name="bright", background=[background], steps=150, **TINY
    )
    test_image, test_centres, _ = nuclei(seed=2)
    count = biased.count(test_image).count
    assert abs(count - len(test_centres)) <= 0.1 * len(test_centres), (count, len(test_centres))


def test_save_load_round_trip_and_the_store(counter, monkeypatch) -> None:
    from napari_cellsparse.counting import load_counter
    from napari_cellsparse.training import list_models, load_model

    monkeypatch.setenv(HOME_ENV, str(counter.folder.parent.parent))
    assert {"name": "tiny", "backend": "counter"}.items() <= list_models()[0].items()
    loaded = load_counter("tiny")
    assert loaded.config == counter.config and loaded.n_channels == 1
    image, _, _ = nuclei(seed=3)
    a, b = counter.count(image), loaded.count(image)
    assert a.count == pytest.approx(b.count, rel=1e-5)
    np.testing.assert_array_equal(a.centres, b.centres)
    with pytest.raises(BadInputError, match="cell counter"):
        load_model("tiny")
    with pytest.raises(BadInputError, match="channel"):
        loaded.count(np.zeros((32, 32, 2), np.float32))


def test_bad_training_input_is_refused() -> None:
    from napari_cellsparse.counting import train_counter

    image, centres, background = nuclei(seed=4, shape=(64, 64), n=4)
    with pytest.raises(BadInputError, match="No points"):
        train_counter([image], [np.zeros((0, 2))], name="x", steps=1)
    with pytest.raises(BadInputError, match="outside"):
        train_counter([image], [centres + 100], name="x", steps=1)
    with pytest.raises(BadInputError, match="background mask"):
        train_counter([image], [centres], name="x", background=[background[:10]], steps=1)
    with pytest.raises(BadInputError, match="Unknown counter setting"):
        train_counter([image], [centres], name="x", steps=1, colour="red")


def test_cancel_saves_and_training_continues() -> None:
    from napari_cellsparse.counting import load_counter, train_counter
    from napari_cellsparse.training import list_models

    image, centres, background = nuclei(seed=5, shape=(64, 64), n=4)
    cancel = threading.Event()
    seen: list[int] = []

    def progress(step: int, total: int, info: dict) -> None:
        seen.append(step)
        if step == 2:
            cancel.set()

    stopped = train_counter(
        image,
        centres,
        name="c",
        background=background,
        steps=5,
        progress=progress,
        cancel=cancel,
        **TINY,
    )
    assert seen == [1, 2] and stopped.info["stopped_early"] is True
    assert list_models()[0]["steps"] == 2
    train_counter(image, centres, name="c", background=background, steps=1, **TINY)
    meta = list_models()[0]
    assert meta["steps"] == 3 and len(meta["sessions"]) == 2
    assert load_counter("c").config.train_diameter == stopped.config.train_diameter
    train_counter(image, centres, name="c", steps=1, reset=True, **TINY)
    assert list_models()[0]["steps"] == 1


def test_batch_writes_counts_overlays_and_reports_bad_files(counter, tmp_path: Path) -> None:
    import tifffile
    from PIL import Image

    from napari_cellsparse.counting import count_folder

    folder = tmp_path / "images"
    folder.mkdir()
    for seed in (6, 7):
        tifffile.imwrite(folder / f"cells_{seed}.tif", nuclei(seed=seed)[0])
    rgb = np.repeat((nuclei(seed=8)[0] // 256).astype(np.uint8)[..., None], 3, axis=-1)
    Image.fromarray(rgb).save(folder / "cells_8.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.tif").write_bytes(b"II*\x00 this is not a TIFF")
    out = tmp_path / "out"
    events = []
    result = count_folder(counter, folder, out, progress=events.append)

    assert sorted(Path(k).name for k in result.counts) == [
        "cells_6.tif",
        "cells_7.tif",
        "cells_8.png",
    ]
    assert sorted(Path(k).name for k in result.errors) == ["broken.tif", "notes.txt"]
    assert "not an image" in result.errors[str(folder / "notes.txt")]
    assert "broken.tif" in result.errors[str(folder / "broken.tif")]
    counts = json.loads((out / "counts.json").read_text())
    assert counts == pytest.approx(result.counts)
    rows = (out / "counts.csv").read_text().splitlines()
    assert rows[0] == "image,count,n_centres,doubt" and len(rows) == 4
    overlays = sorted(p.name for p in out.glob("*_count.png"))
    assert overlays == ["cells_6_count.png", "cells_7_count.png", "cells_8_count.png"]
    with Image.open(out / "cells_6_count.png") as png:
        assert png.mode == "RGB" and png.width >= 160
    assert events[-1].message.startswith("Writing") and len(events) == 6
    assert not list(out.glob(".*"))  # every file was written through a temporary name


def test_cli_trains_from_a_points_csv_and_counts_a_folder(tmp_path: Path, capsys) -> None:
    import tifffile

    from napari_cellsparse.cli import main
    from napari_cellsparse.training import list_models

    image, centres, background = nuclei(seed=9, shape=(80, 80), n=6)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "bg.tif", background.astype(np.uint8))
    rows = ["index,axis-0,axis-1"] + [f"{i},{y},{x}" for i, (y, x) in enumerate(centres[:3])]
    (tmp_path / "points.csv").write_text("\n".join(rows) + "\n")
    tiny = [f"{k}={v}" for k, v in TINY.items()]
    args = ["count", "--image", str(tmp_path / "img.tif"), "--points", str(tmp_path / "points.csv")]
    args += ["--background", str(tmp_path / "bg.tif"), "--name", "cli", "--steps", "2"]
    assert main([*args, "--set", *tiny]) == 0
    assert "trained counter 'cli': 2 steps" in capsys.readouterr().out
    assert list_models()[0]["backend"] == "counter"
    folder = tmp_path / "plate"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image)
    (folder / "b.txt").write_text("x")
    out = tmp_path / "out"
    assert main(["count", "--model", "cli", "--input", str(folder), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "counted 1 image(s)" in captured.out and "b.txt" in captured.err
    assert {p.name for p in out.iterdir()} == {"counts.json", "counts.csv", "a_count.png"}
    assert main(["count", "--model", "cli", "--input", str(folder / "a.tif")]) == 0
    assert "centres" in capsys.readouterr().out
    assert main(["count", "--image", str(tmp_path / "img.tif")]) == 2  # no --points


def test_threshold_tuning_takes_the_lowest_level_within_two_detections_of_the_best() -> None:
    from napari_cellsparse.counting.train import choose_threshold

    # (level, tp, fp, fn, found), as tuned in a user-story run: two background peaks
    # fewer at 0.3 are chance, the lower levels found the same points.
    same = [(level, 27, 2, 7, 29) for level in (0.03, 0.05, 0.1, 0.2)]
    table = [*same, (0.3, 27, 0, 7, 27), (0.4, 24, 0, 10, 24), (0.5, 0, 0, 34, 0)]
    level, f1, found = choose_threshold(table)
    assert level == 0.03 and f1 == pytest.approx(54 / 63) and found == 29
    # Many peaks on the background at low levels are no chance: a higher level wins.
    noisy = [(0.03, 27, 12, 7, 39), (0.1, 27, 6, 7, 33), (0.2, 27, 0, 7, 27), (0.3, 25, 0, 9, 25)]
    assert choose_threshold(noisy)[0] == 0.2


class _ConstantCrops:
    """Training data whose every crop is the same, so that two sessions take the same steps."""

    def sample(self, rng, batch_size: int, patch: int):
        x = np.linspace(0, 1, batch_size * patch * patch, dtype=np.float32)
        x = x.reshape(batch_size, 1, patch, patch)
        return x, np.full_like(x, 0.5), np.ones_like(x)


def test_counter_training_ends_on_the_mean_of_its_last_steps() -> None:
    """With ``average_tail`` the counter's weights after the last step are the mean of those
    after each of the last steps; the steps themselves are the same as without it."""
    import copy
    from types import SimpleNamespace

    import torch

    from napari_cellsparse.counting.config import CounterConfig
    from napari_cellsparse.counting.train import _steps

    torch.manual_seed(0)
    start = torch.nn.Conv2d(1, 1, 3, padding=1)
    annotation = SimpleNamespace(data=_ConstantCrops())

    def session(**settings) -> list[torch.Tensor]:
        net = copy.deepcopy(start)
        config = CounterConfig(batch_size=2, patch_size=8, **settings)
        rng = np.random.default_rng(0)
        return [net.weight.detach().clone() for _ in _steps(net, annotation, config, 4, rng, "cpu")]

    plain = session(one_cycle=False)
    averaged = session(one_cycle=False, average_tail=0.5)
    assert all(torch.equal(a, p) for a, p in zip(averaged[:3], plain[:3], strict=True))
    assert torch.allclose(averaged[3], (plain[2] + plain[3]) / 2)
    assert not torch.allclose(averaged[3], plain[3])
    assert not torch.allclose(session(one_cycle=True)[3], plain[3])  # the rate is a setting


def test_a_count_mostly_without_centres_is_doubted() -> None:
    from napari_cellsparse.counting.counter import CountResult

    def result(count: float, centres: int) -> CountResult:
        return CountResult(count, np.zeros((centres, 2)), np.zeros((8, 8), np.float32))

    assert result(60.4, 58).doubt is None  # a trained counter's few faint cells
    assert result(2.9, 1).doubt is None  # too few cells without a centre to judge
    doubt = result(128.7, 59).doubt  # an undertrained counter (the demo after 40 steps)
    assert doubt is not None and "69.7 of the count 128.7" in doubt


def test_a_folder_count_keeps_each_images_doubt(counter, tmp_path: Path, monkeypatch) -> None:
    import csv

    import tifffile

    from napari_cellsparse.counting import count_folder
    from napari_cellsparse.counting.counter import Counter, CountResult

    folder = tmp_path / "images"
    folder.mkdir()
    for seed in (6, 7):
        tifffile.imwrite(folder / f"cells_{seed}.tif", nuclei(seed=seed)[0])
    seventh_image = nuclei(seed=7)[0]
    real = Counter.count

    def density_heavy(self, image, diameter=None):  # cells_7: 20 cells of density, no centre
        found = real(self, image, diameter)
        extra = 20.0 if np.array_equal(image, seventh_image) else 0.0
        return CountResult(found.count + extra, found.centres, found.density, found.diameter)

    monkeypatch.setattr(Counter, "count", density_heavy)
    result = count_folder(counter, folder, tmp_path / "out")

    seventh = str(folder / "cells_7.tif")
    assert list(result.doubts) == [seventh] and "without a centre" in result.doubts[seventh]
    with (tmp_path / "out" / "counts.csv").open(newline="") as fh:
        rows = {row["image"]: row for row in csv.DictReader(fh)}
    assert rows[seventh]["doubt"] == result.doubts[seventh]
    assert rows[str(folder / "cells_6.tif")]["doubt"] == ""
