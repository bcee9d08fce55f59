"""TqdmProgress writes plain lines, not carriage-return bars, when stderr is a log file."""
from prunekit.cli.console import TqdmProgress


def test_log_file_progress_writes_plain_lines_and_skips_quick_deep_tasks(capsys):
    progress = TqdmProgress(interactive=False, log_every=3600)
    with progress.task("search", total=2) as outer:
        for _ in range(2):
            with progress.task("fine-tune", total=3) as inner:
                with progress.task("evaluate", total=1) as deep:
                    deep.advance()
                inner.advance(3)
                inner.note(val_acc=0.5)
            outer.advance()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 3
    for line in lines[:2]:  # depth 1: one end line per fine-tune, with its notes
        assert line.startswith("  fine-tune: done 3/3 in ") and line.endswith(" s, val_acc=0.5")
    assert lines[2].startswith("search: done 2/2 in ")
    assert not any("evaluate" in line for line in lines)  # depth 2 and quick: silent


def test_log_file_progress_reports_periodically(capsys):
    progress = TqdmProgress(interactive=False, log_every=0.0)
    with progress.task("train", total=3) as task:
        task.advance()
        task.advance()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["train: at 1/3", "train: at 2/3", "train: done 2/3"]


def test_quiet_progress_writes_nothing(capsys):
    progress = TqdmProgress(quiet=True, interactive=False)
    with progress.task("train", total=1) as task:
        task.advance()
    progress.message("hello")
    assert capsys.readouterr().err == ""
