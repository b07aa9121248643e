"""A small, seeded split in the pipeline's column layout, for the signal tests and the benchmark."""

from __future__ import annotations

import numpy as np
import pandas as pd

from goracs.prompts import DEFAULT_TEMPLATES, TEMPLATE_COLUMN, PromptTemplate

TITLES = ["The Legend of Zelda: Breath of the Wild", "Mario Kart 8 Deluxe", "Halo 3", "Portal 2", "Doom Eternal",
          "Tetris Effect", "Hades", "Celeste", "Stardew Valley", "Dark Souls III", "Minecraft", "Civilization VI",
          "Forza Horizon 5", "Animal Crossing: New Horizons", "Resident Evil 4", "Final Fantasy VII Remake"]


def toy_split(n: int, task: str, seed: int = 0, max_history: int = 10,
              template: PromptTemplate | None = None) -> pd.DataFrame:
    """n synthetic samples of `task` (seqrec or ctr) with random histories over a fixed title list (item id = index
    into TITLES), written with `template` (None = the generic default prompts) and carrying it, as prepared
    samples do."""
    tpl = template if template is not None else DEFAULT_TEMPLATES[task]
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n):
        k = int(rng.integers(1, max_history + 1))
        hist = [int(i) for i in rng.choice(len(TITLES), size=k, replace=False)]
        target = int(rng.integers(len(TITLES)))
        label = int(rng.integers(0, 2))
        titles = [TITLES[i] for i in hist]
        row = {"user": u, "target": target, "history": hist}
        if task == "seqrec":
            inp, out = tpl.seqrec_input(titles), tpl.seqrec_response(TITLES[target])
        else:
            liked = [t for t in titles if rng.random() < 0.6]
            disliked = [t for t in titles if t not in liked]
            inp, out = tpl.ctr_input(liked, disliked, TITLES[target]), tpl.ctr_response(label)
            row["history_labels"] = [int(t in liked) for t in titles]
        rows.append({**row, "instruction": tpl.instruction, "input": inp, "output": out, "label": label,
                     TEMPLATE_COLUMN: tpl.to_json()})
    return pd.DataFrame(rows)
