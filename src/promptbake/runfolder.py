"""The run folder contract (DESIGN.md "The run folder"): paths, atomic writes, and the no-silent-overwrite rule."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError

LOCK = ".lock"

BAKE_JSON = "bake.json"
SYSTEM_PROMPT = "system_prompt.txt"
CONFIG_YAML = "config.yaml"
QUESTIONS = "questions.jsonl"          # the questions of the split: question, split, source, relevance
TRAJECTORIES = "trajectories.jsonl"
SAMPLING_PROGRESS = "trajectories.partial.jsonl"   # sampled batches of a running bake; gone once sampling ends
METRICS = "metrics.jsonl"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
START_ADAPTER = "start_adapter"        # combine: the exact sum of the combined bakes, where its distillation starts
RECORD_KEYS = ("status", "model", "system_prompt", "config")   # written together with the first bake.json
DAMAGED = "the run folder is damaged; bake it again (--overwrite replaces it)"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and flush it to disk (a crash loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def atomic_save_dir(final: Path, write) -> None:
    """Call `write(tmp_dir)` to fill a fresh folder, then move it into place as `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        write(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_names(run_dir: Path) -> list[str]:
    """The run's saved checkpoints (checkpoints/step-N folders), in step order."""
    folder = Path(run_dir) / CHECKPOINTS
    names = [p.name for p in folder.glob("step-*") if p.is_dir()] if folder.is_dir() else []
    return sorted(names, key=lambda n: int(n.split("-")[1]))


def read_bake_json(run_dir: Path) -> dict:
    """The run folder's bake.json record; a missing folder or a damaged record is a one-line UserError."""
    run_dir = Path(run_dir)
    path = run_dir / BAKE_JSON
    if not run_dir.exists():
        raise UserError(f"{run_dir} is not a promptbake run folder: it does not exist; give the --out folder of a "
                        f"`promptbake bake`")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a promptbake run folder: it is a file; give the --out folder of a "
                        f"`promptbake bake`")
    if not path.is_file():
        raise UserError(f"{run_dir} is not a promptbake run folder (no {BAKE_JSON}); bake one with `promptbake bake`")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; {DAMAGED}") from None
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); {DAMAGED}") from None
    if not isinstance(record, dict):
        raise UserError(f"{path} holds a JSON {type(record).__name__}, not the bake record (an object); {DAMAGED}")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise UserError(f"{path} lacks {', '.join(map(repr, missing))}; {DAMAGED}")
    return record


def read_finished_bake(run_dir: Path, name: str = "") -> dict:
    """bake.json of a run folder that holds a finished bake with its adapter; `name` prefixes the message (e.g. --on)."""
    run_dir = Path(run_dir)
    record = read_bake_json(run_dir)
    if record.get("status") != "finished" or not (run_dir / ADAPTER / "adapter_model.safetensors").is_file():
        raise UserError(f"{name + ' ' if name else ''}{run_dir} is not a finished bake (status: "
                        f"{record.get('status')}); finish it first")
    return record


def check_out_dir(out: Path, overwrite: bool) -> bool:
    """Raise unless `out` may receive a new run; True when it holds a previous run that overwrite will replace."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    if not out.exists() or not any(p.name != LOCK for p in out.iterdir()):
        return False
    if not (out / BAKE_JSON).exists():
        raise UserError(f"--out {out} is a non-empty folder that is not a promptbake run; choose a new or empty folder")
    if not overwrite:
        status = read_bake_json(out).get("status", "unknown")
        if status == "finished":
            raise UserError(f"--out {out} already holds a finished bake; choose another --out or pass --overwrite "
                            f"to replace it")
        raise UserError(f"--out {out} already holds an unfinished bake (status: {status}); pass --resume to "
                        f"continue it, or --overwrite to replace it")
    return True


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Create `out`, or clear a previous run's own files when overwriting (nothing else in the folder is touched)."""
    out = Path(out)
    if not check_out_dir(out, overwrite):
        out.mkdir(parents=True, exist_ok=True)
        return
    for name in (BAKE_JSON, SYSTEM_PROMPT, CONFIG_YAML, TRAJECTORIES, METRICS, "report.html"):
        (out / name).unlink(missing_ok=True)
    for name in (ADAPTER, CHECKPOINTS):
        shutil.rmtree(out / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold DIR/.lock (our pid) while writing a run folder; a second writer gets a clear error.

    A lock left by a process that no longer exists (killed) is taken over.
    """
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _alive(holder):
                raise UserError(f"another promptbake process (pid {holder}) is writing {run_dir}; wait for it or "
                                f"stop it") from None
            path.unlink(missing_ok=True)   # stale: its writer is gone
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def update_status(run_dir: Path, **changes) -> dict:
    """Change fields of DIR/bake.json (status, stage, metrics, …) atomically."""
    record = read_bake_json(run_dir)
    record.update(changes)
    atomic_write_json(run_dir / BAKE_JSON, record)
    return record


def absolute_paths(config):
    """Paths in the config, made absolute for saving: config.yaml and bake.json then reload (resume, eval) from any
    directory. Messages about the paths keep the user's own spelling, so only what is saved is converted."""
    from .config import override
    from .questions import is_generated

    changes = {}
    if not is_generated(config.sample.questions):
        changes["sample.questions"] = str(Path(config.sample.questions).expanduser().resolve())
    for key, name in (("model.name", config.model.name), ("sample.question_model", config.sample.question_model),
                      ("train.start_adapter", config.train.start_adapter)):
        if name and Path(name).expanduser().exists():
            changes[key] = str(Path(name).expanduser().resolve())
    return override(config, changes) if changes else config
