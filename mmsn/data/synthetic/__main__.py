"""``python -m mmsn.data.synthetic OUT.png [SEED]``: a 4x4 contact sheet of films at 128 px."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmsn.data.labels import NIH14_LABELS
from mmsn.data.synthetic.render import contact_sheet, load_synthetic

if __name__ == "__main__":  # python -m mmsn.data.synthetic OUT.png [SEED]: 4x4 examples at 128 px
    import sys

    src = load_synthetic(None, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    picks = np.random.default_rng(1).choice(len(src.table), 16, replace=False)
    Image.fromarray(contact_sheet(src, picks)).save(sys.argv[1] if len(sys.argv) > 1 else "synthetic.png")
    for r in picks:
        row = src.table.iloc[int(r)]
        print(int(r), row["view"], row["sex"], row["age"], [n for n in NIH14_LABELS if row[n]])
