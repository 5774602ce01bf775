"""Training loop guarantees: resume == uninterrupted (bitwise), 2 processes == 1 (float tolerance),
deterministic data order, Min-SNR weights, clear errors. Uses the tiny preset and a weight-free encoder."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_POOL as POOL
from helpers import FakeEncoder, build_tiny_cache, tiny_train_options
from PIL import Image
from safetensors.torch import load_file

from t2istudy.diffusion.checkpoint import final_weights
from t2istudy.diffusion.data import FolderPairs, StepBatchSampler, shapes_pool
from t2istudy.diffusion.model import get_preset
from t2istudy.diffusion.options import TrainOptions, resolve_options
from t2istudy.diffusion.train import build_parser, diffusion_loss, train
from t2istudy.diffusion.train_folder import read_train_log
from t2istudy.text.cache import EmbeddingCache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A cache for the tiny shapes pool, so training never loads a real encoder."""
    return build_tiny_cache(tmp_path_factory.mktemp("cache"))


options = tiny_train_options


# ---- data order ---------------------------------------------------------------------------------------------


def test_sampler_covers_each_epoch_and_shards_the_global_batch():
    one = StepBatchSampler(10, 4, seed=3, start_step=0, max_steps=5)
    flat = [i for b in one for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epochs
    two = [list(StepBatchSampler(10, 2, seed=3, start_step=0, max_steps=5, world=2, rank=r)) for r in (0, 1)]
    assert [a + b for a, b in zip(*two, strict=True)] == list(one)  # rank slices rebuild the 1-process batch
    acc = list(StepBatchSampler(10, 2, seed=3, start_step=0, max_steps=5, accumulation=2))
    assert [acc[i] + acc[i + 1] for i in range(0, 10, 2)] == list(one)
    assert list(StepBatchSampler(10, 4, seed=3, start_step=2, max_steps=5)) == list(one)[2:]  # resumable


# ---- folder datasets ----------------------------------------------------------------------------------------


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), color).save(buf, format="PNG")
    return buf.getvalue()


def _folder_with_bad_pairs(root):
    (root / "sub").mkdir()
    for name, color in (("a", "red"), ("sub/b", "blue")):
        (root / f"{name}.png").write_bytes(_png(color))
        (root / f"{name}.txt").write_text(f"a {color} square\n")
    (root / "nocap.png").write_bytes(_png("green"))
    (root / "broken.jpg").write_bytes(b"not an image")
    (root / "broken.txt").write_text("broken")


def test_folder_dataset_skips_or_stops_on_bad_pairs(tmp_path):
    _folder_with_bad_pairs(tmp_path)
    ds = FolderPairs(tmp_path, resolution=16)
    assert ds.captions == ["a red square", "a blue square"]  # sorted paths: a.png, sub/b.png
    assert dict(ds.skipped) == {"unreadable image": 1, "missing or empty caption": 1}
    image, caption = ds[0]
    assert image.shape == (3, 16, 16) and caption == "a red square"
    assert torch.allclose(image[:, 8, 8], torch.tensor([1.0, -1.0, -1.0]))  # pure red in [-1, 1]
    with pytest.raises(ValueError, match="broken.jpg: unreadable image"):
        FolderPairs(tmp_path, resolution=16, on_bad="stop")


def test_verify_images_false_lists_without_opening_and_a_bad_image_fails_at_its_read(tmp_path):
    """--verify_images false (a cleaned dataset at paper scale): the index only lists; the broken image is
    a pair until it is read, and its read names it."""
    from t2istudy.diffusion.inputs import build_data

    _folder_with_bad_pairs(tmp_path)
    ds = build_data(TrainOptions(data=str(tmp_path), verify_images=False), get_preset("cpu-tiny"))
    assert ds.captions == ["a red square", "broken", "a blue square"]
    assert dict(ds.skipped) == {"missing or empty caption": 1}
    with pytest.raises(ValueError, match=r"Cannot read image .*broken\.jpg.*delete"):
        ds[1]


def test_webdataset_shards(tmp_path):
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        for key, data in (("k1.png", _png("red")), ("k1.txt", b"a red square"), ("k2.png", _png("blue"))):
            info = tarfile.TarInfo(key)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = FolderPairs(tmp_path, resolution=8)
    assert ds.captions == ["a red square"] and dict(ds.skipped) == {"missing or empty caption": 1}
    assert ds[0][0].shape == (3, 8, 8)


# ---- loss ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_by_hand(prediction_type):
    sched = get_preset("cpu-tiny").noise_scheduler(prediction_type)
    t = torch.tensor([10, 500, 990])
    x0, noise = torch.zeros(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    pred = torch.ones(3, 1, 2, 2)  # every target is 0 here (v = a*eps - s*x0 = 0): per-sample MSE = 1
    a = sched.alphas_cumprod[t].double()
    snr = a / (1 - a)
    w = torch.minimum(snr, torch.tensor(5.0)) / (snr if prediction_type == "epsilon" else snr + 1)
    got = diffusion_loss(pred, x0, noise, t, sched, prediction_type, snr_gamma=5.0)
    assert float(got) == pytest.approx(float(w.mean()), rel=1e-5)
    assert float(diffusion_loss(pred, x0, noise, t, sched, prediction_type, snr_gamma=None)) == 1.0


# ---- the loop -----------------------------------------------------------------------------------------------


def test_resume_is_bitwise_identical(cache_dir, tmp_path):
    kw = dict(use_ema=True, snr_gamma=5.0)
    full = train(options(cache_dir, tmp_path / "full", **kw))
    part = train(options(cache_dir, tmp_path / "part", stop_after_steps=3, **kw))
    assert not (part / "final").exists() and (part / "checkpoints" / "checkpoint-3").is_dir()
    with pytest.raises(FileNotFoundError, match="has not finished"):
        final_weights(part)
    assert [r["step"] for r in read_train_log(part)] == [1, 2, 3]
    train(options(cache_dir, tmp_path / "part", resume_from_checkpoint="latest", **kw))
    for which in ("final", "raw"):  # EMA weights and raw weights
        a, b = final_weights(full, which), final_weights(part, which)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(read_train_log(full)) == 6
    assert read_train_log(full) == read_train_log(part)  # same losses at every logged step
    opts = json.loads((full / "options.json").read_text())
    assert opts["derived"]["input_scale_value"][0] == pytest.approx(1 / opts["derived"]["token_rms"][0])
    assert opts["derived"]["global_batch_size"] == 8 and opts["use_ema"] is True


def test_resumed_ema_goes_back_beside_the_model(cache_dir, tmp_path, monkeypatch):
    """accelerate restores the EMA's weights onto the CPU; on a GPU the next EMA step then failed with a
    device mismatch (found on an H100: figures/gpu/gpu_train_resume_before_ema_fix.log). The loop moves the
    EMA to the model's device right after loading; on this CPU machine only the order can be checked."""
    from diffusers.training_utils import EMAModel

    events: list[str] = []
    to, load = EMAModel.to, EMAModel.load_state_dict
    monkeypatch.setattr(EMAModel, "to", lambda self, *a, **k: events.append("to") or to(self, *a, **k))
    monkeypatch.setattr(EMAModel, "load_state_dict", lambda self, sd: events.append("load") or load(self, sd))
    train(options(cache_dir, tmp_path / "run", stop_after_steps=3, use_ema=True))
    events.clear()
    train(options(cache_dir, tmp_path / "run", resume_from_checkpoint="latest", use_ema=True))
    assert events == ["to", "load", "to"]  # built and moved; restored (on the CPU); moved back


@pytest.mark.parametrize("precision, dtype", [("no", torch.float32), ("bf16", torch.bfloat16)])
def test_vae_encodes_in_the_mixed_precision_dtype(cache_dir, tmp_path, monkeypatch, precision, dtype):
    """A latent preset trains through a local VAE folder; the frozen VAE runs in the mixed-precision dtype
    (as diffusers' train_text_to_image does: bf16 encodes 1.6x faster than fp32 on an H100)."""
    from dataclasses import replace

    from diffusers import AutoencoderKL

    from t2istudy.diffusion import model

    tiny = replace(get_preset("cpu-tiny"), name="tiny-vae", vae=True, latent_channels=4, latent_size=8)
    monkeypatch.setitem(model.PRESETS, "tiny-vae", tiny)
    torch.manual_seed(0)
    AutoencoderKL(  # one downsampling: 16x16 images -> 8x8x4 latents
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
    ).save_pretrained(tmp_path / "vae")
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    encode = AutoencoderKL.encode
    monkeypatch.setattr(
        AutoencoderKL,
        "encode",
        lambda self, x, *a, **k: seen.append((x.dtype, self.dtype)) or encode(self, x, *a, **k),
    )
    run = train(
        options(
            cache_dir,
            tmp_path / "run",
            preset="tiny-vae",
            vae_path=str(tmp_path / "vae"),
            mixed_precision=precision,
            max_train_steps=2,
            checkpointing_steps=2,
        )
    )
    assert len(seen) == 2 and set(seen) == {(dtype, dtype)}  # one encode per step, input and weights alike
    assert all(np.isfinite(r["loss"]) for r in read_train_log(run))


@pytest.mark.slow
def test_two_processes_equal_one_process_at_same_global_batch(cache_dir, tmp_path):
    # adam_epsilon 1e-6: biases feeding a GroupNorm have zero true gradient, and with a tiny epsilon Adam
    # turns their float-rounding noise into +-lr steps (even 1 vs 2 threads differ by 8e-4 then).
    kw = dict(max_train_steps=3, adam_epsilon=1e-6)
    one = train(options(cache_dir, tmp_path / "one", **kw))
    acc = train(options(cache_dir, tmp_path / "acc", train_batch_size=4, gradient_accumulation_steps=2, **kw))
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node",
        "2",
        "-m",
        "t2istudy.diffusion.train",
        "--encoder",
        "fake-8",
        "--preset",
        "cpu-tiny",
        "--pool_size",
        str(POOL),
        "--cache_dir",
        str(cache_dir),
        "--output_dir",
        str(tmp_path / "two"),
        "--max_train_steps",
        "3",
        "--train_batch_size",
        "4",
        "--adam_epsilon",
        "1e-6",
        "--lr_warmup_steps",
        "2",
        "--checkpointing_steps",
        "3",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--progress",
        "false",
        "--num_threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two"
    derived = json.loads((two / "options.json").read_text())["derived"]
    assert (derived["num_processes"], derived["global_batch_size"]) == (2, 8)
    # Same loss and same (averaged, not summed) gradient norm at every step ...
    for run in (two, acc):
        for x, y in zip(read_train_log(one), read_train_log(run), strict=True):
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
            assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    # ... and the same weights.
    a, b, c = final_weights(one), final_weights(two), final_weights(acc)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=5e-5), k
        assert torch.allclose(a[k], c[k], atol=5e-5), k


def test_non_finite_loss_stops_and_keeps_last_checkpoint(cache_dir, tmp_path):
    opts = options(
        cache_dir,
        tmp_path / "nan",
        learning_rate=1e30,
        lr_warmup_steps=0,
        max_grad_norm=0.0,
        checkpointing_steps=1,
        max_train_steps=4,
    )
    with pytest.raises(FloatingPointError, match="non-finite at step .*Last good checkpoint: .*checkpoint-1"):
        train(opts)
    assert (tmp_path / "nan" / "checkpoints" / "checkpoint-1" / "model.safetensors").is_file()
    assert not (tmp_path / "nan" / "final").exists()


def test_bad_checkpoints_and_options(cache_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        train(options(cache_dir, tmp_path / "empty", resume_from_checkpoint="latest"))
    run = train(options(cache_dir, tmp_path / "r", max_train_steps=2, checkpointing_steps=1))
    ckpt = run / "checkpoints" / "checkpoint-2" / "model.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated file
    with pytest.raises(ValueError, match="checkpoint-2 cannot be loaded.*corrupt"):
        train(options(cache_dir, run, max_train_steps=4, resume_from_checkpoint="latest"))
    assert (run / "final" / "unet").is_dir()  # nothing already trained was touched
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["checkpoint-1", "checkpoint-2"]
    with pytest.raises(ValueError, match="Unknown preset"):
        resolve_options(TrainOptions(preset="sd9"))
    with pytest.raises(ValueError, match="--prediction_type 'x0' is not valid"):
        resolve_options(TrainOptions(prediction_type="x0"))


def test_cli_flags_match_options():
    args = build_parser().parse_args(
        ["--use_ema", "--snr_gamma", "5", "--max_train_steps", "7", "--progress", "false"]
    )
    opts = TrainOptions(**vars(args))
    assert (opts.use_ema, opts.snr_gamma, opts.max_train_steps, opts.progress) == (True, 5.0, 7, False)
    assert TrainOptions(**vars(build_parser().parse_args([]))) == TrainOptions()
    resolved = resolve_options(TrainOptions(preset="cpu-small"))
    assert (resolved.learning_rate, resolved.train_batch_size, resolved.use_ema) == (1e-3, 64, True)
    assert resolved.prediction_type == "epsilon" and resolved.caption_dropout == 0.1


def test_shapes_pool_is_deterministic():
    a, b = shapes_pool(8, 1, 16), shapes_pool(8, 1, 16)
    assert (
        a.captions == b.captions and np.array_equal(a.images, b.images) and a.images.shape == (8, 16, 16, 3)
    )


def test_learned_strategy_trains_layer_weights_in_bf16(cache_dir, tmp_path):
    captions = shapes_pool(POOL, 0, get_preset("cpu-tiny").image_size).captions
    EmbeddingCache.build(FakeEncoder(), "learned", captions, cache_dir, progress=False)
    run = train(
        options(
            cache_dir, tmp_path / "learned", strategy="learned", max_train_steps=2, mixed_precision="bf16"
        )
    )
    derived = json.loads((run / "options.json").read_text())["derived"]
    assert derived["num_layers"] == 3 and len(derived["input_scale_value"]) == 3
    cond = load_file(run / "final" / "conditioner.safetensors")
    assert cond["layer_logits"].shape == (3,) and not torch.equal(cond["layer_logits"], torch.zeros(3))


def test_folder_data_with_on_the_fly_encoding(tmp_path):
    """Paper-scale path at toy size: images + captions on disk, frozen encoder inside the loop."""
    for i, color in enumerate(("red", "blue", "green", "yellow")):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / f"{i}.png").write_bytes(_png(color))
        (tmp_path / "data" / f"{i}.txt").write_text(f"a {color} rectangle")
    (tmp_path / "data" / "9.png").write_bytes(_png("white"))  # no caption: skipped and counted
    opts = TrainOptions(
        encoder="minilm-l6",
        strategy="norm_mean",
        preset="cpu-tiny",
        data=str(tmp_path / "data"),
        text="online",
        output_dir=str(tmp_path / "run"),
        max_train_steps=2,
        train_batch_size=4,
        report_to="none",
        progress=False,
        num_threads=1,
    )
    derived = json.loads((train(opts) / "options.json").read_text())["derived"]
    assert derived["dataset_size"] == 4 and derived["cache_path"] is None
    assert derived["skipped_pairs"] == {"missing or empty caption": 1} and derived["text_width"] == 384


# ---- the projection's width rule (issue 37) -----------------------------------------------------------------


def test_width_rule_leaves_a_single_state_run_bitwise_unchanged(cache_dir, tmp_path, monkeypatch):
    """norm_mean reads one state (width 8 = the encoder's width): the rule's factor is exactly 1 and the run,
    losses and weights, is the run without it."""
    monkeypatch.setattr("t2istudy.diffusion.train.encoder_width", lambda name: 8)  # FakeEncoder's width
    shared = train(options(cache_dir, tmp_path / "shared", max_train_steps=3))
    width = train(options(cache_dir, tmp_path / "width", max_train_steps=3, projection_lr="width"))
    a, b = final_weights(shared), final_weights(width)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_train_log(shared) == read_train_log(width)
    derived = json.loads((width / "options.json").read_text())["derived"]
    assert derived["projection_lr_factor"] == 1.0


def test_width_rule_divides_the_projection_rate_by_the_number_of_states():
    from t2istudy.diffusion.checkpoint import Denoiser
    from t2istudy.diffusion.model import TextConditioner, build_unet
    from t2istudy.diffusion.options import projection_lr_factor
    from t2istudy.diffusion.train import parameter_groups

    opts = TrainOptions(projection_lr="width")
    assert projection_lr_factor(opts, in_width=3 * 640, state_width=640) == pytest.approx(1 / 3)
    assert projection_lr_factor(opts, in_width=640, state_width=640) == 1.0
    assert projection_lr_factor(TrainOptions(), in_width=3 * 640, state_width=640) == 1.0  # shared
    model = Denoiser(build_unet("cpu-tiny"), TextConditioner(24, get_preset("cpu-tiny").cross_attention_dim))
    one = parameter_groups(model, 2e-3, 1.0)
    assert [id(p) for p in one] == [id(p) for p in model.parameters()]  # the optimizer of a run without it
    rest, projection = parameter_groups(model, 2e-3, 8 / 24)
    assert projection["lr"] == pytest.approx(2e-3 / 3) and "lr" not in rest
    assert [id(p) for p in projection["params"]] == [
        id(model.conditioner.proj.weight),
        id(model.conditioner.proj.bias),
    ]
    assert len(rest["params"]) + 2 == len(list(model.parameters()))
