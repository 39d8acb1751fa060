"""Evaluation: metrics (torch PSNR/SSIM here; the pyiqa-backed suite alongside) and scoring loops."""
