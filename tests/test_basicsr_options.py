"""Real BasicSR option files (tests/data/basicsr_options/, verbatim copies) load as they are: BasicSR-only keys
are translated or ignored with ONE warning, and everything that cannot be honoured is reported at once."""
import logging
from pathlib import Path

import pytest

from ggt_ir.config import OptionsError
from ggt_ir.train.options import load_options

DATA = Path(__file__).parent / "data" / "basicsr_options"


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ggt_ir.options"]


def test_swinir_file_loads_with_one_warning(caplog):
    caplog.set_level(logging.WARNING, logger="ggt_ir.options")
    opt = load_options(DATA / "train_SwinIR_SRx2_scratch.yml", check_paths=False)
    assert opt.model_type == "regression" and opt.network_g["type"] == "SwinIR"
    assert opt.val.val_freq == 5000 and opt.logger.save_checkpoint_freq == 5000  # !!float 5e3
    assert opt.train.warmup_iter == 0
    assert opt.val.metrics["psnr"].type == "psnr" and opt.val.metrics["psnr"].crop_border == 2
    assert opt.logger.trackers == ["tensorboard"]
    assert opt.datasets["train"].dataroot_gt == "datasets/DF2K/DIV2K_train_HR_sub"
    (warning,) = _warnings(caplog)  # exactly one, listing everything
    for word in ("SwinIRModel -> regression", "calculate_psnr -> psnr", "warmup_iter -1 -> 0", "num_gpu",
                 "dist_params", "io_backend", "use_tb_logger", "meta_info_file", "dataset_enlarge_ratio"):
        assert word in warning, word


def test_restormer_file_reports_what_cannot_be_honoured_at_once(caplog):
    with pytest.raises(OptionsError) as e:
        load_options(DATA / "Deraining_Restormer.yml", check_paths=False)
    msg = str(e.value)
    assert "2 problems" in msg, msg
    assert "progressive training" in msg and "CosineAnnealingRestartCyclicLR" in msg
    # what does map is not among the problems
    assert "use_grad_clip" not in msg and "geometric_augs" not in msg and "Dataset_PairedImage" not in msg


def test_restormer_file_loads_once_those_two_keys_are_replaced(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ggt_ir.options")
    text = (DATA / "Deraining_Restormer.yml").read_text()
    path = tmp_path / "restormer.yml"
    path.write_text(text)
    opt = load_options(path, ["datasets.train.mini_batch_sizes=[8]", "datasets.train.iters=[300000]",
                              "datasets.train.gt_sizes=[128]",
                              "train.scheduler={type: CosineAnnealingRestartCyclicLR, periods: [300000], "
                              "restart_weights: [1], eta_mins: [0.000001]}"], check_paths=False)
    assert opt.datasets["train"].type == "PairedFolder" and opt.datasets["train"].gt_size == 128
    assert opt.datasets["train"].batch_size_per_gpu == 8 and opt.datasets["train"].use_rot
    assert opt.train.grad_clip == pytest.approx(0.01)  # Restormer's use_grad_clip
    assert opt.train.scheduler.type == "CosineAnnealingLR" and opt.train.scheduler.eta_min == pytest.approx(1e-6)
    assert opt.val.val_freq == 4000 and opt.network_g["LayerNorm_type"] == "WithBias"
    assert len(_warnings(caplog)) == 1


def test_nafnet_file_names_lmdb_for_train_and_val_in_one_error():
    with pytest.raises(OptionsError) as e:
        load_options(DATA / "NAFNet-width32.yml", check_paths=False)
    msg = str(e.value)
    assert "datasets.train.io_backend type lmdb" in msg and "datasets.val.io_backend type lmdb" in msg
    assert "2 problems" in msg  # PSNRLoss, NAFNetLocal, TrueCosineAnnealingLR, use_flip all map


def test_nafnet_file_loads_on_image_folders(tmp_path):
    text = (DATA / "NAFNet-width32.yml").read_text().replace("type: lmdb", "type: disk")
    path = tmp_path / "nafnet.yml"
    path.write_text(text)
    opt = load_options(path, check_paths=False)
    assert opt.network_g["type"] == "NAFNetLocal" and opt.train.pixel_opt.type == "PSNRLoss"
    assert opt.train.scheduler.type == "CosineAnnealingLR" and opt.train.scheduler.eta_min == pytest.approx(1e-7)
    assert opt.datasets["train"].use_hflip and opt.val.metrics["ssim"].type == "ssim"


def test_realesrgan_file_loads_as_a_gan_run(caplog):
    """Real-ESRGAN's own train_realesrgan_x4plus.yml, as it is: the GAN step, RRDBNet through spandrel, its
    perceptual loss among train.losses, the USM targets, D and its optimizer; one warning lists the translations."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = load_options(DATA / "train_realesrgan_x4plus.yml", check_paths=False)
    assert opt.model_type == "gan"
    assert opt.network_g["type"] == "Spandrel" and opt.network_g["arch"] == "RRDBNet" and opt.network_g["scale"] == 4
    assert opt.network_d["type"] == "UNetDiscriminatorSN"
    assert [lo.type for lo in opt.train.losses] == ["PerceptualLoss"]
    assert opt.train.losses[0].layer_weights["conv5_4"] == 1.0 and opt.train.gan_opt.loss_weight == pytest.approx(0.1)
    assert opt.train.l1_gt_usm and opt.train.percep_gt_usm and not opt.train.gan_gt_usm
    assert opt.train.optim_d.type == "Adam" and opt.train.net_d_iters == 1
    text = " ".join(str(w.message) for w in caught) + caplog.text
    assert "model_type RealESRGANModel -> gan" in text and "RRDBNet -> Spandrel" in text


def test_gan_keys_without_a_gan_model_are_reported(tmp_path):
    text = (DATA / "train_realesrgan_x4plus.yml").read_text().replace("model_type: RealESRGANModel",
                                                                       "model_type: SRModel")
    path = tmp_path / "not_gan.yml"
    path.write_text(text)
    with pytest.raises(OptionsError) as e:
        load_options(path, check_paths=False)
    msg = str(e.value)
    assert "problems" in msg.splitlines()[0]
    for key in ("train.gan_opt", "train.optim_d", "train.net_d_iters"):
        assert f"{key}: only model_type: gan trains a discriminator" in msg, key
    assert "l1_gt_usm" in msg  # the USM target of the regression step is not available


def test_realesrnet_degradations_map_onto_synthetic_degradation(tmp_path):
    text = (DATA / "train_realesrnet_x4plus.yml").read_text()
    path = tmp_path / "realesrnet.yml"
    path.write_text(text)
    # the architecture is not in the zoo and the USM target is not available; with those two replaced it loads
    opt = load_options(path, ["gt_usm=false", "network_g={type: SwinIR, upscale: 4, img_size: 64, "
                              "window_size: 8, embed_dim: 16, depths: [2], num_heads: [2], upsampler: pixelshuffle}"],
                       check_paths=False)
    d = opt.datasets["train"]
    assert d.type == "SyntheticDegradation" and d.gt_size == 256 and d.batch_size_per_gpu == 12
    assert d.degradation.resize_prob == [0.2, 0.7, 0.1] and d.degradation.jpeg_range2 == [30, 95]
    assert d.degradation.kernel_list[0] == "iso" and d.degradation.final_sinc_prob == pytest.approx(0.8)
    assert not d.use_rot and opt.model_type == "regression"


def test_many_unknown_keys_are_reported_together(demo_root, tmp_path):
    from helpers import tiny_options, write_options

    opt = tiny_options(demo_root, tmp_path)
    opt["train"]["optim_g"]["wieght_decay"] = 0.1
    opt["val"]["val_frq"] = 3
    opt["logger"]["print_freq"] = "often"
    opt["datasets"]["train"]["gt_sise"] = 16
    with pytest.raises(OptionsError) as e:
        load_options(write_options(tmp_path / "bad.yml", opt))
    msg = str(e.value)
    assert "4 problems" in msg
    for part in ("train.optim_g.wieght_decay", "weight_decay", "val.val_frq", "logger.print_freq", "often",
                 "datasets.train.gt_sise", "gt_size"):
        assert part in msg, part
