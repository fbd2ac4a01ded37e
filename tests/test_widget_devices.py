"""The widgets' device choice: auto and cpu at once, the rest from the model worker, once."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui

pytest.importorskip("napari")
pytest.importorskip("torch")


@pytest.fixture
def fresh():
    """No answer and no shared worker left by an earlier test; the worker stopped afterwards."""
    from napari_cellsparse._napari.widgets import _devices, _worker

    _devices._ANSWER.clear()
    _worker._stop_host()
    yield _devices
    _devices._ANSWER.clear()
    _worker._stop_host()


def test_device_combos_offer_auto_and_cpu_then_the_workers_devices(fresh, qtbot) -> None:
    from napari_cellsparse._napari.widgets._devices import DeviceCombo
    from napari_cellsparse._napari.widgets._worker import shared_host
    from napari_cellsparse.core.devices import available_devices

    first = DeviceCombo()
    qtbot.addWidget(first)
    items = [first.itemText(i) for i in range(first.count())]
    assert items == ["auto", "cpu"] and not shared_host().alive  # nothing asked yet
    first.setCurrentText("cpu")
    first.showPopup()  # the first opening asks the worker, without waiting for it
    first.hidePopup()
    qtbot.waitUntil(lambda: bool(fresh._ANSWER) and not fresh._ASKING, timeout=60_000)
    expected = ["auto", "cpu", *available_devices()]
    assert [first.itemText(i) for i in range(first.count())] == list(dict.fromkeys(expected))
    assert first.currentText() == "cpu"  # the choice is kept
    pid = shared_host().pid
    second = DeviceCombo()  # made later: the answer at once, no second question
    qtbot.addWidget(second)
    second.showPopup()
    second.hidePopup()
    assert not fresh._ASKING and shared_host().pid == pid
    assert [second.itemText(i) for i in range(second.count())] == list(dict.fromkeys(expected))


def test_an_answer_reaches_every_open_combo_without_duplicates(fresh, qtbot) -> None:
    from napari_cellsparse._napari.widgets._devices import DeviceCombo, learn

    combos = [DeviceCombo(), DeviceCombo()]
    for combo in combos:
        qtbot.addWidget(combo)
    learn(["cuda", "cpu"])
    for combo in combos:
        assert [combo.itemText(i) for i in range(combo.count())] == ["auto", "cpu", "cuda"]


def test_an_answer_skips_combos_whose_widget_was_deleted(fresh, qtbot) -> None:
    """A widget closed earlier (its Qt object gone, the Python wrapper still referenced)."""
    from qtpy import sip

    from napari_cellsparse._napari.widgets._devices import DeviceCombo, learn

    gone, kept = DeviceCombo(), DeviceCombo()
    qtbot.addWidget(kept)
    sip.delete(gone)
    learn(["cuda", "cpu"])
    assert [kept.itemText(i) for i in range(kept.count())] == ["auto", "cpu", "cuda"]
    with pytest.raises(RuntimeError):
        gone.count()
