"""Progress that fits where it goes: a bar on a terminal; in a file or pipe (nohup, Slurm, `> log 2>&1`) plain
lines, no escape codes, no carriage returns -- in the console output and in the run's own log file."""
import io
import os
import subprocess
import sys

from helpers import ROOT, tiny_options, write_options


def _clean(text: str, where: str) -> None:
    assert "\x1b" not in text, f"escape code in {where}:\n{text[-2000:]!r}"
    assert "\r" not in text, f"carriage return in {where}:\n{text[-2000:]!r}"


def test_train_eval_shards_restore_redirected_to_a_file_write_plain_lines(demo_root, tmp_path):
    opt = tiny_options(demo_root, tmp_path / "exp", name="quiet")
    opt["train"]["total_iter"] = 4
    opt["val"]["val_freq"] = 2
    opt["logger"]["save_checkpoint_freq"] = 4
    train_opt = write_options(tmp_path / "quiet.yml", opt)
    eval_opt = write_options(tmp_path / "eval.yml", {
        "name": "quiet_eval", "results_root": str(tmp_path / "results"), "model": {"run": str(tmp_path / "exp/quiet")},
        "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo_root), "split": "test"}},
        "metrics": ["psnr", "ssim"]})
    log = tmp_path / "console.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), GGT_IR_PROGRESS_EVERY="0")  # a line for every update
    env.pop("GGT_IR_PROGRESS", None)
    py, ggt = sys.executable, [sys.executable, "-m", "ggt_ir"]
    commands = [[py, str(ROOT / "train.py"), "-opt", str(train_opt)],
                [*ggt, "eval", "-opt", str(eval_opt)],
                [*ggt, "shards", "build", str(demo_root), "--out", str(tmp_path / "shards"), "--name", "q",
                 "--max-samples-per-shard", "4", "--jobs", "1"],
                [*ggt, "restore", str(next(demo_root.glob("test/rain/LQ"))), "-o", str(tmp_path / "restored"),
                 "--run", str(tmp_path / "exp/quiet"), "--device", "cpu"]]
    with open(log, "w") as f:  # what `> log 2>&1` gives a program: not a terminal
        for cmd in commands:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=300).returncode
            assert rc == 0, f"{cmd} failed:\n{log.read_text()[-3000:]}"
    console = log.read_text()
    _clean(console, "the console output")
    assert "eval test: " in console and " img (" in console  # periodic eval lines
    assert "val val: " in console  # periodic validation lines
    assert "shards q: " in console and "restore: " in console
    (run_log,) = (tmp_path / "exp/quiet").glob("train_quiet_*.log")
    _clean(run_log.read_text(), "the run's log file")
    assert "iter:" in run_log.read_text()


def test_a_terminal_gets_a_bar_and_a_file_lines(monkeypatch):
    from ggt_ir.utils.progress import LineProgress, progress, progress_mode

    monkeypatch.delenv("GGT_IR_PROGRESS", raising=False)
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        assert progress_mode(tty) == "bar"
        assert not isinstance(progress(range(3), file=tty), LineProgress)
    os.close(master)
    buf = io.StringIO()
    assert progress_mode(buf) == "lines"
    bar = progress(range(5), desc="work", unit="img", file=buf, every_s=0)
    assert list(bar) == [0, 1, 2, 3, 4]
    bar.close()
    text = buf.getvalue()
    assert "work: 1/5 img (20%)" in text and "work: 5/5 img done in" in text
    _clean(text, "line progress")
    monkeypatch.setenv("GGT_IR_PROGRESS", "off")
    quiet = io.StringIO()
    list(progress(range(3), file=quiet, every_s=0))
    assert quiet.getvalue() == ""
