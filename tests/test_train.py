"""The trainer end to end on CPU: outputs, exact resume, non-finite losses, accumulation, checkpoints."""
import json

import pytest
import torch
from safetensors.torch import load_file

from ggt_ir.train.options import load_options
from ggt_ir.train.checkpoint import list_checkpoints, resolve_resume
from ggt_ir.train.trainer import Trainer
from helpers import tiny_options, write_options


def _opts(demo_root, tmp_path, name="tiny", overrides=None, **over):
    path = write_options(tmp_path / f"{name}.yml", tiny_options(demo_root, tmp_path / "exp", name=name, **over))
    return load_options(path, overrides)


def _train(opt, resume=None):
    return Trainer(opt, resume=resume, command="pytest").fit()


def test_end_to_end_outputs(demo_root, tmp_path):
    opt = _opts(demo_root, tmp_path)
    summary = _train(opt)
    run = tmp_path / "exp" / "tiny"
    assert summary["iter"] == 6
    assert (run / "options.yml").read_text().startswith("# command: pytest")
    assert list(run.glob("train_tiny_*.log"))
    # checkpoints at 3 and 6, both kept (keep_last 2), no temporary folders left
    assert [i for i, _ in list_checkpoints(run / "checkpoints")] == [3, 6]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    weights = load_file(str(run / "models" / "net_g_6.safetensors"))
    assert any(k.startswith("params.") for k in weights) and any(k.startswith("params_ema.") for k in weights)
    results = json.loads((run / "results.json").read_text())
    assert set(results["last"]) == {"val/psnr", "val/ssim"} and set(results["input"]) == {"val/psnr", "val/ssim"}
    assert results["best"]["val/psnr"]["iter"] in (3, 6)
    assert (run / "sample_lq_output_hq.png").is_file()
    assert list((run / "visualization" / "val").glob("*_6.png"))


def _final_weights(run):
    return load_file(str(run / "models" / "net_g_latest.safetensors"))


def test_resume_is_exact(demo_root, tmp_path, monkeypatch):
    """2N iterations straight == N iterations, killed, resumed for N more (same weights, EMA, counters)."""
    straight = _opts(demo_root, tmp_path, name="straight")
    _train(straight)

    killed = _opts(demo_root, tmp_path, name="killed")
    original_save = Trainer.save

    def save_then_die(self):
        original_save(self)
        if self.state.iter == 3:
            raise KeyboardInterrupt("simulated kill right after the checkpoint at iteration 3")

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(killed)
    monkeypatch.setattr(Trainer, "save", original_save)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    summary = _train(_opts(demo_root, tmp_path, name="killed"), resume="latest")
    assert summary["iter"] == 6
    a, b = _final_weights(tmp_path / "exp" / "straight"), _final_weights(tmp_path / "exp" / "killed")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"resumed run differs from the uninterrupted one by {worst}"
    # the weights really moved between the kill and the end, so the comparison is meaningful
    mid = load_file(str(tmp_path / "exp" / "straight" / "models" / "net_g_3.safetensors"))
    assert max((a[k].float() - mid[k].float()).abs().max().item() for k in a) > 1e-4


def test_nonfinite_loss_stops_with_iteration_or_skips(demo_root, tmp_path, monkeypatch):
    from ggt_ir import losses

    calls = {"n": 0}
    original = losses.L1Loss.elementwise

    def poisoned(self, pred, target):
        calls["n"] += 1
        e = original(self, pred, target)
        return e * float("nan") if calls["n"] == 2 else e

    monkeypatch.setattr(losses.L1Loss, "elementwise", poisoned)
    from ggt_ir.train.step_api import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="iteration 2"):
        _train(_opts(demo_root, tmp_path, name="nan_stop"))
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    calls["n"] = 0
    summary = _train(_opts(demo_root, tmp_path, name="nan_skip", train__skip_nonfinite=True))
    assert summary["nonfinite_steps"] == 1 and summary["iter"] == 6
    w = _final_weights(tmp_path / "exp" / "nan_skip")
    assert all(torch.isfinite(v).all() for v in w.values())


def test_gradient_accumulation_and_bf16(demo_root, tmp_path):
    opt = _opts(demo_root, tmp_path, name="accum", train__gradient_accumulation_steps=2,
                train__mixed_precision="bf16", train__total_iter=2, val__val_freq=2,
                logger__save_checkpoint_freq=2)
    summary = _train(opt)
    assert summary["iter"] == 2 and summary["last"]["val/psnr"] > 0


def test_interrupted_checkpoint_write_is_never_taken_as_latest(demo_root, tmp_path):
    opt = _opts(demo_root, tmp_path, name="atomic", train__total_iter=3)
    _train(opt)
    root = tmp_path / "exp" / "atomic" / "checkpoints"
    (root / ".tmp-checkpoint-9").mkdir()  # what a kill during a write leaves behind
    assert resolve_resume("latest", root).name == "checkpoint-3"
    with pytest.raises(ValueError, match="incomplete"):
        resolve_resume(str(root / ".tmp-checkpoint-9"), root)
    with pytest.raises(FileNotFoundError, match="checkpoint-1000"):
        resolve_resume(str(root / "nope"), root)


def test_existing_run_folder_is_archived_not_overwritten(demo_root, tmp_path):
    _train(_opts(demo_root, tmp_path, name="again", train__total_iter=1))
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    _train(_opts(demo_root, tmp_path, name="again", train__total_iter=1))
    assert len(list((tmp_path / "exp").glob("again_archived_*"))) == 1


def _no_wandb_credentials(monkeypatch, tmp_path):
    """No key anywhere wandb looks: environment, ~/.netrc, wandb's settings (a fresh HOME)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    return home


def test_trackers_receive_scalars_and_images_offline(demo_root, tmp_path, monkeypatch):
    _no_wandb_credentials(monkeypatch, tmp_path)  # the trainer must pick offline mode by itself
    opt = _opts(demo_root, tmp_path, name="tracked", train__total_iter=3, logger__trackers=["tensorboard", "wandb"])
    _train(opt)
    run = tmp_path / "exp" / "tracked"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [p.parent for p in (run / "tb").rglob("events.out.tfevents.*")]
    tags = {"scalars": set(), "images": set()}
    for d in events:
        acc = EventAccumulator(str(d))
        acc.Reload()
        for k in tags:
            tags[k] |= set(acc.Tags()[k])
    assert {"train/l_pix", "val/val/psnr"} <= tags["scalars"]
    assert any(t.startswith("val/val/") for t in tags["images"])
    assert list((run / "wandb").glob("offline-run-*"))
    log = next(run.glob("train_tracked_*.log")).read_text()
    assert "no W&B API key is configured" in log and "wandb sync" in log  # says why it is offline


def test_wandb_project_key_and_one_shared_default_project(demo_root, tmp_path, monkeypatch):
    """logger.wandb_project used to crash (wandb.init() got multiple values for keyword argument 'project');
    without it every run used to become its own project."""
    from accelerate.state import AcceleratorState, GradientState

    _no_wandb_credentials(monkeypatch, tmp_path)
    projects = {}
    for name, project in (("named_a", "my-ggt"), ("plain_a", None), ("plain_b", None)):
        over = {"logger__wandb_project": project} if project else {}
        tr = Trainer(_opts(demo_root, tmp_path, name=name, train__total_iter=1, val__val_freq=1,
                           logger__trackers=["wandb"], **over), command="pytest")
        projects[name] = tr.acc.get_tracker("wandb", unwrap=True).project
        tr.fit()
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert projects == {"named_a": "my-ggt", "plain_a": "ggt-ir", "plain_b": "ggt-ir"}


def test_wandb_goes_offline_only_without_credentials(tmp_path, monkeypatch):
    from ggt_ir.train.logging import wandb_mode

    home = _no_wandb_credentials(monkeypatch, tmp_path)
    mode, message = wandb_mode(tmp_path / "run" / "wandb")
    assert mode == "offline" and "wandb sync" in message
    # `wandb login` writes ~/.netrc: then wandb is left online (nothing contacts the server here)
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    (home / ".netrc").chmod(0o600)
    from wandb.sdk.lib import wbauth

    wbauth.unauthenticate_session(update_settings=False)  # forget what an earlier test of this process loaded
    assert wandb_mode(tmp_path / "run" / "wandb")[0] is None
    (home / ".netrc").unlink()
    wbauth.unauthenticate_session(update_settings=False)
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert wandb_mode(tmp_path / "run" / "wandb")[0] is None
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's choice is kept
    assert wandb_mode(tmp_path / "run" / "wandb") == (None, "wandb: mode disabled (from WANDB_MODE)")
