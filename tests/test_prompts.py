"""Prompt templates as config data (method.md 4-5): the default set keeps the project's generic wording, the paper set
holds the authors' per-dataset wording, one template per dataset and task rules training, signals and evaluation,
malformed templates fail clearly, and the template text keys the prepared samples."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from goracs import prompts as P
from goracs.cache import StageCache
from goracs.data.prepare import prepare, prepare_key
from goracs.data.samples import build_samples
from goracs.models import tiny_llama
from goracs.signals.common import encode
from goracs.signals.embed import sample_texts
from goracs.train import encode_samples

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
PAPER = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/prompt/paper.yaml"))
DEFAULT = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/prompt/default.yaml"))
HEADER = ("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.")


def small_interactions(n_users=4, n_items=14, per_user=8, seed=0):
    """Interactions of a few users with titled items (ratings -> labels), enough for windows of every length."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        for k, i in enumerate(items):
            r = int(rng.integers(1, 6))
            rows.append({"user": f"u{u}", "item": f"i{i}", "rating": float(r), "label": int(r > 3),
                         "timestamp": float(1000 * u + k)})
    titles = {f"i{i}": f"Game {i}: The {['Return', 'Quest', 'Saga'][i % 3]}" for i in range(n_items)}
    return pd.DataFrame(rows), titles


def test_default_set_is_the_config_and_keeps_the_generic_wording():
    assert DEFAULT == P.DEFAULT_SET  # configs/prompt/default.yaml and the code's fallback are the same data
    t = P.resolve_template(DEFAULT, "games", "seqrec")
    assert t.set == "default" and t.domain == "default"  # every dataset gets the generic prompts
    # the exact text the project rendered before templates were config data
    assert t.prompt("Do it.", t.seqrec_input(["A", "B"])) == (
        f'{HEADER}\n\n### Instruction:\nDo it.\n\n### Input:\nThe user has interacted with: "A", "B"\n\n'
        "### Response:\n")
    c = P.resolve_template(DEFAULT, "food", "ctr")
    assert c.ctr_input([], ["X"], "T") == ('User Preference: none\nUser Unpreference: "X"\n'
                                           'Whether the user will like the target item "T"?')
    assert (c.ctr_response(1), c.ctr_response(0)) == ("Yes.", "No.")
    assert P.render_prompt("i", "x") == t.prompt("i", "x")  # no source: the default template


def test_paper_templates_hold_the_authors_wording():
    g = P.resolve_template(PAPER, "games", "seqrec")
    assert g.instruction == ("Given a list of video games the user has played before, please recommend a new video "
                             "game that the user likes to the user.")
    assert g.seqrec_input(["A", "B"]) == 'The user has played the following video games before:"A", "B"\n '
    assert g.seqrec_response("T") == '"T"'
    # their training script's header (one trailing space) and Alpaca frame
    assert g.prompt("I", "X") == f"{HEADER} \n\n### Instruction:\nI\n\n### Input:\nX\n\n### Response:\n"
    c = P.resolve_template(PAPER, "games", "ctr")
    assert c.instruction == ("Given the user's preference and unpreference, identify whether the user will like the "
                             'target game by answering "Yes" or "No".')
    assert c.ctr_input(["A"], [], "T") == ('User Preference: "A"\nUser Unpreference: \n'
                                           'Whether the user will like the target movie "T"?')
    assert (c.ctr_response(1), c.ctr_response(0)) == ("Yes", "No")
    f, m = P.resolve_template(PAPER, "food", "seqrec"), P.resolve_template(PAPER, "movies", "ctr")
    assert f.seqrec_input(["A"]) == 'The user has purchased the following food before:"A"\n '
    assert "recommend the name of a new food" in f.instruction
    assert m.ctr_input([], [], "T").endswith('the target movie titled "T"?') and "target movie by" in m.instruction
    assert "movies ad TVs" in P.resolve_template(PAPER, "movies", "seqrec").instruction  # their typo, kept
    # the RecBole fixtures and the synthetic (video game) data use the matching domain
    assert P.resolve_template(PAPER, "games_recbole", "ctr") == P.resolve_template(PAPER, "games", "ctr")
    assert P.resolve_template(PAPER, "synthetic", "seqrec").domain == "games"
    with pytest.raises(P.PromptError, match="'paper' has no prompts for dataset 'books'"):
        P.resolve_template(PAPER, "books", "seqrec")


def test_profiles_select_the_prompt_sets():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        d = compose("config")
        p = compose("config", overrides=["profile=paper", "dataset=games", "task=ctr"])
    assert d.prompt.name == "default" and p.prompt.name == "paper"
    assert p.signals.normalize_embeddings is False and d.signals.normalize_embeddings is True
    assert p.signals.encoder == "roberta-base" and d.signals.encoder == "minilm"  # paper: the user gives the folder
    t = P.resolve_template(p.prompt, p.dataset.name, p.task.name)
    assert "target game" in t.instruction


def test_missing_or_malformed_fields_fail_naming_template_task_and_field():
    bad = copy.deepcopy(PAPER)
    bad["domains"]["games"]["ctr"]["input"] = "User Preference: {liked}\nUser Unpreference: {disliked}\n?"
    with pytest.raises(P.PromptError, match=r"prompt template 'paper' \(dataset games, task ctr\).*'input'.*"
                                            r"\{target\}"):
        P.resolve_template(bad, "games", "ctr")
    P.resolve_template(bad, "games", "seqrec")  # the other task is fine
    bad = copy.deepcopy(PAPER)
    del bad["domains"]["food"]["seqrec"]["instruction"]
    with pytest.raises(P.PromptError, match=r"'paper' \(dataset food, task seqrec\): missing field\(s\) "
                                            r"\['instruction'\]"):
        P.resolve_template(bad, "food", "seqrec")
    bad = copy.deepcopy(DEFAULT)
    bad["item"] = "{name}"
    with pytest.raises(P.PromptError, match=r"'default' \(dataset default, task seqrec\): field 'item' lacks the "
                                            r"required placeholder\(s\) \{title\}"):
        P.resolve_template(bad, "movies", "seqrec")
    bad = copy.deepcopy(DEFAULT)
    bad["domains"]["default"]["seqrec"]["response"] = '"{target}" ({year})'
    with pytest.raises(P.PromptError, match=r"field 'response' has unknown placeholder\(s\) \{year\}"):
        P.resolve_template(bad, "games", "seqrec")
    bad = copy.deepcopy(DEFAULT)
    bad["domains"]["default"]["ctr"]["negative"] = "Yes."
    with pytest.raises(P.PromptError, match="task ctr.*are the same"):
        P.resolve_template(bad, "games", "ctr")


@pytest.mark.parametrize("prompt_set", ["default", "paper"])
@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_one_template_rules_training_signals_and_evaluation(prompt_set, task, monkeypatch):
    """Samples built with a dataset's template carry it; the training encoding, the LM signals, the embedding
    texts and both evaluations all see exactly the template's prompt."""
    import goracs.evaluate.ctr as ectr
    import goracs.evaluate.seqrec as eseq

    tpl = P.resolve_template(PAPER if prompt_set == "paper" else DEFAULT, "games", task)
    inter, titles = small_interactions()
    df, _ = build_samples(inter, titles, task, max_history=5, progress=False, template=tpl)
    expected = [tpl.prompt(i, x) for i, x in zip(df["instruction"], df["input"])]
    assert P.sample_prompts(df) == expected
    if prompt_set == "paper":  # the authors' input wording really is in the samples
        assert all(x.startswith("The user has played" if task == "seqrec" else "User Preference: ")
                   for x in df["input"])
        assert set(df["output"]) <= ({"Yes", "No"} if task == "ctr" else set(df["output"]))

    model, tok = tiny_llama(seed=0)
    ids, labels, _ = encode_samples(tok, df, task, cutoff_len=None)  # training
    enc = encode(tok, df, task, max_len=4096)  # gradient norms and EL2N
    for k, e in enumerate(expected):
        p_ids = tok(e).input_ids
        assert ids[k][:len(p_ids)] == p_ids and enc.ids[k][:len(p_ids)] == p_ids
    texts = sample_texts(df, task)  # sentence embeddings
    assert texts == ([e + o for e, o in zip(expected, df["output"])] if task == "seqrec" else expected)

    seen = {}

    class Stop(Exception):
        pass

    def capture(model, tokenizer, prompts, cfg=None):
        seen["prompts"] = list(prompts)
        raise Stop

    if task == "ctr":
        monkeypatch.setattr(ectr, "p_yes", capture)
        with pytest.raises(Stop):
            ectr.evaluate_ctr(model, tok, df, {"progress": False})
    else:
        monkeypatch.setattr(eseq, "generate_titles", capture)
        monkeypatch.setattr(eseq, "_check_test", lambda *a, **k: None)
        monkeypatch.setattr(eseq, "check_catalogue", lambda *a, **k: None)
        with pytest.raises(Stop):
            eseq.evaluate_seqrec(model, None, tok, df, pd.DataFrame({"item_id": [], "title": []}),
                                 {"progress": False})
    assert seen["prompts"] == expected


def test_a_frame_never_mixes_templates():
    inter, titles = small_interactions()
    a, _ = build_samples(inter, titles, "ctr", progress=False, template=P.resolve_template(PAPER, "games", "ctr"))
    b, _ = build_samples(inter, titles, "ctr", progress=False)
    assert P.template_of(a).set == "paper" and P.template_of(b).set == "default"
    assert P.render_prompt(a.instruction[0], a.input[0], a) != P.render_prompt(b.instruction[0], b.input[0], b)
    with pytest.raises(P.PromptError, match="mixes 2 prompt templates"):
        P.sample_prompts(pd.concat([a, b], ignore_index=True))
    with pytest.raises(ValueError, match="template 'paper' is for task seqrec, not ctr"):
        build_samples(inter, titles, "ctr", progress=False, template=P.resolve_template(PAPER, "games", "seqrec"))


def test_template_text_is_part_of_the_prepared_samples_key(tmp_path):
    ds = {"name": "synthetic", "format": "synthetic", "root": str(tmp_path / "raw"),
          "synthetic": {"n_users": 60, "n_items": 50, "seed": 1},
          "split": {"method": "temporal", "n_valid": 0.1, "n_test": 0.1}}
    task = {"name": "seqrec", "max_history": 5, "n_negatives": 9}
    k_default = prepare_key(ds, task, 0)
    assert k_default == prepare_key(ds, task, 0, DEFAULT)  # None = the default set
    assert k_default["prompt"]["instruction"] == P.SEQREC_INSTRUCTION
    assert prepare_key(ds, task, 0, PAPER) != k_default
    edited = copy.deepcopy(PAPER)
    edited["domains"]["games"]["seqrec"]["instruction"] += " Answer with its title."
    assert prepare_key(ds, task, 0, edited) != prepare_key(ds, task, 0, PAPER)  # one word changes the key
    edited = copy.deepcopy(PAPER)
    edited["header"] = edited["header"].rstrip()  # whitespace is text too
    assert prepare_key(ds, task, 0, edited) != prepare_key(ds, task, 0, PAPER)
    assert prepare_key(ds, task, 0, PAPER) == prepare_key(ds, task, 0, copy.deepcopy(PAPER))

    cache = StageCache(tmp_path / "cache")
    d1 = prepare(ds, task, cache, progress=False)
    d2 = prepare(ds, task, cache, progress=False, prompt_cfg=PAPER)
    assert d1.path != d2.path and len(d1.train) == len(d2.train)
    assert d1.train["history"].tolist() == d2.train["history"].tolist()
    assert (d1.train["input"] != d2.train["input"]).all()
    for d, name in ((d1, "default"), (d2, "paper")):  # the template travels with every split, through the cache
        for split in ("train", "valid", "test"):
            assert P.template_of(d.split(split)).set == name
        assert d.stats["prompt"]["set"] == name
    assert P.sample_prompts(d2.test)[0].startswith(HEADER + " \n\n### Instruction:\nGiven a list of video games")
