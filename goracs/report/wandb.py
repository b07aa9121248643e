"""Weights & Biases logging behind a small interface (offline by default; `none` = no wandb at all), and a
reader for offline run files so tests and reports can check what was logged without `wandb sync`."""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from goracs.config import to_dict

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")


class LoggerError(ValueError):
    """A logger config that cannot work, named in the message."""


class RunLogger:
    """No-op logger (the `none` config); keeps what it was given in memory. Subclassed by WandbLogger."""

    backend = "none"

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.finished = False

    def log_config(self, cfg: Any) -> None:
        """Record the resolved run config."""
        self.config.update(_plain(cfg))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, summary: bool = False) -> None:
        """Record scalar metrics at a step (and in the run summary when summary=True)."""
        row = {k: _scalar(v) for k, v in metrics.items()}
        self.history.append({**row, **({"_step": step} if step is not None else {})})
        if summary:
            self.summary.update(row)

    def log_coreset(self, indices: Iterable[int], name: str = "coreset", metadata: Mapping | None = None) -> None:
        """Record the selected coreset's indices (an artifact in wandb)."""
        self.summary[f"{name}/size"] = int(np.asarray(list(indices)).size)

    def log_trajectory(self, poo_values: Iterable[float], name: str = "poo") -> None:
        """Record the POO value per ITRA iteration: one history row per iteration ({name}/iteration,
        {name}/value: the series the dashboard's POO-descent panels plot) and the first/last value in the summary."""
        vals = [float(v) for v in poo_values]
        if vals:
            self.history.extend(trajectory_rows(vals, name))
            self.summary.update({f"{name}/initial": vals[0], f"{name}/final": vals[-1], f"{name}/steps": len(vals)})

    def log_table(self, name: str, dataframe) -> None:
        """Record a results table (a wandb.Table in wandb)."""
        self.summary[f"{name}/rows"] = int(len(dataframe))

    def finish(self, exit_code: int = 0) -> None:
        """End the run (idempotent)."""
        self.finished = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.finish(exit_code=1 if exc_type is not None else 0)
        return False


class WandbLogger(RunLogger):
    """A wandb run: config, metrics, coreset artifact, POO trajectory and tables; always finished on exit."""

    backend = "wandb"

    def __init__(self, project: str = "goracs", entity: str | None = None, mode: str = "offline",
                 group: str | None = None, job_type: str | None = None, tags: Iterable[str] | None = None,
                 name: str | None = None, notes: str | None = None, dir: str | os.PathLike | None = None,
                 config: Any = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise LoggerError(f"logger.mode must be one of {MODES}, got {mode!r}")
        offline_environment(mode)
        import wandb

        self._wandb = wandb
        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
        kw = dict(project=project, entity=entity, group=group, job_type=job_type,
                  tags=[str(t) for t in (tags or [])] or None, name=name, notes=notes,
                  dir=str(dir) if dir is not None else None, config=_plain(config) if config is not None else None,
                  reinit="create_new")
        try:
            self.run = wandb.init(mode=mode, **kw)
        except Exception as e:  # noqa: BLE001 - an unreachable server must not kill the experiment
            if mode != "online":
                raise
            log.warning("wandb online init failed (%s): logging offline instead; `wandb sync` later", e)
            self.run = wandb.init(mode="offline", **kw)
        self.mode = mode
        if config is not None:
            self.config.update(_plain(config))

    @property
    def run_dir(self) -> Path | None:
        """The local run directory (offline-run-* / run-*), None when disabled."""
        d = getattr(self.run, "dir", None)
        return Path(d).parent if d else None

    def log_config(self, cfg: Any) -> None:
        """Add the resolved config to the run's config."""
        super().log_config(cfg)
        self.run.config.update(_plain(cfg), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, summary: bool = False) -> None:
        """Log scalar metrics (non-finite values are logged as NaN) at a step."""
        super().log_metrics(metrics, step, summary)
        row = {k: _scalar(v) for k, v in metrics.items()}
        if step is not None:
            self.run.log(row, step=int(step))
        else:
            self.run.log(row)
        if summary:
            for k, v in row.items():
                self.run.summary[k] = v

    def log_coreset(self, indices: Iterable[int], name: str = "coreset", metadata: Mapping | None = None) -> None:
        """Log the coreset indices as a wandb artifact (type 'coreset', file indices.npy)."""
        idx = np.asarray(list(indices))
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise LoggerError(f"coreset indices must be integers, got dtype {idx.dtype}")
        meta = {"size": int(idx.size), **_plain(metadata or {})}
        art = self._wandb.Artifact(_artifact_name(name), type="coreset", metadata=meta)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "indices.npy"
            np.save(p, idx.astype(np.int64))
            art.add_file(str(p), name="indices.npy")
            self.run.log_artifact(art)
        self.summary[f"{name}/size"] = int(idx.size)
        self.run.summary[f"{name}/size"] = int(idx.size)

    def log_trajectory(self, poo_values: Iterable[float], name: str = "poo") -> None:
        """Log the POO trajectory as a history series ({name}/value against its own x-axis {name}/iteration, so
        that runs can be grouped and averaged in a line panel), a table plus a line plot, and its first/last value
        in the summary."""
        vals = [float(v) for v in poo_values]
        super().log_trajectory(vals, name)
        if not vals:
            return
        # the series stay out of the summary ({name}/final has the last value) and the iteration out of auto-charts
        self.run.define_metric(f"{name}/iteration", hidden=True, summary="none")
        self.run.define_metric(f"{name}/value", step_metric=f"{name}/iteration", summary="none")
        for row in trajectory_rows(vals, name):
            self.run.log(row)
        table = self._wandb.Table(columns=["iteration", name], data=[[i, v] for i, v in enumerate(vals)])
        self.run.log({f"{name}/trajectory": table,
                      f"{name}/trajectory_plot": self._wandb.plot.line(table, "iteration", name,
                                                                        title=f"{name} per ITRA iteration")})
        for k in ("initial", "final", "steps"):
            self.run.summary[f"{name}/{k}"] = self.summary[f"{name}/{k}"]

    def log_table(self, name: str, dataframe) -> None:
        """Log a pandas DataFrame as a wandb.Table under `name`."""
        super().log_table(name, dataframe)
        df = dataframe.copy()
        for c in df.columns:  # wandb tables need JSON-able cells of one type per column
            if df[c].dtype == object:
                cells = [json.dumps(v, default=str) if isinstance(v, (list, dict, tuple, np.ndarray)) else v
                         for v in df[c]]
                kinds = {type(v) for v in cells if v is not None and not (isinstance(v, float) and np.isnan(v))}
                if len(kinds) > 1:  # e.g. lambda: numbers for GORACS, "-" for selectors without one
                    cells = [None if v is None else str(v) for v in cells]
                df[c] = cells
        self.run.log({name: self._wandb.Table(dataframe=df)})

    def finish(self, exit_code: int = 0) -> None:
        """Finish the wandb run (idempotent), so the next job of a multirun starts a fresh one."""
        if self.finished:
            return
        self.finished = True
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001 - finishing must never mask the job's own error
            log.warning("wandb finish failed: %s", e)


def trajectory_rows(values: Iterable[float], name: str = "poo") -> list[dict[str, Any]]:
    """The history rows of a POO trajectory: {name}/iteration (0, 1, ...) and {name}/value."""
    return [{f"{name}/iteration": i, f"{name}/value": float(v)} for i, v in enumerate(values)]


def offline_environment(mode: str) -> None:
    """For an offline or disabled run, say so in the environment before wandb is imported or started (its
    service process reads the environment): WANDB_MODE, and no error reporting (wandb otherwise contacts its
    servers once even for an offline run). Online runs leave the environment as it is."""
    if mode == "online":
        return
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")


def make_logger(cfg: Any = None, run_config: Any = None, **override) -> RunLogger:
    """A logger from the `logger` config group: backend wandb (mode offline|online|disabled) or none."""
    c = {**to_dict(cfg), **override}
    backend = c.pop("backend", "none" if not c else "wandb")
    if backend in (None, "none"):
        lg = RunLogger()
        if run_config is not None:
            lg.log_config(run_config)
        return lg
    if backend != "wandb":
        raise LoggerError(f"logger.backend must be 'wandb' or 'none', got {backend!r}")
    env_mode = os.environ.get("WANDB_MODE")
    mode = c.pop("mode", None) or env_mode or "offline"
    allowed = {"project", "entity", "group", "job_type", "tags", "name", "notes", "dir"}
    unknown = sorted(set(c) - allowed)
    if unknown:
        log.debug("logger config keys ignored: %s", unknown)
    return WandbLogger(mode=mode, config=run_config, **{k: v for k, v in c.items() if k in allowed})


def read_offline_run(run_dir: str | os.PathLike, wait_s: float = 30.0) -> dict[str, Any]:
    """Parse an offline run's run-*.wandb file: {'run': {...}, 'config': {...}, 'history': [...],
    'summary': {...}, 'artifacts': [...], 'complete': bool} (values JSON-decoded).

    wandb-core may still be writing just after `finish()`: wait up to wait_s for the run's exit record."""
    import time

    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.time() + wait_s
    while True:
        files = sorted(Path(run_dir).glob("run-*.wandb"))
        if not files:
            raise LoggerError(f"no run-*.wandb file in {run_dir}")
        data = files[0].read_bytes()
        if data[:4] != b":W&B":
            raise LoggerError(f"{files[0]} is not a wandb transaction log")
        records, error = [], None
        for raw in _log_records(data):
            r = pb.Record()
            try:
                r.ParseFromString(raw)
            except DecodeError as e:  # half-written records are cut off above; wait once more, then report
                error = e
                break
            records.append(r)
        complete = error is None and any(r.WhichOneof("record_type") == "exit" for r in records)
        if complete or time.time() > deadline:
            if error is not None:
                raise LoggerError(f"{files[0]}: record {len(records)} cannot be parsed ({error})") from error
            break
        time.sleep(0.2)
    out: dict[str, Any] = {"run": {}, "config": {}, "history": [], "summary": {}, "artifacts": [],
                           "complete": complete}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): _json(i.value_json) for i in r.history.item})
        elif kind == "summary":
            out["summary"].update({(i.key or "/".join(i.nested_key)): _json(i.value_json) for i in r.summary.update})
        elif kind == "config":
            out["config"].update({i.key: _json(i.value_json) for i in r.config.update})
        elif kind == "run":
            out["run"] = {"project": r.run.project, "group": r.run.run_group, "job_type": r.run.job_type,
                          "tags": list(r.run.tags), "run_id": r.run.run_id}
            out["config"].update({i.key: _json(i.value_json) for i in r.run.config.update})
        elif kind == "artifact":
            out["artifacts"].append({"name": r.artifact.name, "type": r.artifact.type,
                                     "files": [m.path for m in r.artifact.manifest.contents]})
    return out


def _log_records(data: bytes, block: int = 32768) -> list[bytes]:
    """Records of a LevelDB-style log (7-byte file header; 7-byte record headers; 32 KiB blocks)."""
    recs, buf, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, ln, typ = struct.unpack("<IHB", data[pos:pos + 7])
        if typ == 0 and ln == 0:
            pos += left
            continue
        if pos + 7 + ln > len(data):  # the writer has not finished this record yet
            break
        chunk = data[pos + 7:pos + 7 + ln]
        pos += 7 + ln
        if typ == 1:
            recs.append(chunk)
        elif typ == 2:
            buf = chunk
        elif typ == 3:
            buf += chunk
        elif typ == 4:
            recs.append(buf + chunk)
            buf = b""
    return recs


def _json(s: str) -> Any:
    try:
        return json.loads(s)
    except (ValueError, TypeError):
        return s


def _artifact_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)


def _scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _plain(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    d = to_dict(cfg)
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
