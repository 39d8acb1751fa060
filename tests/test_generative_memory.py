"""Memory options of the generative restorers, on tiny random models on CPU: text encoders that leave the GPU,
a quantized frozen base with LoRA on top (torchao int8 runs on CPU; bitsandbytes NF4 needs CUDA in diffusers, so
only its refusal is tested here), 8-bit Adam, attention backends, VAE tiling / slicing, gradient checkpointing."""
import pytest
import torch

from test_editor import PROMPT, tiny_kontext, tiny_qwen_edit  # noqa: F401 - fixtures
from test_generative import tiny_sd  # noqa: F401 - fixture

pytest.importorskip("diffusers")


def kontext(path, **kw):
    from ggt_ir.generative.editor import EditorLoRA

    torch.manual_seed(0)
    return EditorLoRA(str(path), prompt=PROMPT, lora_rank=2, max_sequence_length=16, buckets="none", **kw)


def test_text_encoders_offload_encode_once_and_stay_off_the_device(tiny_kontext):  # noqa: F811
    net = kontext(tiny_kontext, text_encoders="offload")
    ed = net.editor
    assert {id(m) for m in net.helpers_on_device()} == {id(ed.vae)}
    net.to(torch.float64)  # a move of the model leaves offloaded encoders where they are (CPU RAM)
    assert ed.vae.dtype == torch.float64 and ed.text_encoder.dtype == torch.float32
    assert ed.text_encoder_2.dtype == torch.float32
    net.to(torch.float32)
    lq, gt = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    net(lq, gt, [PROMPT, PROMPT])
    net(lq, gt, [PROMPT, PROMPT])
    assert ed.text.encodes == 1  # the cached instruction: the encoders ran (were on the device) once
    early = kontext(tiny_kontext, text_encoders="offload")
    assert early.precompute_instructions() == [PROMPT] and early.editor.text.encodes == 1  # before training
    early(lq, gt, [PROMPT, PROMPT])
    assert early.editor.text.encodes == 1  # the step found it in the cache
    gpu = kontext(tiny_kontext)
    assert len(gpu.helpers_on_device()) == 3
    with pytest.raises(ValueError, match="network_g.text_encoders must be one of gpu, offload, cpu"):
        kontext(tiny_kontext, text_encoders="disk")


def test_onestep_text_encoder_is_a_helper_placed_by_the_option(tiny_sd):  # noqa: F811
    from ggt_ir.generative.onestep_sd import OneStepSD

    net = OneStepSD(str(tiny_sd), prompt="a photo", text_encoders="cpu")
    assert not any(k.startswith("text_encoder") for k in dict(net.named_modules()))  # never wrapped or sharded
    net.to(torch.float64)
    assert net.text_encoder.dtype == torch.float32 and net.unet.dtype == torch.float64
    net.to(torch.float32)
    out = net.restore(torch.rand(1, 3, 16, 16))
    assert out.shape == (1, 3, 16, 16) and net.text_placement.encodes == 1


def test_nf4_is_refused_in_one_line_without_cuda_or_bitsandbytes(tiny_kontext):  # noqa: F811
    with pytest.raises((RuntimeError, ImportError)) as e:
        kontext(tiny_kontext, quantize="nf4")
    msg = str(e.value)
    assert "\n" not in msg and "nf4" in msg and ("quantize: int8" in msg)
    with pytest.raises(ValueError, match="quantize must be one of none, nf4, int8, fp8"):
        kontext(tiny_kontext, quantize="int4")


def test_int8_quantized_base_with_lora_trains_exports_and_reloads(tiny_kontext, tmp_path):  # noqa: F811
    pytest.importorskip("torchao")
    from diffusers import FluxTransformer2DModel

    from ggt_ir.generative.editor import EditorLoRA
    from ggt_ir.generative.memory import quantized_linear_count

    net = kontext(tiny_kontext, quantize="int8", weight_dtype="bf16")
    n_quant = quantized_linear_count(net.transformer)
    lora = [m for m in net.transformer.modules() if hasattr(m, "lora_A")]
    assert n_quant > 0 and lora and all("Torchao" in type(m).__name__ for m in lora)
    assert all(type(m.base_layer.weight).__name__ != "Parameter" for m in lora)  # LoRA sits on the int8 weights
    frozen_before = {n: p.detach().clone() for n, p in net.transformer.named_parameters()
                     if not p.requires_grad and type(p).__name__ == "Parameter"}
    params = [p for p in net.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)
    opt = torch.optim.AdamW(params, lr=1e-2)
    before = [p.detach().clone() for p in params]
    loss = net(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), [PROMPT])
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, p) for a, p in zip(before, params))
    for n, p in net.transformer.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    export = net.export_adapters(tmp_path / "ex", step=1)
    again = EditorLoRA.from_export(export)  # the recorded options: int8 base again, the trained LoRA on top
    assert quantized_linear_count(again.transformer) == n_quant
    lq = torch.rand(1, 3, 16, 16)
    assert (again.restore(lq, [PROMPT]) - net.restore(lq, [PROMPT])).abs().max() < 1e-5
    full = FluxTransformer2DModel.from_pretrained(tiny_kontext, subfolder="transformer")
    assert quantized_linear_count(full) == 0


def test_adamw8bit_steps_on_cpu():
    pytest.importorskip("bitsandbytes")
    from ggt_ir.train.optim import build_optimizer
    from ggt_ir.train.options import OptimOptions

    p = torch.nn.Parameter(torch.randn(300, 300))
    opt = build_optimizer([p], OptimOptions(type="AdamW8bit", lr=1e-2))
    before = p.detach().clone()
    p.grad = torch.randn_like(p)
    opt.step()
    assert type(opt).__name__ == "AdamW8bit" and not torch.equal(p, before)
    assert opt.state[p]["state1"].dtype == torch.uint8  # 8-bit moments


def test_attention_backends_and_clear_errors(tiny_kontext, tiny_sd):  # noqa: F811
    from ggt_ir.generative.memory import set_attention
    from ggt_ir.generative.onestep_sd import OneStepSD

    net = kontext(tiny_kontext, attention="sdpa")
    assert net.restore(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(RuntimeError) as e:
        set_attention(net.transformer, "flash_varlen")  # needs flash-attn (not installed) / a GPU
    assert "\n" not in str(e.value) and "use attention: sdpa" in str(e.value)
    with pytest.raises(ValueError, match="attention must be one of"):
        kontext(tiny_kontext, attention="magic")
    try:
        import xformers  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="xformers is not usable here"):
            OneStepSD(str(tiny_sd), attention="xformers")


def test_vae_tiling_and_slicing_take_the_tiled_and_sliced_paths(tiny_sd):  # noqa: F811
    from ggt_ir.generative.memory import set_vae_memory
    from ggt_ir.generative.onestep_sd import OneStepSD

    net = OneStepSD(str(tiny_sd), prompt="a photo", vae_tiling=True, vae_slicing=True)
    vae = net.vae
    assert vae.use_tiling and vae.use_slicing
    set_vae_memory(vae, tiling=True, slicing=True, tile=32)
    calls = {"_tiled_encode": 0, "tiled_decode": 0, "_encode": 0}
    for name in calls:
        original = getattr(vae, name)

        def spy(*a, _name=name, _f=original, **k):
            calls[_name] += 1
            return _f(*a, **k)

        setattr(vae, name, spy)
    lq = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out, z0, emb = net(lq, None)  # the training forward: differentiable through the tiles
    out.mean().backward()
    assert calls["_encode"] == 2 and calls["_tiled_encode"] == 2 and calls["tiled_decode"] == 2  # per image, tiled
    assert any(p.grad is not None for n, p in net.vae.named_parameters() if ".lora_" in n)
    plain = OneStepSD(str(tiny_sd), prompt="a photo")
    plain.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        d = (plain.restore(lq) - net.restore(lq)).abs().mean().item()
    assert d < 0.1  # tiles blend (with their own GroupNorm statistics): close, not equal


def test_gradient_checkpointing_option_reaches_the_networks(tiny_kontext, tiny_sd):  # noqa: F811
    from ggt_ir.generative.onestep_sd import OneStepSD

    assert kontext(tiny_kontext, gradient_checkpointing=True).transformer.is_gradient_checkpointing
    sd = OneStepSD(str(tiny_sd), gradient_checkpointing=True)
    assert sd.unet.is_gradient_checkpointing and sd.vae.is_gradient_checkpointing
