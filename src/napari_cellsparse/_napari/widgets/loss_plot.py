"""A tiny live loss curve drawn with QPainter (no plotting library)."""

from __future__ import annotations

from qtpy.QtCore import QPointF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

__all__ = ["LossPlot"]

MARGIN = 6


class LossPlot(QWidget):
    """The training loss against the step, rescaled to fit; the last value is written on it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.setMinimumHeight(70)
        self.setToolTip("Training loss per step (lower is better)")

    def sizeHint(self) -> QSize:
        return QSize(240, 90)

    def clear(self) -> None:
        """Forget every point (a new training session)."""
        self.steps.clear()
        self.losses.clear()
        self.update()

    def add(self, step: int, loss: float) -> None:
        """Append one point and repaint."""
        self.steps.append(int(step))
        self.losses.append(float(loss))
        self.update()

    def paintEvent(self, _event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        painter.fillRect(0, 0, w, h, QColor(20, 20, 24))
        painter.setPen(QPen(QColor(90, 90, 100), 1))
        painter.drawRect(0, 0, w - 1, h - 1)
        finite = [(s, v) for s, v in zip(self.steps, self.losses, strict=True) if v == v]
        painter.setPen(QColor(170, 170, 180))
        if not finite:
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "loss")
            painter.end()
            return
        lo = min(v for _, v in finite)
        hi = max(v for _, v in finite)
        first, last = finite[0][0], finite[-1][0]
        span_x = max(last - first, 1)
        span_y = hi - lo if hi > lo else 1.0
        x0, y0 = MARGIN, MARGIN + 12
        pw, ph = max(w - 2 * MARGIN, 1), max(h - y0 - MARGIN, 1)
        points = QPolygonF(
            [
                QPointF(x0 + pw * (s - first) / span_x, y0 + ph * (1.0 - (v - lo) / span_y))
                for s, v in finite
            ]
        )
        painter.drawText(
            MARGIN,
            2,
            w - 2 * MARGIN,
            14,
            int(Qt.AlignmentFlag.AlignLeft),
            f"loss {finite[-1][1]:.4g} (step {last})",
        )
        painter.drawText(
            MARGIN,
            2,
            w - 2 * MARGIN,
            14,
            int(Qt.AlignmentFlag.AlignRight),
            f"{lo:.3g}–{hi:.3g}",
        )
        painter.setPen(QPen(QColor(255, 170, 40), 1.5))
        painter.drawPolyline(points)
        painter.end()
