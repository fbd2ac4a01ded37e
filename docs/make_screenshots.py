"""Screenshots of the SAM annotator in use, for docs/ (run under Xvfb: ``make docs``).

With ``--weights FILE`` (a real SAM checkpoint) every object comes from SAM. Without one
(no weights can be downloaded on a build machine), a checkpoint of randomly initialised
MobileSAM is made so the real encoder and decoder run, but their noise masks are replaced by
the sample's ground-truth object under each box; the caption file says so.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def _stand_in_boxes(prompter, truth):
    """Run the real decoder, then return the ground-truth object under each box."""
    from napari_cellsparse.sam.upsample import PromptMask

    real = prompter.boxes

    def boxes(boxes, multimask=False):
        results = real(boxes, multimask)
        out = []
        for (x0, y0, x1, y1), result in zip(np.asarray(boxes), results, strict=True):
            ids, counts = np.unique(truth[int(y0) : int(y1), int(x0) : int(x1)], return_counts=True)
            counts[ids == 0] = 0
            obj = truth == ids[counts.argmax()]
            rows, cols = np.flatnonzero(obj.any(1)), np.flatnonzero(obj.any(0))
            crop = obj[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            out.append(PromptMask(crop, int(rows[0]), int(cols[0]), result.score, truth.shape))
        return out

    prompter.boxes = boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", help="a real vit_t checkpoint (mobile_sam.pt)")
    parser.add_argument("--out", default=str(HERE / "images"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    weights = args.weights
    if weights is None:
        import torch

        from napari_cellsparse.sam.models import build_sam

        torch.manual_seed(0)
        weights = str(Path(tempfile.mkdtemp()) / "vit_t_random.pt")
        torch.save(build_sam("vit_t").state_dict(), weights)

    from qtpy.QtWidgets import QApplication

    from napari_cellsparse.demo import open_demo
    from napari_cellsparse.samples import load_sample

    viewer, (widget, *_) = open_demo()
    viewer.window._qt_window.resize(1400, 850)
    widget.weights_edit.setText(weights)
    widget.runner.synchronous = True
    widget.compute_embedding()
    if args.weights is None:
        _stand_in_boxes(widget.state.prompter, load_sample("nuclei").labels)
    widget.segment_all_boxes()
    viewer.layers.selection.active = viewer.layers["SAM annotation"]
    QApplication.processEvents()
    shot = out / "sam_annotator.png"
    viewer.screenshot(str(shot), canvas_only=False)
    caption = (
        "SAM annotator after 'Segment all boxes' on the generated nuclei sample: yellow box "
        "prompts, the new objects (ids from 2) in 'SAM annotation', outlines in cyan."
    )
    if args.weights is None:
        caption += (
            " Made without real SAM weights: the real MobileSAM encoder and decoder ran with "
            "random weights, and the sample's ground-truth object under each box stands in "
            "for SAM's mask."
        )
    (out / "sam_annotator.txt").write_text(caption + "\n")
    viewer.close()
    print(shot)


if __name__ == "__main__":
    main()
