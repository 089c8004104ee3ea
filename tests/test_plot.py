"""pruning.svg shows every step's PPL and exactly the removed blocks."""

import xml.etree.ElementTree as ET

from core.plot import ACCENT, pruning_svg

NS = "{http://www.w3.org/2000/svg}"


def test_svg_marks_removed_blocks_and_every_step():
    info = {
        "base_ppl": 20.0,
        "num_layers_before": 6,
        "removed": [
            {"block": "mha", "layer": 4, "ppl": 20.5},
            {"block": "mlp", "layer": 0, "ppl": 22.0},
            {"block": "mha", "layer": 0, "ppl": 25.0},
        ],
    }
    root = ET.fromstring(pruning_svg(info))
    cells = [r for r in root.iter(NS + "rect") if r.find(NS + "title") is not None]
    assert len(cells) == 12  # 6 layers x (mha, mlp)
    filled = sorted(r.find(NS + "title").text for r in cells if r.get("fill") == ACCENT)
    assert filled == [
        "mha.0 removed at step 3",
        "mha.4 removed at step 1",
        "mlp.0 removed at step 2",
    ]
    (curve,) = root.iter(NS + "polyline")
    ys = [float(p.split(",")[1]) for p in curve.get("points").split()]
    assert len(ys) == 4 and ys == sorted(ys, reverse=True)  # rising PPL is drawn going up
