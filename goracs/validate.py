"""Check a run's settings before anything expensive runs.

`check_config(cfg)` is called by the entry point (goracs/__main__.py) before the first stage: every setting the
configured stage will read is checked for its type and range, and every setting that the model, task or machine
cannot use is reported, all at once, in one ConfigError that names each setting, its value and what is allowed.
Without it a budget of 0 failed only after the embeddings and gradient norms were built (hours at paper scale)
and an unknown evaluation protocol only after fine-tuning.

An unknown name in a config group (`selector=gorcs`) is Hydra's own MissingConfigException, raised while the
config is composed: the groups are not `optional` in configs/config.yaml.

Settings that are accepted but have no effect (a `model.path` for model=tiny) are logged as warnings.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from goracs.tasks import TASKS

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")  # and cuda:<index>
MULTI_TOKEN = ("sequence", "error", "force_sequence")  # goracs.evaluate.ctr.p_yes
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("float32", "float16", "bfloat16", "float64")
LOGGER_BACKENDS = ("wandb", "none")
# the proxy check (proxy_check=true) computes the coreset's POO from both, whatever the selector needs
PROXY_NEEDS = ("embeddings", "grad_norms")


class ConfigError(ValueError):
    """Settings that cannot work: each named with its value and what is allowed."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = "invalid configuration" + (f" ({len(self.problems)} problems)" if len(self.problems) > 1 else "")
        super().__init__(head + ":\n  - " + "\n  - ".join(self.problems))


class _Report:
    """Problems and warnings found so far (each once, in the order found)."""

    def __init__(self):
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def bad(self, key: str, value: Any, allowed: str) -> None:
        self.add(f"{key}={value!r}: {allowed}")

    def add(self, msg: str) -> None:
        if msg not in self.problems:
            self.problems.append(msg)

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)


# ----------------------------------------------------------------------------------------------------------------
# value checks


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(r: _Report, key: str, v: Any, lo: int, what: str = "", null: bool = False) -> None:
    """An integer >= lo (or null when `null`)."""
    if v is None and null:
        return
    if not _is_int(v) or v < lo:
        r.bad(key, v, f"must be an integer >= {lo}{' or null' if null else ''}{what}")


def _num(r: _Report, key: str, v: Any, lo: float | None = None, strict: bool = False, what: str = "",
         null: bool = False) -> None:
    """A finite number (> lo when strict, else >= lo)."""
    if v is None and null:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    if ok and lo is not None:
        ok = float(v) > lo if strict else float(v) >= lo
    if not ok:
        rng = "" if lo is None else (f" > {lo}" if strict else f" >= {lo}")
        r.bad(key, v, f"must be a finite number{rng}{' or null' if null else ''}{what}")


def _one_of(r: _Report, key: str, v: Any, allowed: tuple, what: str = "") -> None:
    if v not in allowed:
        r.bad(key, v, f"must be one of {list(allowed)}{what}")


def _own(node: DictConfig, key: str) -> bool:
    """Whether node.key is set by itself rather than interpolated from another setting (which is checked there)."""
    return key in node and not OmegaConf.is_interpolation(node, key)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _device(r: _Report, key: str, v: Any) -> str | None:
    """Check a device setting; returns what it resolves to on this machine ('cpu' or 'cuda')."""
    if not (v in DEVICES or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit())):
        r.bad(key, v, f"must be one of {list(DEVICES)} (or cuda:<index>)")
        return None
    if v == "cpu":
        return "cpu"
    cuda = _cuda_available()
    if v != "auto" and not cuda:
        r.bad(key, v, "torch sees no CUDA device on this machine; use cpu or auto")
        return None
    return "cuda" if cuda else "cpu"


def _resolved(r: _Report, cfg: DictConfig, key: str) -> dict[str, Any]:
    """A group's settings with interpolations resolved ({} and a problem when they do not resolve)."""
    node = OmegaConf.select(cfg, key)
    if node is None:
        r.add(f"{key}: the config has no `{key}` group")
        return {}
    try:
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        r.add(f"{key}: {type(e).__name__}: {str(e).splitlines()[0]}")
        return {}


# ----------------------------------------------------------------------------------------------------------------
# groups


def check_globals(r: _Report, cfg: DictConfig) -> None:
    """Top-level settings every computing stage reads."""
    _device(r, "device", cfg.get("device", "cpu"))
    _int(r, "threads", cfg.get("threads"), 1, " (torch CPU threads)", null=True)
    _int(r, "seed", cfg.get("seed", 0), 0)
    _int(r, "data_seed", cfg.get("data_seed", 0), 0)


def check_task(r: _Report, cfg: DictConfig, for_selection: bool = True) -> None:
    """Sample construction (task.max_history, task.n_negatives) and, for a selection run, the budget, lambda, ITRA
    settings and pool caps."""
    t = _resolved(r, cfg, "task")
    if not t:
        return
    _one_of(r, "task.name", t.get("name"), TASKS)
    _int(r, "task.max_history", t.get("max_history", 10), 1, " (history titles per sample)")
    if t.get("name") == "seqrec":
        _int(r, "task.n_negatives", t.get("n_negatives", 99), 0, " (sampled negatives per test sample)")
    if not for_selection:
        return
    _int(r, "task.budget", t.get("budget"), 1, " (training samples to select)")
    _lam(r, "task.lam", t.get("lam", 0.0))
    itra = t.get("itra") or {}
    _int(r, "task.itra.max_iters", itra.get("max_iters"), 0, " (accepted ITRA exchanges; 0 = greedy start only)")
    _int(r, "task.itra.cut_num", itra.get("cut_num"), 1, " (ITRA pruning width)")
    for split, cap in (t.get("pool") or {}).items():
        _int(r, f"task.pool.{split}", cap, 1, " (seeded cap on the split; null = all)", null=True)


def _lam(r: _Report, key: str, v: Any) -> None:
    # lambda weighs the gradient-norm term of the cost, C~ = D - lambda * g (method.md 2): lambda > 0 prefers
    # informative samples (large gradient norms), 0 is distance (coverage) only. A negative lambda would prefer
    # samples the model already fits (small gradient norms): neither the paper's method nor a baseline here, and
    # in a sweep most likely a sign slip, so it is rejected (configs/task/*.yaml say the same).
    _num(r, key, v, 0.0, what=" (weight of the gradient-norm term; a negative value would prefer samples with "
                              "small gradient norms, which is not GORACS: use 0 for distances only)")


def check_selector(r: _Report, cfg: DictConfig) -> tuple[str, ...]:
    """The selector's settings, checked by building it as run_select does; returns the signals it needs."""
    from goracs.selection.build import build_selector

    n0 = len(r.problems)
    s = _resolved(r, cfg, "selector")
    if not s:
        return ()
    node = cfg.selector
    params = dict(s)
    name = params.pop("name", None)
    budget = params.pop("budget", None)
    # an interpolated budget (the default ${task.budget}) is named at its source by check_task
    if _own(node, "budget") or budget != cfg.task.get("budget"):
        _int(r, "selector.budget", budget, 1, " (training samples to select)")
    if "lam" in params and _own(node, "lam"):
        _lam(r, "selector.lam", params["lam"])
    if name == "goracs" or str(s.get("_target_", "")).endswith(".GoracsSelector"):  # GORACS and its variants
        from goracs.selection.label import LABEL_COSTS
        from goracs.selection.mi import MI_MODES

        for key, lo, what in (("max_iters", 0, " (accepted ITRA exchanges)"), ("cut_num", 1, " (ITRA pruning width)")):
            if _own(node, key):
                _int(r, f"selector.{key}", params.get(key), lo, what)
        _one_of(r, "selector.mi_estimate", params.get("mi_estimate", "tight"), MI_MODES)
        _one_of(r, "selector.label_cost", params.get("label_cost", "authors"), LABEL_COSTS)
        if _own(node, "device"):
            _device(r, "selector.device", params.get("device", "auto"))
    if len(r.problems) > n0:  # building the selector would report the same values again
        return ()
    try:  # the selector's own checks, as run_select will build it (its _target_ class with these settings)
        selector = build_selector(s)[2]
    except TypeError as e:  # a setting the selector does not take
        r.add(f"selector={name}: {e} (its settings: configs/selector/{name}.yaml)")
        return ()
    except ValueError as e:  # SelectionError and the baselines' checks, which name the setting without `selector.`
        r.add(f"selector={name}: {e} (a selector.* setting, configs/selector/{name}.yaml)")
        return ()
    return tuple(getattr(selector, "needs", ())) + tuple(getattr(selector, "extra_needs", ()))


def check_signals(r: _Report, cfg: DictConfig, needs: tuple[str, ...]) -> None:
    """Batch sizes and lengths of the signal stages, the encoder (when embeddings are needed) and the device."""
    s = _resolved(r, cfg, "signals")
    if not s:
        return
    for key in ("embed_batch_size", "grad_batch_size", "grad_shard_size", "el2n_batch_size", "max_len"):
        if key in s:
            _int(r, f"signals.{key}", s[key], 1)
    _int(r, "signals.el2n_warmup_epochs", s.get("el2n_warmup_epochs", 0), 0, " (0 = score the starting point)")
    if "el2n" in needs and _is_int(s.get("el2n_warmup_epochs")) and s["el2n_warmup_epochs"] > 0:
        _int(r, "signals.el2n_warmup_samples", s.get("el2n_warmup_samples"), 1)
    if _own(cfg.signals, "device"):
        _device(r, "signals.device", s.get("device", "cpu"))
    if {"embeddings", "val_embeddings"} & set(needs):
        from goracs.models import ModelError
        from goracs.signals.embed import resolve_encoder

        try:
            resolve_encoder(str(s.get("encoder", "minilm")))
        except ModelError as e:
            r.add(str(e))


def check_model(r: _Report, cfg: DictConfig, run_device: str | None) -> None:
    """The LLM: a local folder where one is needed, settings the model cannot use, 8-bit loading on a GPU only."""
    node = cfg.model
    if OmegaConf.is_missing(node, "path"):
        r.add(f"model.path is not set (???): model={node.get('name')} needs the folder of a local checkpoint, "
              f"e.g. model.path=/models/llama-7b")
        return
    m = _resolved(r, cfg, "model")
    if not m:
        return
    name = m.get("name")
    path = m.get("path")
    if name == "tiny":
        # the tiny model is built in memory from a seed: these settings have no effect
        ignored = {k: m.get(k) for k, default in (("path", None), ("dtype", "float32"), ("load_in_8bit", False))
                   if m.get(k, default) != default}
        if ignored:
            r.warn("model=tiny is a randomly initialised model built in memory: "
                   + ", ".join(f"model.{k}={v!r}" for k, v in ignored.items()) + " ignored")
    else:
        if path is not None and not Path(str(path)).expanduser().is_dir():
            r.bad("model.path", path, "no such folder (the local checkpoint of model=" f"{name})")
        elif path is None and name != "smollm2_135m":
            r.add(f"model.path is null: model={name} needs the folder of a local checkpoint")
        _one_of(r, "model.dtype", m.get("dtype", "float32"), DTYPES)
        if m.get("load_in_8bit"):
            if run_device == "cpu":
                r.bad("model.load_in_8bit", True, f"8-bit loading (bitsandbytes) needs a CUDA GPU, and this run's "
                      f"device is cpu (device={cfg.get('device')!r}); set model.load_in_8bit=false")
            if importlib.util.find_spec("bitsandbytes") is None:
                r.bad("model.load_in_8bit", True, "needs the bitsandbytes package, which is not installed")
    _int(r, "model.max_len", m.get("max_len", 512), 1, " (tokens per signal sample)")
    if not _is_int(m.get("grad_layer", -1)):
        r.bad("model.grad_layer", m.get("grad_layer"), "must be an integer (a decoder layer index, -1 = last)")
    lora = m.get("lora") or {}
    _int(r, "model.lora.r", lora.get("r", 8), 1)
    adapter = m.get("init_adapter")
    if adapter:
        folder = Path(str(adapter)).expanduser()
        if not (folder / "adapter_config.json").exists():
            r.bad("model.init_adapter", adapter, "a PEFT LoRA folder with adapter_config.json"
                  + ("" if folder.is_dir() else " (no such folder)") + "; null = a fresh LoRA")


def check_train(r: _Report, cfg: DictConfig) -> str | None:
    """Fine-tuning settings as train_lora will read them (task overrides applied by goracs.train.train_config,
    which checks truncation, batch sizes, ctr_loss, scheduler and the cadence rule itself)."""
    from goracs.train import TrainError, train_config

    t = _resolved(r, cfg, "train")
    if not t:
        return None
    task = str(cfg.task.name)
    try:
        c = train_config(t, task)
    except (TrainError, TypeError, ValueError) as e:
        r.add(str(e) + (f" (after train.task_overrides.{task})" if (t.get("task_overrides") or {}).get(task) else ""))
        return None
    over = (t.get("task_overrides") or {}).get(task) or {}

    def key(k: str) -> str:  # where the effective value was set
        return f"train.task_overrides.{task}.{k}" if k in over else f"train.{k}"

    _num(r, key("lr"), c["lr"], 0.0, strict=True)
    _int(r, key("epochs"), c["epochs"], 0, " (0 = no fine-tuning: the starting model is evaluated)")
    _int(r, key("max_steps"), c["max_steps"], 1, " (null = epochs decide)", null=True)
    _int(r, key("cutoff_len"), c["cutoff_len"], 1, " (tokens per sample)", null=True)
    _int(r, key("eval_batch_size"), c["eval_batch_size"], 1)
    _int(r, key("eval_every_steps"), c["eval_every_steps"], 1, " (null = once per epoch)", null=True)
    _int(r, key("patience"), c["patience"], 1, " (null = no early stopping)", null=True)
    _int(r, key("warmup_steps"), c["warmup_steps"], 0)
    _int(r, key("val_max_samples"), c["val_max_samples"], 1, " (null = the whole validation split)", null=True)
    _num(r, key("weight_decay"), c["weight_decay"], 0.0)
    _num(r, key("max_grad_norm"), c["max_grad_norm"], 0.0, strict=True, null=True)
    _int(r, key("lora") + ".r", (c.get("lora") or {}).get("r"), 1)
    _one_of(r, key("mixed_precision"), c["mixed_precision"], MIXED_PRECISION)
    return _device(r, key("device"), c["device"])


def check_eval(r: _Report, cfg: DictConfig) -> None:
    """The evaluation protocol and its sizes."""
    e = _resolved(r, cfg, "eval")
    if not e:
        return
    from goracs.evaluate.seqrec import PROTOCOLS

    _one_of(r, "eval.protocol", e.get("protocol", "sampled"), PROTOCOLS,
            " (sampled: the target and its negatives; full: the whole catalogue)")
    ks = e.get("ks", [5, 10])
    if not isinstance(ks, list) or not ks or not all(_is_int(k) and k >= 1 for k in ks):
        r.bad("eval.ks", ks, "must be a non-empty list of integers >= 1 (the cut-offs of HR@K and NDCG@K)")
    _int(r, "eval.num_beams", e.get("num_beams", 2), 1)
    _int(r, "eval.max_new_tokens", e.get("max_new_tokens", 32), 1, " (tokens of a generated title)")
    for key in ("batch_size", "embed_batch_size", "title_max_tokens"):
        if key in e:
            _int(r, f"eval.{key}", e[key], 1)
    _int(r, "eval.cutoff_len", e.get("cutoff_len", 512), 1, null=True)
    _int(r, "eval.max_samples", e.get("max_samples"), 1, " (null = every test sample)", null=True)
    _int(r, "eval.num_negatives", e.get("num_negatives", 99), 0)
    _one_of(r, "eval.multi_token", e.get("multi_token", "sequence"), MULTI_TOKEN)


def check_logger(r: _Report, cfg: DictConfig) -> None:
    """The W&B backend and mode (the logger starts before selection)."""
    from goracs.report.wandb import MODES

    lg = _resolved(r, cfg, "logger")
    backend = lg.get("backend", "none")
    _one_of(r, "logger.backend", backend, LOGGER_BACKENDS)
    if backend == "wandb" and lg.get("mode") is not None:
        _one_of(r, "logger.mode", lg.get("mode"), MODES)


def _missing(r: _Report, cfg: DictConfig) -> None:
    """Mandatory values (???) left unset, other than model.path (check_model names the model with it)."""
    def walk(node: Any, prefix: str):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            key = f"{prefix}{k}" if isinstance(k, str) else f"{prefix.rstrip('.')}[{k}]"
            if v == "???":
                yield key
            elif isinstance(v, (dict, list)):
                yield from walk(v, key + ".")

    # not OmegaConf.missing_keys: it resolves interpolations and stops at the first one that points to a ???
    for key in walk(OmegaConf.to_container(cfg, resolve=False), ""):
        if key != "model.path":
            r.add(f"{key} is not set (???): give it on the command line, e.g. {key}=<value>")


def check_job(r: _Report, cfg: DictConfig) -> None:
    """Everything one `stage=all` job reads (a SeqRec-only selector on CTR is skipped by run_all: not checked)."""
    sel = cfg.selector.get("name") if cfg.get("selector") is not None else None
    if sel in (cfg.get("seqrec_only_selectors") or []) and cfg.task.get("name") != "seqrec":
        return
    n0 = len(r.problems)
    _missing(r, cfg)
    if len(r.problems) > n0:  # unresolvable interpolations would only repeat them
        return
    check_globals(r, cfg)
    run_device = _device(_Report(), "device", cfg.get("device", "cpu"))
    check_task(r, cfg)
    needs = check_selector(r, cfg)
    task = cfg.task.get("name")
    if "labels" in needs and task != "ctr":
        r.add(f"selector={cfg.selector.get('name')} with these settings needs class labels, which only task=ctr "
              f"samples have (task={task}; e.g. selector.stratify=false)")
    if task == "ctr" and cfg.eval.get("protocol", "sampled") != "sampled":
        r.warn(f"eval.protocol={cfg.eval.protocol!r} has no effect on task=ctr (AUC and log-loss over the test "
               "samples); it sets the SeqRec ranking only")
    if cfg.get("proxy_check", True):
        needs = needs + PROXY_NEEDS  # the proxy check computes the coreset's POO from both signals
    check_signals(r, cfg, needs)
    check_model(r, cfg, run_device)
    check_train(r, cfg)
    check_eval(r, cfg)
    check_logger(r, cfg)
    caps = cfg.task.get("pool") or {}
    budget = cfg.selector.get("budget")
    if _is_int(budget) and _is_int(caps.get("max_train")) and budget >= caps["max_train"]:
        r.warn(f"selector.budget={budget} >= task.pool.max_train={caps['max_train']}: the whole training pool is "
               f"used (metrics.json records the number of samples actually used as `budget`)")


def check_demo(r: _Report, cfg: DictConfig) -> None:
    """Every (task, selector) job the demo will run, each as its own `stage=all` job."""
    from goracs.demo import CONFIG_DIR, with_task_selector

    demo = cfg.get("demo")
    if demo is None:
        r.add("stage=demo needs the `demo` settings: run it as experiment=demo (make demo)")
        return
    full = demo.get("full", 0)
    if full not in (0, 1, True, False):
        r.bad("demo.full", full, "must be 0 or 1")
        return
    key = "demo.full_selectors" if int(full) else "demo.selectors"
    names = list(demo.get("full_selectors" if int(full) else "selectors") or [])
    known = sorted(p.stem for p in (Path(CONFIG_DIR) / "selector").glob("*.yaml"))
    tasks = list(demo.get("tasks") or [])
    bad = [t for t in tasks if t not in TASKS] + [n for n in names if n not in known]
    for t in tasks:
        if t not in TASKS:
            r.bad("demo.tasks", t, f"must be one of {list(TASKS)}")
    for n in names:
        if n not in known:
            r.bad(key, n, f"no configs/selector/{n}.yaml; options: {known}")
    if not tasks or not names:
        r.add(f"demo.tasks and {key} must not be empty")
    if bad or not tasks or not names:
        return
    # each demo job loads its selector's own file (demo.with_task_selector): selector.* settings of this run
    # do not reach it (the budget is task.budget)
    sel = cfg.get("selector")
    if sel is not None and (Path(CONFIG_DIR) / "selector" / f"{sel.get('name')}.yaml").exists():
        own = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "selector" / f"{sel.name}.yaml"))
        mine = OmegaConf.to_container(sel, resolve=False)
        changed = {k: v for k, v in mine.items() if own.get(k, object()) != v}
        if changed:
            r.warn("stage=demo runs every demo selector with its own configs/selector file: "
                   + ", ".join(f"selector.{k}={v!r}" for k, v in changed.items())
                   + " ignored (set the budget with task.budget)")
    found: dict[str, list[str]] = {}  # problem -> the jobs that have it
    warned: dict[str, list[str]] = {}
    jobs = []
    for task in tasks:
        for name in names:
            if name in (cfg.get("seqrec_only_selectors") or []) and task != "seqrec":
                continue
            jobs.append(f"{task}/{name}")
            job = _Report()
            check_job(job, with_task_selector(cfg, task, name))
            for msg in job.problems:
                found.setdefault(msg, []).append(jobs[-1])
            for msg in job.warnings:
                warned.setdefault(msg, []).append(jobs[-1])

    def which(js: list[str]) -> str:
        return "every demo job" if len(js) == len(jobs) and len(jobs) > 1 else "demo job" + \
            ("s " if len(js) > 1 else " ") + ", ".join(js)

    for msg, js in found.items():
        r.add(f"{msg} ({which(js)})")
    for msg, js in warned.items():
        r.warn(f"{msg} ({which(js)})")


def check_config(cfg: DictConfig) -> list[str]:
    """Check the settings that the configured stage reads; raise ConfigError naming every bad one, log a warning
    for every setting that has no effect, and return the warnings."""
    r = _Report()
    stage = cfg.get("stage")
    if stage == "prepare":
        check_globals(r, cfg)
        check_task(r, cfg, for_selection=False)
    elif stage == "stats":
        check_globals(r, cfg)
        tasks = list((cfg.get("stats") or {}).get("tasks") or [])
        for t in tasks:
            if t not in TASKS:
                r.bad("stats.tasks", t, f"must be one of {list(TASKS)}")
        check_task(r, cfg, for_selection=False)
    elif stage == "all":
        check_job(r, cfg)
    elif stage == "demo":
        check_demo(r, cfg)
    for w in r.warnings:
        log.warning(w)
    if r.problems:
        raise ConfigError(r.problems)
    return r.warnings
