"""A small, seeded split in the pipeline's column layout, for the signal tests and the benchmark."""

from __future__ import annotations

import numpy as np
import pandas as pd

from goracs.prompts import CTR_INSTRUCTION, SEQREC_INSTRUCTION, ctr_input, ctr_response, seqrec_input, \
    seqrec_response

TITLES = ["The Legend of Zelda: Breath of the Wild", "Mario Kart 8 Deluxe", "Halo 3", "Portal 2", "Doom Eternal",
          "Tetris Effect", "Hades", "Celeste", "Stardew Valley", "Dark Souls III", "Minecraft", "Civilization VI",
          "Forza Horizon 5", "Animal Crossing: New Horizons", "Resident Evil 4", "Final Fantasy VII Remake"]


def toy_split(n: int, task: str, seed: int = 0, max_history: int = 10) -> pd.DataFrame:
    """n synthetic samples of `task` (seqrec or ctr) with random histories over a fixed title list."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n):
        k = int(rng.integers(1, max_history + 1))
        hist = [int(i) for i in rng.choice(len(TITLES), size=k, replace=False)]
        target = int(rng.integers(len(TITLES)))
        label = int(rng.integers(0, 2))
        titles = [TITLES[i] for i in hist]
        if task == "seqrec":
            ins, inp, out = SEQREC_INSTRUCTION, seqrec_input(titles), seqrec_response(TITLES[target])
        else:
            liked = [t for t in titles if rng.random() < 0.6]
            disliked = [t for t in titles if t not in liked]
            ins, inp, out = CTR_INSTRUCTION, ctr_input(liked, disliked, TITLES[target]), ctr_response(label)
        rows.append({"user": u, "target": target, "history": hist, "instruction": ins, "input": inp,
                     "output": out, "label": label})
    return pd.DataFrame(rows)
