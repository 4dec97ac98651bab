"""Faults 1, 2 and 4: `dvc repro` and `snakemake --cores 2` killed outright (SIGKILL to everything they started) at
seeded moments, then run again with the same command; and a second `dvc repro` started while one runs."""

from __future__ import annotations

import sys

from faultkit.lab import DVC, SNAKEMAKE, Lab
from faultkit.outcome import Tally, Trial
from faultkit.procs import DVC_STAGE, SNAKEMAKE_JOB, Lines

LOCKED = "Directory cannot be locked"  # Snakemake's refusal while its lock is left by a killed run
# DVC's refusals while another `dvc repro` runs: its workspace lock (held except while a stage's command runs), or
# the lock on the outputs of the stage the other one runs.
DVC_LOCKED = ("Unable to acquire lock", "is busy, it is being blocked by")


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def killed_trial(lab: Lab, tool: str, name: str, moment: float) -> Trial:
    """One run of `tool` killed at `moment`, then the same command again (for Snakemake, after `snakemake
    --unlock` when its stale lock refuses the rerun, as its message says)."""
    root = lab.trial(name)
    command = lab.command(tool)
    first = lab.run(command, root, kill_at=moment)
    notes = []
    rerun = lab.run(command, root)
    if tool == SNAKEMAKE and rerun.returncode != 0 and LOCKED in rerun.output:
        lab.run(["snakemake", "--unlock"], root)
        notes.append("unlocked")
        rerun = lab.run(command, root)
    trial = lab.judge(root, tool=tool, injected=first.killed, recovered=rerun.returncode == 0, notes=notes)
    where = first.running_at(moment, DVC_STAGE if tool == DVC else SNAKEMAKE_JOB)
    verdict = "finished before the kill" if not first.killed else f"killed in {where}"
    progress(
        f"{name}: at {moment:.1f} s {verdict}; rerun {'ok' if trial.recovered else 'FAILED'} in {rerun.seconds:.0f} s"
        f"{' after snakemake --unlock' if notes else ''}; "
        f"{'identical' if trial.identical else 'DIFFERENT: ' + ', '.join(trial.differences[:5])}; "
        f"stuck runs {len(trial.stuck)}{': ' + ', '.join(trial.stuck) if trial.stuck else ''}"
    )
    lab.discard(root)
    return trial


def kills(lab: Lab, tool: str, count: int) -> Tally:
    """`count` runs of `tool`, each killed at a moment drawn uniformly over the uninterrupted run's duration."""
    kind = "dvc repro, kill -9" if tool == DVC else "snakemake --cores 2, kill -9"
    tally = Tally(kind)
    if count == 0:
        return tally
    duration = lab.baseline(tool).run.seconds
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
    return tally


def second_repro(lab: Lab) -> Tally:
    """A second `dvc repro` started at a seeded moment while the first runs: DVC refuses it with its lock message,
    and the first ends as an uninterrupted run does.

    The moment is a stage of the uninterrupted run and half the seconds into it that the draw gives, counted from
    that stage's start in the first run: a moment on the whole run's clock could fall after the end of a run that
    goes faster (a busy machine makes the baseline slow)."""
    tally = Tally("second dvc repro meanwhile")
    stage, offset = lab.baseline(DVC).run.moment_in(lab.plan.rng("second-repro").random())
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
    refusal = [line for line in second[0].output.splitlines() if line.startswith("ERROR")] if second else []
    progress(
        f"second dvc repro {offset / 2:.1f} s into {stage}: exit {second[0].returncode if second else '-'}: "
        f"{(refusal or ['never started'])[0][:200]}; the first: exit {first.returncode}, "
        f"{'identical' if not trial.differences else 'DIFFERENT: ' + ', '.join(trial.differences[:5])}"
    )
    tally.trials.append(trial)
    tally.notes += notes
    lab.discard(root)
    return tally
