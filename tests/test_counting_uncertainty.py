"""Where to click next for a counter: its 8 views' disagreement, ranked by cell.

A counter whose network is not rotation-equivariant (its response rises left to right in
each view) finds a faint cell in some views only; bright cells in all. The faint cell must
come first; given points and painted background are known and left out.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_cellsparse.core.errors import BadInputError  # noqa: E402
from napari_cellsparse.counting.counter import Counter, CounterConfig  # noqa: E402
from napari_cellsparse.counting.uncertainty import group_centres, where_to_click  # noqa: E402

BRIGHT = np.array([[30.0, 30.0], [30.0, 98.0], [98.0, 30.0], [98.0, 98.0]])
FAINT = np.array([64.0, 40.0])


class _Ramp(torch.nn.Module):
    """Logits of the image's first channel times a left-to-right ramp (0.5 .. 1.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0.5, 1.5, x.shape[-1])
        heat = (x[:, :1] * ramp).clamp(1e-4, 1.0 - 1e-4)
        return torch.log(heat / (1.0 - heat))


def _image() -> np.ndarray:
    yy, xx = np.mgrid[:128, :128]
    image = np.zeros((128, 128), np.float32)
    for (y, x), height in zip([*BRIGHT, FAINT], [1.0] * 4 + [0.32], strict=True):
        image += height * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2.0 * 2.7**2))
    return image


def _counter() -> Counter:
    config = CounterConfig(
        sigma=8.0 / 3.0, peak_threshold=0.3, foreground_gate=False, snap_to_foreground=False
    )
    return Counter(_Ramp(), config, 1, "cpu")


def test_a_cell_only_some_views_find_ranks_first() -> None:
    result = where_to_click(_counter(), _image(), diameter=16.0)
    first = result.places[0]
    assert np.hypot(first.y - FAINT[0], first.x - FAINT[1]) < 3.0, result.places
    assert 0 < first.views < 8 and first.score > 0.0
    bright = [p for p in result.places if np.hypot(p.y - FAINT[0], p.x - FAINT[1]) > 8.0]
    assert len(bright) == 4 and all(p.views == 8 and p.score == 0.0 for p in bright)
    assert result.map.shape == (128, 128) and 0.0 <= result.map.min() <= result.map.max() <= 1.0
    assert result.map[int(FAINT[0]), int(FAINT[1])] > result.map[5, 5]


def test_given_points_and_painted_background_are_left_out() -> None:
    background = np.zeros((128, 128), bool)
    background[:50, :50] = True  # over the first bright cell
    result = where_to_click(
        _counter(), _image(), points=FAINT[None] + 2.0, background=background, diameter=16.0
    )
    left = {(round(p.y), round(p.x)) for p in result.places}
    assert len(left) == 3 and (30, 30) not in left
    assert all(np.hypot(y - FAINT[0], x - FAINT[1]) > 8.0 for y, x in left)
    assert result.map[background].max() == 0.0


def test_centres_of_different_views_group_by_distance() -> None:
    views = [np.array([[10.0, 10.0], [40.0, 40.0]]), np.array([[11.0, 10.5]]), np.zeros((0, 2))]
    groups = sorted(group_centres(views, 4.0))
    assert [g[2] for g in groups] == [2, 1]
    assert groups[0][:2] == pytest.approx((10.5, 10.25))
    assert group_centres([np.zeros((0, 2))] * 8, 4.0) == []


def test_bad_input_is_a_clear_message() -> None:
    with pytest.raises(BadInputError, match="diameter"):
        where_to_click(_counter(), _image(), diameter=-1.0)
    with pytest.raises(BadInputError, match="background"):
        where_to_click(_counter(), _image(), background=np.zeros((5, 5), bool), diameter=16.0)


def test_a_flat_image_has_no_place_and_a_wrong_channel_count_is_a_message() -> None:
    flat = where_to_click(_counter(), np.full((64, 64), 7.0, np.float32), diameter=16.0)
    assert flat.places == () and flat.map.shape == (64, 64) and not flat.map.any()
    with pytest.raises(BadInputError, match="channel"):
        where_to_click(_counter(), np.zeros((64, 64, 2), np.float32), diameter=16.0)
