"""SeqRec evaluation on the tiny LLaMA: batched beam search equals per-prompt generation, grounding by L2
distance of base-model embeddings (cached), both protocols, and clear failures."""

import numpy as np
import pandas as pd
import pytest
import torch

from goracs.errors import DataError
from goracs.evaluate.seqrec import (base_model_context, catalogue_embeddings, clean_generation, evaluate_seqrec,
                                    generate_titles, last_token_embeddings, rank_generations)
from goracs.models import add_lora, tiny_llama
from goracs.prompts import SEQREC_INSTRUCTION, render_prompt, seqrec_input

torch.set_num_threads(1)
WORDS = ["Space", "Kart", "Puzzle", "Dungeon", "Farm", "Zombie", "Golf", "Chess", "Racer", "Quest", "Night",
         "Story"]


def catalogue(n=24):
    rng = np.random.default_rng(0)
    titles = []
    while len(titles) < n:
        t = " ".join(rng.choice(WORDS, 2, replace=False)) + f" {len(titles) + 1}"
        titles.append(t)
    return pd.DataFrame({"item_id": [f"i{k}" for k in range(n)], "title": titles})


def make_test_df(cat, n=5, n_neg=9, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        t = int(rng.integers(len(cat)))
        others = [j for j in range(len(cat)) if j != t]
        negs = rng.choice(others, n_neg, replace=False)
        hist = [cat.title[j] for j in rng.choice(others, 3, replace=False)]
        rows.append({"instruction": SEQREC_INSTRUCTION, "input": seqrec_input(hist),
                     "output": f'"{cat.title[t]}"', "label": 1, "target": cat.item_id[t],
                     "negatives": [cat.item_id[j] for j in negs]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=5)


def test_clean_generation():
    assert clean_generation(' "Kart Racer 3"\n\n### Input: junk') == "Kart Racer 3"
    assert clean_generation('"The "Best" Game"') == 'The "Best" Game'  # tuned output: quoted line
    assert clean_generation('  \n') == ""
    assert clean_generation('The user will interact with: "Chess Story 20" next') == "Chess Story 20"
    assert clean_generation('Chess Story 20') == "Chess Story 20"


def test_batched_beam_search_matches_one_prompt_at_a_time(tiny):
    model, tok = tiny
    cat = catalogue()
    df = make_test_df(cat, 3)
    prompts = [render_prompt(i, x) for i, x in zip(df.instruction, df.input)]
    prompts[1] = render_prompt("Short.", "x")  # very different lengths: heavy left padding
    cfg = {"num_beams": 2, "max_new_tokens": 6, "progress": False}
    batched = generate_titles(model, tok, prompts, {**cfg, "batch_size": 3})
    single = [generate_titles(model, tok, [p], {**cfg, "batch_size": 1})[0] for p in prompts]
    assert batched == single
    assert all(len(tok(g).input_ids) <= 6 + 1 for g in batched)


def test_embeddings_are_last_token_last_layer_and_padding_free(tiny):
    model, tok = tiny
    texts = ["Golf Pro", "A much longer title with many words in it"]
    e = last_token_embeddings(model, tok, texts, batch_size=2)
    for k, t in enumerate(texts):
        with torch.no_grad():
            h = model(tok(t, return_tensors="pt").input_ids, output_hidden_states=True).hidden_states[-1][0, -1]
        np.testing.assert_allclose(e[k], h.numpy(), atol=1e-5)


def test_grounding_ranks_exact_titles_first_and_empty_generations_last(tiny):
    model, tok = tiny
    cat = catalogue()
    df = make_test_df(cat, 6)
    cat_emb = last_token_embeddings(model, tok, cat.title.tolist())
    fn = lambda texts: last_token_embeddings(model, tok, texts)  # noqa: E731
    gens = [f'"{cat.set_index("item_id").title[t]}"' for t in df.target]
    gens[5] = '""'
    r = rank_generations(gens, df, cat, cat_emb, fn, "sampled")
    assert r["per_sample"]["rank"] == [0, 0, 0, 0, 0, 10] and r["n_empty_generations"] == 1
    assert r["HR@5"] == pytest.approx(5 / 6) and r["NDCG@10"] == pytest.approx(5 / 6) and r["HR@10"] == pytest.approx(5 / 6)
    assert r["exact_title_rate"] == pytest.approx(5 / 6)
    rf = rank_generations(gens, df, cat, cat_emb, fn, "full")
    assert rf["per_sample"]["rank"][:5] == [0] * 5 and rf["per_sample"]["rank"][5] == len(cat)
    # a generation matching no title: ranks equal brute-force L2 ordering of the candidates
    gens2 = ["Golf something else"] * 6
    r2 = rank_generations(gens2, df, cat, cat_emb, fn, "sampled")
    g = fn(["Golf something else"])[0]
    for k, (t, negs) in enumerate(zip(df.target, df.negatives)):
        ids = [t] + list(negs)
        d = [np.linalg.norm(cat_emb[int(x[1:])] - g) for x in ids]
        assert r2["per_sample"]["rank"][k] == sorted(range(len(ids)), key=lambda j: (d[j], j == 0)).index(0)


def test_evaluate_seqrec_end_to_end_with_adapter_and_cache(tmp_path):
    model, tok = tiny_llama(seed=6)
    cat = catalogue()
    df = make_test_df(cat, 4)
    peft = add_lora(model, r=2, alpha=4, dropout=0.0)
    with torch.no_grad():  # make the adapter non-trivial so base and adapted model differ
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    cfg = {"num_beams": 2, "max_new_tokens": 5, "batch_size": 2, "num_negatives": 9, "progress": False}
    r = evaluate_seqrec(peft, None, tok, df, cat, cfg, cache_dir=tmp_path)
    assert r["n"] == 4 and r["n_candidates"] == 10 and r["protocol"] == "sampled"
    assert 0 <= r["NDCG@5"] <= r["HR@5"] <= r["HR@10"] <= 1
    cached = list(tmp_path.glob("catalogue_emb_*.npy"))
    assert len(cached) == 1
    with base_model_context(peft) as base:  # the cache holds BASE-model embeddings
        ref = last_token_embeddings(base, tok, cat.title.tolist())
    np.testing.assert_allclose(np.load(cached[0]), ref, atol=1e-6)
    with torch.no_grad():
        assert not np.allclose(last_token_embeddings(peft, tok, cat.title.tolist()[:3]), ref[:3], atol=1e-3)
    # cache hit gives the same numbers; the full protocol ranks over the whole catalogue
    r2 = evaluate_seqrec(peft, None, tok, df, cat, cfg, cache_dir=tmp_path)
    assert r2["per_sample"]["rank"] == r["per_sample"]["rank"]
    assert len(list(tmp_path.glob("catalogue_emb_*.npy"))) == 1
    emb_again = catalogue_embeddings(tiny_llama(seed=7)[0], tok, cat, tmp_path)  # another model: new key
    assert len(list(tmp_path.glob("catalogue_emb_*.npy"))) == 2 and emb_again.shape == ref.shape
    rf = evaluate_seqrec(peft, None, tok, df, cat, {**cfg, "protocol": "full"}, cache_dir=tmp_path)
    assert rf["n_candidates"] == len(cat) and rf["per_sample"]["generation"] == r["per_sample"]["generation"]
    # eval.max_samples evaluates a seeded subsample: its ranks come with its own ids, and the predictions the
    # pipeline writes pair each rank with the sample it belongs to
    from goracs.pipeline import predictions

    rs = evaluate_seqrec(peft, None, tok, df, cat, {**cfg, "max_samples": 2, "seed": 1}, cache_dir=tmp_path)
    assert len(rs["per_sample"]["ids"]) == 2 and set(rs["per_sample"]["ids"]) < {str(i) for i in df.index}
    pred = predictions("seqrec", rs, df)
    full_rank = dict(zip(r["per_sample"]["ids"], r["per_sample"]["rank"]))
    assert pred["ids"] == rs["per_sample"]["ids"]
    assert [full_rank[i] for i in pred["ids"]] == pred["rank"]  # the same sample's rank as in the full run


def test_evaluate_seqrec_bad_input(tiny):
    model, tok = tiny
    cat = catalogue()
    df = make_test_df(cat, 2)
    cfg = {"num_negatives": 9, "progress": False}
    with pytest.raises(DataError, match="not in the catalogue"):
        evaluate_seqrec(model, None, tok, df.assign(target=["zzz", "i1"]), cat, cfg)
    with pytest.raises(DataError, match="contain the target"):
        evaluate_seqrec(model, None, tok, df.assign(negatives=[[df.target[0]] * 1, ["i1"]]), cat, cfg)
    with pytest.raises(DataError, match="duplicate item_id"):
        evaluate_seqrec(model, None, tok, df, pd.concat([cat, cat.iloc[:1]]), cfg)
    with pytest.raises(DataError, match="missing column"):
        evaluate_seqrec(model, None, tok, df.drop(columns=["negatives"]), cat, cfg)
    with pytest.raises(DataError, match="protocol"):
        evaluate_seqrec(model, None, tok, df, cat, {**cfg, "protocol": "both"})
    peft = add_lora(tiny_llama(seed=8)[0], r=2, alpha=4)
    with pytest.raises(DataError, match="carries LoRA"):
        with base_model_context(peft.base_model.model, peft.base_model.model):
            pass


def test_finetune_cli_seqrec_end_to_end(tmp_path):
    """scripts/finetune.py's main: fine-tune on a coreset of the samples, then generate + ground + rank."""
    import importlib.util
    import json
    from pathlib import Path

    script_path = Path(__file__).resolve().parents[1] / "scripts" / "finetune.py"
    spec = importlib.util.spec_from_file_location("finetune", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    main = script.main

    cat = catalogue()
    train = make_test_df(cat, 6, seed=1).drop(columns=["negatives"])
    make_test_df(cat, 3, seed=2).to_parquet(tmp_path / "val.parquet")
    make_test_df(cat, 3, seed=3).to_parquet(tmp_path / "test.parquet")
    train.to_parquet(tmp_path / "train.parquet")
    cat.to_parquet(tmp_path / "items.parquet")
    np.save(tmp_path / "coreset.npy", np.array([0, 2, 3, 5]))
    (tmp_path / "eval.yaml").write_text("max_new_tokens: 4\nnum_negatives: 9\nbatch_size: 3\nprogress: false\n")
    rc = main(["--train", str(tmp_path / "train.parquet"), "--val", str(tmp_path / "val.parquet"),
               "--coreset", str(tmp_path / "coreset.npy"), "--task", "seqrec", "--model", "tiny",
               "--config", "configs/train/tiny.yaml", "--test", str(tmp_path / "test.parquet"),
               "--catalogue", str(tmp_path / "items.parquet"), "--eval-config", str(tmp_path / "eval.yaml"),
               "--out", str(tmp_path / "out"), "epochs=1"])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert res["train"]["n_train"] == 4 and res["train"]["steps"] == 1
    assert res["eval"]["n"] == 3 and res["eval"]["n_candidates"] == 10 and 0 <= res["eval"]["HR@10"] <= 1
    assert len(list((tmp_path / "out" / "cache").glob("catalogue_emb_*.npy"))) == 1
    np.save(tmp_path / "bad.npy", np.array([0, 6]))
    with pytest.raises(DataError, match="bad.npy.*does not fit the 6 training samples"):
        main(["--train", str(tmp_path / "train.parquet"), "--val", str(tmp_path / "val.parquet"),
              "--coreset", str(tmp_path / "bad.npy"), "--task", "seqrec", "--model", "tiny",
              "--config", "configs/train/tiny.yaml", "--out", str(tmp_path / "out2")])
