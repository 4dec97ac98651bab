"""Faults 1, 2 and 4: `dvc repro` and `snakemake --cores 2` killed outright (SIGKILL to everything they started) at
seeded moments, then run again with the same command; and a second `dvc repro` started while one runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from faultkit.lab import DVC, SNAKEMAKE, Lab
from faultkit.outcome import Tally, Trial
from faultkit.procs import DVC_STAGE, SNAKEMAKE_JOB, Lines

LOCKED = "Directory cannot be locked"  # Snakemake's refusal while its lock is left by a killed run
AFTER = {  # a trial's notes
    "unlocked": " after snakemake --unlock",
    "restored dvc.lock": " after restoring dvc.lock",
    "removed .dvc/tmp/rwlock": " after removing .dvc/tmp/rwlock",
}
# DVC's refusals while another `dvc repro` runs: its workspace lock (held except while a stage's command runs), or
# the lock on the outputs of the stage the other one runs.
DVC_LOCKED = ("Unable to acquire lock", "is busy, it is being blocked by")
# DVC rewrites dvc.lock in place after each stage (dvc/utils/serialize/_common.py opens it "w+"; a few tenths of a
# second for the demo's): a kill meanwhile leaves it cut short, and the rerun stops at once with one of these.
# docs/reliability.md gives the step back, which restore_lockfile takes.
LOCKFILE_CUT = re.compile(r"'(\./)?dvc\.lock' (is invalid|validation failed)")
# DVC records which outputs its running commands hold in .dvc/tmp/rwlock, rewritten in place the same way
# (dvc/rwlock.py opens it "w"): a kill meanwhile leaves it empty, and every later run stops at once with this.
RWLOCK_CUT = re.compile(r"Unable to read RWLock-file '(\./)?\.dvc/tmp/rwlock'\. JSON structure is corrupted")


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def errors(output: str) -> str:
    """What a failed command said: its `ERROR`/`error:` lines, else its first line."""
    lines = [line for line in output.splitlines() if line.startswith(("ERROR", "error:"))]
    return " / ".join(line[:300] for line in lines or [line for line in output.splitlines() if line.strip()][:1])


def restore_lockfile(root: Path) -> None:
    """dvc.lock as last committed, or none where it never was (`dvc repro` then restores every stage from its run
    cache): the step back after a kill cut it short."""
    committed = ["git", "ls-files", "--error-unmatch", "dvc.lock"]
    if subprocess.run(committed, cwd=root, capture_output=True, check=False).returncode == 0:
        subprocess.run(["git", "checkout", "--", "dvc.lock"], cwd=root, capture_output=True, check=True)
    else:
        (root / "dvc.lock").unlink()


def remove_rwlock(root: Path) -> None:
    """No .dvc/tmp/rwlock, which DVC makes again: the step back after a kill left it empty. It only records what
    running DVC commands hold, so with none running nothing is lost."""
    (root / ".dvc" / "tmp" / "rwlock").unlink(missing_ok=True)


# What a kill can leave half-written in DVC's own files: the refusal the rerun stops with, and the step back.
STEPS_BACK = (
    (LOCKFILE_CUT, restore_lockfile, "restored dvc.lock"),
    (RWLOCK_CUT, remove_rwlock, "removed .dvc/tmp/rwlock"),
)


def killed_trial(lab: Lab, tool: str, name: str, moment: float) -> Trial:
    """One run of `tool` killed at `moment`, then the same command again: for Snakemake after `snakemake --unlock`
    when its stale lock refuses the rerun, as its message says; for DVC after the step back (STEPS_BACK) when the
    kill cut dvc.lock or .dvc/tmp/rwlock short."""
    root = lab.trial(name)
    command = lab.command(tool)
    first = lab.run(command, root, kill_at=moment)
    notes = []
    rerun = lab.run(command, root)
    if tool == SNAKEMAKE and rerun.returncode != 0 and LOCKED in rerun.output:
        lab.run(["snakemake", "--unlock"], root)
        notes.append("unlocked")
        rerun = lab.run(command, root)
    for refusal, step_back, note in STEPS_BACK if tool == DVC else ():
        if rerun.returncode != 0 and refusal.search(rerun.output):
            step_back(root)
            notes.append(note)
            rerun = lab.run(command, root)
    trial = lab.judge(root, tool=tool, injected=first.killed, recovered=rerun.returncode == 0, notes=notes)
    where = first.running_at(moment, DVC_STAGE if tool == DVC else SNAKEMAKE_JOB)
    verdict = "finished before the kill" if not first.killed else f"killed in {where}"
    failure = "" if trial.recovered else f" ({errors(rerun.output)})"
    progress(
        f"{name}: at {moment:.1f} s {verdict}; rerun {'ok' if trial.recovered else 'FAILED'}{failure} in "
        f"{rerun.seconds:.0f} s"
        f"{''.join(AFTER[note] for note in notes)}; "
        f"{'identical' if trial.identical else 'DIFFERENT: ' + ', '.join(trial.differences[:5])}; "
        f"stuck runs {len(trial.stuck)}{': ' + ', '.join(trial.stuck) if trial.stuck else ''}"
    )
    lab.discard(root)
    return trial


def kills(lab: Lab, tool: str, count: int) -> Tally:
    """`count` runs of `tool`, each killed at a moment drawn uniformly over the uninterrupted `dvc repro`'s duration
    (Snakemake runs the same jobs, its two folds side by side, and takes about as long)."""
    kind = "dvc repro, kill -9" if tool == DVC else "snakemake --cores 2, kill -9"
    tally = Tally(kind)
    if count == 0:
        return tally
    duration = lab.baseline().run.seconds
    rng = lab.plan.rng(f"{tool}-kills")
    moments = [rng.uniform(0, duration) for _ in range(count)]
    for i, moment in enumerate(moments, 1):
        tally.trials.append(killed_trial(lab, tool, f"{tool}-kill-{i}", moment))
    missed = sum(not t.injected for t in tally.trials)
    if missed:
        tally.notes.append(f"{missed} of {count} runs finished before their kill")
    unlocked = sum("unlocked" in t.notes for t in tally.trials if t.injected)
    if unlocked:
        tally.notes.append(f"{unlocked} reruns needed `snakemake --unlock` first, as Snakemake's message says")
    restored = sum("restored dvc.lock" in t.notes for t in tally.trials if t.injected)
    if restored:
        tally.notes.append(f"{restored} reruns found dvc.lock cut short by the kill, and ran after restoring it")
    return tally


def second_repro(lab: Lab) -> Tally:
    """A second `dvc repro` started at a seeded moment while the first runs: DVC refuses it with its lock message,
    and the first ends as an uninterrupted run does.

    The moment is a stage of the uninterrupted run and half the seconds into it that the draw gives, counted from
    that stage's start in the first run: a moment on the whole run's clock could fall after the end of a run that
    goes faster (a busy machine makes the baseline slow)."""
    tally = Tally("second dvc repro meanwhile")
    stage, offset = lab.baseline().run.moment_in(lab.plan.rng("second-repro").random())
    root = lab.trial("second-repro")
    second = []

    def start_second(elapsed: float, lines: Lines) -> None:
        started = [at for at, line in lines if f"Running stage '{stage}'" in line]
        if started and elapsed >= started[0] + offset / 2 and not second:
            second.append(lab.run(lab.command(DVC), root, timeout=600))

    first = lab.run(lab.command(DVC), root, during=start_second)
    refused = bool(second) and second[0].returncode != 0 and any(text in second[0].output for text in DVC_LOCKED)
    notes = [] if refused else ["the second run was not refused with DVC's lock message"] * bool(second)
    trial = lab.judge(root, tool=DVC, injected=bool(second), recovered=refused and first.returncode == 0, notes=notes)
    progress(
        f"second dvc repro {offset / 2:.1f} s into {stage}: exit {second[0].returncode if second else '-'}: "
        f"{errors(second[0].output)[:200] if second else 'never started'}; the first: exit {first.returncode}, "
        f"{'identical' if not trial.differences else 'DIFFERENT: ' + ', '.join(trial.differences[:5])}"
    )
    tally.trials.append(trial)
    tally.notes += notes
    lab.discard(root)
    return tally
