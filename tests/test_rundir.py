"""The run directory has one owner (ppo_align.rundir), and the README lists what it owns."""

from __future__ import annotations

from conftest import REPO

from ppo_align import rundir
from ppo_align.rundir import RunDir


def test_readme_lists_the_run_directory_as_rundir_defines_it():
    assert rundir.listing() in (REPO / "README.md").read_text(), (
        "README.md's run-directory block differs from ppo_align.rundir.LAYOUT; "
        "fix: paste the output of `python -c 'from ppo_align import rundir; print(rundir.listing())'`")


def test_every_path_a_run_directory_hands_out_is_in_the_layout(tmp_path):
    run = RunDir(tmp_path / "runs" / "demo")
    paths = [run.recipe, run.info, run.metrics, run.samples, run.monitor, run.reward_audit, run.warm_start,
             run.warm_start_adapter, run.reward_model, run.reward_model_adapter, run.checkpoint(7), run.eval,
             run.results, run.eval_cache, run.review_sheet, run.report, *(run.log(name) for name in rundir.LOGS)]
    documented = set(rundir.LAYOUT)
    for path in paths:
        top = path.relative_to(run.path).parts[0]
        entry = top + "/" if top not in documented else top
        entry = "checkpoint-<step>/" if rundir.CHECKPOINT_NAME.match(top) else entry
        assert entry in documented, f"{path} is not documented in rundir.LAYOUT"
    assert not (tmp_path / "runs").exists()  # naming paths creates nothing


def test_pruning_old_checkpoints_keeps_the_best(tmp_path):
    """keep_checkpoints keeps the newest N and never deletes the checkpoint the behaviour rules chose."""
    import json

    from ppo_align import checkpoints

    run = RunDir(tmp_path / "run")
    for step, ok in ((1, False), (2, True), (3, False), (4, False)):
        path = run.checkpoint(step)
        path.mkdir(parents=True)
        (path / checkpoints.PROGRESS).write_text(json.dumps({"monitor": {"ok": ok}}))
        (path / checkpoints.COMPLETE).write_text("")
    checkpoints.prune(run.path, keep=1)
    assert [c.step for c in checkpoints.find_checkpoints(run.path)] == [2, 4]
    assert checkpoints.best(run.path).step == 2
