"""Faults 5 and 6: the disk filling up during an output write (results/ on a small tmpfs), and a feature-cache
entry or a checkpoint truncated or corrupted on disk."""

from __future__ import annotations

import io
import os
import re
import subprocess
import zipfile
from pathlib import Path

from faultkit.kills import progress
from faultkit.lab import DVC, Lab
from faultkit.outcome import Tally, Trial, leftovers

MiB = 1 << 20


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def mount_tmpfs(folder: Path, size: int, *, remount: bool = False) -> None:
    options = f"{'remount,' if remount else ''}size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)


def stage_outputs(lock: dict, stage: str) -> list[str]:
    return [out["path"] for out in lock["stages"].get(stage, {}).get("outs", [])]


def disk_full(lab: Lab) -> Tally:
    """results/ on a tmpfs of a seeded 25 to 75 % of what the run writes there: a stage's write fails. It must say
    so in one line naming the file and leave nothing partial; with space freed (the tmpfs grown), `dvc repro`
    completes."""
    tally = Tally("disk full during a write")
    if os.geteuid() != 0:
        tally.notes.append("skipped: mounting a tmpfs needs root")
        return tally
    baseline = lab.baseline()
    needed = folder_bytes(baseline.root / "results")
    size = int(lab.plan.rng("disk-full").uniform(0.25, 0.75) * needed)
    root = lab.trial("disk-full")
    results = root / "results"
    kept = {path: path.read_bytes() for path in results.rglob("*") if path.is_file()}  # graph.KEPT's, if any
    results.mkdir(exist_ok=True)
    mount_tmpfs(results, size)
    for path, data in kept.items():  # the mount hides them
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    try:
        first = lab.run(lab.command(DVC), root)
        failed = re.search(r"failed to reproduce '([^']+)'", first.output)
        errors = [line for line in first.output.splitlines() if line.startswith("error: ")]
        clear = any("no space left" in line for line in errors)
        stage = failed[1] if failed else "none"
        partial = leftovers(root) + [
            p for p in stage_outputs(baseline.snapshot.lock or {}, stage) if (root / p).exists()
        ]
        notes = [] if clear else ["no one-line `error: ... no space left` message"]
        notes += [f"left after the failure: {', '.join(partial)}"] if partial else []
        mount_tmpfs(results, 4 * needed + 64 * MiB, remount=True)  # space freed
        rerun = lab.run(lab.command(DVC), root)
        ok = first.returncode != 0 and clear and not partial and rerun.returncode == 0
        trial = lab.judge(root, tool=DVC, injected=first.returncode != 0, recovered=ok, notes=notes)
    finally:
        subprocess.run(["umount", "-l", str(results)], check=False)
    shown = (errors or first.output.strip().splitlines()[-1:] or ["no output"])[0]
    progress(f"disk full ({size / MiB:.0f} MiB of the {needed / MiB:.0f} MiB needed) in {stage}: {shown}")
    tally.trials.append(trial)
    tally.notes += notes
    lab.discard(root)
    return tally


def flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest record of a torch file (plain, or behind a digest line): damage
    that torch.load does not notice, as its zip reader checks no checksum."""
    data = bytearray(path.read_bytes())
    start = data.index(b"PK\x03\x04")
    with zipfile.ZipFile(io.BytesIO(bytes(data[start:]))) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    header = start + record.header_offset
    skip = (
        30
        + int.from_bytes(data[header + 26 : header + 28], "little")
        + int.from_bytes(data[header + 28 : header + 30], "little")
    )
    data[header + skip + record.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def taken_checkpoint(lab: Lab, fold: int) -> Path:
    """A real checkpoint of fold `fold`: in a scratch copy of the uninterrupted run, the fold retrained and killed
    as soon as its checkpoint (written after its last epoch, train.checkpoint_every_s: 0) exists."""
    scratch = lab.trial("checkpoint-source", source=lab.baseline().root)
    checkpoint = scratch / "results" / "train" / f"fold_{fold}" / "checkpoint.pt"

    def taken(*_: object) -> None:
        if checkpoint.is_file():
            raise StopIteration

    lab.run(["dvc", "repro", "-f", "-s", f"train@{fold}"], scratch, during=taken)
    kept = lab.folder / f"checkpoint-fold_{fold}.pt"
    if checkpoint.is_file():
        checkpoint.replace(kept)
    lab.discard(scratch)
    return kept


def damaged_run(lab: Lab, name: str, *, entry: str, checkpoint: Path | None, fold: int) -> list[Trial]:
    """A fresh copy of the template whose feature cache holds the uninterrupted run's entry, `truncated` or
    `corrupted`, and (with `checkpoint`) fold `fold`'s checkpoint corrupted, then `dvc repro`: each must be named
    in a warning and computed again, never used (the outputs are the uninterrupted run's)."""
    root = lab.trial(name)
    cache = lab.baseline().root / ".burrscope-cache" / "features"
    source = lab.plan.rng(name).choice(sorted(cache.glob("*.pt")))
    damaged = root / ".burrscope-cache" / "features" / source.name
    damaged.parent.mkdir(parents=True)
    data = source.read_bytes()
    damaged.write_bytes(data[: len(data) // 2] if entry == "truncated" else data)
    if entry == "corrupted":
        flip_a_tensor_byte(damaged)
    target = Path("results", "train", f"fold_{fold}", "checkpoint.pt")
    if checkpoint is not None:
        (root / target).parent.mkdir(parents=True)
        (root / target).write_bytes(checkpoint.read_bytes())
        flip_a_tensor_byte(root / target)
    finished = lab.run(lab.command(DVC), root)
    lines = finished.output.splitlines()
    warned = {
        f"{entry} cache entry": any(
            "warning: ignoring the feature cache entry" in line and source.name in line for line in lines
        )
    }
    if checkpoint is not None:
        warned["corrupted checkpoint"] = f"warning: ignoring {target}: its bytes do not match" in finished.output
    trials = []
    for what, named in warned.items():
        notes = [] if named else [f"no warning named the {what}"]
        trials.append(
            lab.judge(root, tool=DVC, injected=True, recovered=named and finished.returncode == 0, notes=notes)
        )
        progress(f"{what}: {'named in a warning' if named else 'NOT named'}; identical: {trials[-1].identical}")
    lab.discard(root)
    return trials


def corrupt_files(lab: Lab) -> Tally:
    """A fresh run per damaged feature-cache entry of the plan (by default two: a truncated entry, then a corrupted
    one); the last also meets a corrupted checkpoint of a seeded fold."""
    tally = Tally("corrupt cache entry or checkpoint")
    fold = lab.plan.rng("corrupt-files").choice(list(lab.plan.settings.get("split.fold_ids", [0, 1])))
    checkpoint = taken_checkpoint(lab, fold)
    if not checkpoint.is_file():
        tally.notes.append("no checkpoint could be taken: the fold ended first")
    for i, entry in enumerate(lab.plan.cache_damage, 1):
        last = i == len(lab.plan.cache_damage)
        with_checkpoint = checkpoint if last and checkpoint.is_file() else None
        name = f"cache-{entry}" + ("-and-checkpoint" if with_checkpoint else "")
        tally.trials += damaged_run(lab, name, entry=entry, checkpoint=with_checkpoint, fold=fold)
    tally.notes += [note for trial in tally.trials for note in trial.notes]
    return tally
