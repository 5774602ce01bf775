"""The paper-scale path on this CPU (issue 40): sampling reaches the device it is given, a VAE that does not
fit the preset is refused before any encoding, latent noise does not depend on the process count, half-
precision online encoding survives the attention sink, and the dataset index is built once and memory-mapped."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import build_tiny_cache, tiny_train_options

from t2istudy.diffusion import sample as sample_module
from t2istudy.diffusion.model import get_preset
from t2istudy.diffusion.train import latent_generators, train

NULL = (torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool))


class OnesText:
    def embed(self, captions):
        return torch.ones(len(captions), 2, 4), torch.ones(len(captions), 2, dtype=torch.bool)


class DeviceRecorder(torch.nn.Module):
    """A denoiser stub that records the device of its weights and of every input it is called with."""

    def __init__(self, seen: list):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = seen

    def forward(self, x, t, features, mask):
        self.seen.append(("unet", self.weight.device.type, {v.device.type for v in (x, t, features, mask)}))
        return torch.zeros_like(x)


class VaeRecorder(torch.nn.Module):
    """A VAE stub: records where its weights and its input are, decodes to grey pixels on the CPU."""

    config = SimpleNamespace(scaling_factor=0.5)

    def __init__(self, seen: list):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = seen

    @property
    def dtype(self):
        return self.weight.dtype

    def decode(self, z):
        self.seen.append(("vae", self.weight.device.type, {z.device.type}, z.dtype))
        return SimpleNamespace(sample=torch.zeros(z.shape[0], 3, 32, 32))


@pytest.mark.parametrize("precision, dtype", [(None, torch.float32), ("bf16", torch.bfloat16)])
def test_sampling_runs_every_module_and_tensor_on_the_given_device(precision, dtype):
    """`meta` stands in for a GPU: the U-Net, the VAE and every tensor the loop feeds them must be there."""
    seen: list = []
    images = sample_module.sample(
        DeviceRecorder(seen),
        ["a red circle", "two squares"],
        [0],
        text=OnesText(),
        null=NULL,
        preset="cpu-tiny-latent",
        steps=2,
        vae=VaeRecorder(seen),
        device="meta",
        precision=precision,
    )
    assert len(images) == 2 and images[0].shape == (32, 32, 3)
    unet = [s for s in seen if s[0] == "unet"]
    vae = [s for s in seen if s[0] == "vae"]
    assert len(unet) == 2 and all(s[1] == "meta" and s[2] == {"meta"} for s in unet)
    assert vae == [("vae", "meta", {"meta"}, dtype)]  # moved with the model, in the run's precision


def test_sampling_defaults_to_the_training_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sample_module.default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sample_module.default_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="precision='fp8'"):
        sample_module.sample(
            DeviceRecorder([]), ["a"], text=OnesText(), null=NULL, preset="cpu-tiny", precision="fp8"
        )


# ---- the VAE must fit the preset, checked before any image is encoded ------------------------------------------


def test_a_vae_that_does_not_fit_the_preset_is_refused_before_encoding(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    from t2istudy.diffusion import latents

    AutoencoderKL(  # three levels: 32 px -> 8x8x4 latents, the preset wants 16x16x4
        latent_channels=4,
        block_out_channels=(8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8,
        layers_per_block=1,
    ).save_pretrained(tmp_path / "vae")
    monkeypatch.setattr(latents.LatentCache, "get_or_build", lambda *a, **k: pytest.fail("encoded first"))
    cache = build_tiny_cache(tmp_path / "text")
    opts = tiny_train_options(
        cache, tmp_path / "run", preset="cpu-tiny-latent", vae_path=str(tmp_path / "vae")
    )
    with pytest.raises(ValueError, match=r"into 8x8x4 latents .*trains on 16x16x4 latents"):
        train(opts)


# ---- latent noise per image: 1 and N processes draw the same latents -------------------------------------------


def test_latent_draw_of_an_image_does_not_depend_on_how_the_batch_is_split():
    moments = torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    from t2istudy.diffusion.latents import sample_latents

    whole = sample_latents(moments, latent_generators(3, 5, range(0, 8)), 1.0)
    halves = [
        sample_latents(moments[lo : lo + 4], latent_generators(3, 5, range(lo, lo + 4)), 1.0) for lo in (0, 4)
    ]
    assert torch.equal(whole, torch.cat(halves))
    assert not torch.equal(whole, sample_latents(moments, latent_generators(3, 6, range(0, 8)), 1.0))


# ---- half-precision online encoding and the attention sink -----------------------------------------------------


def _massive_llama(dtype):
    """A tiny Llama whose second block writes ~1e5-sized activations into the residual stream, as the
    attention sink of a real decoder LLM does on its first token."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4
    )
    model = tf.LlamaModel(cfg)
    with torch.no_grad():
        model.layers[1].mlp.up_proj.weight.mul_(1e4)
        model.layers[1].mlp.down_proj.weight.mul_(3e3)
    return model.to(dtype)


class DigitTokenizer:
    """Whitespace tokens -> ids < 200, right padding (what FrozenEncoder asks of a tokenizer)."""

    pad_token, eos_token, unk_token, pad_token_id = "<pad>", "<pad>", "<pad>", 0
    padding_side = "right"

    def __call__(self, prompts, padding=None, truncation=None, max_length=None, return_tensors=None, **_):
        ids = [[1] + [3 + sum(map(ord, w)) % 190 for w in p.split()] for p in prompts]
        if return_tensors is None:
            return {"input_ids": ids}
        width = max(map(len, ids))
        rows = [row + [0] * (width - len(row)) for row in ids]
        return {
            "input_ids": torch.tensor(rows),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids]),
        }


def test_fp16_online_encoding_clamps_the_attention_sink_and_stays_finite():
    from t2istudy.text.encoders import FP16_CLAMP, FrozenEncoder, parse_dtype

    prompts = ["a red circle", "two blue squares left of a star"]
    reference, _ = FrozenEncoder(
        _massive_llama(torch.float32), DigitTokenizer(), name="m", kind="decoder"
    ).encode_aggregated(prompts, "last")
    assert torch.isfinite(reference).all()
    states = FrozenEncoder(_massive_llama(torch.float32), DigitTokenizer(), name="m", kind="decoder").encode(
        prompts
    )
    assert states.hidden[2].abs().max() > 65504  # float32 states beyond the float16 range
    half = FrozenEncoder(_massive_llama(parse_dtype("fp16")), DigitTokenizer(), name="m", kind="decoder")
    with pytest.warns(UserWarning, match=r"activations beyond the float16 range .* were clamped to \+-64504"):
        features, _ = half.encode_aggregated(prompts, "norm_mean")
    assert torch.isfinite(features).all() and FP16_CLAMP == 64504
    bf16 = FrozenEncoder(_massive_llama(parse_dtype("bf16")), DigitTokenizer(), name="m", kind="decoder")
    assert torch.isfinite(bf16.encode_aggregated(prompts, "norm_mean")[0]).all()  # float32's range: no clamp
    with pytest.raises(ValueError, match="Unknown encoder dtype 'int8'"):
        parse_dtype("int8")


def test_text_dtype_is_an_online_option():
    from t2istudy.diffusion.options import TrainOptions, resolve_options

    assert (
        resolve_options(TrainOptions(preset="cpu-tiny", text="online", text_dtype="bf16")).text_dtype
        == "bf16"
    )
    with pytest.raises(ValueError, match="--text_dtype bf16 sets the encoder's dtype for --text online"):
        resolve_options(TrainOptions(preset="cpu-tiny", text_dtype="bf16"))
    with pytest.raises(ValueError, match="--text_dtype 'fp8' is not valid"):
        TrainOptions(text_dtype="fp8")


# ---- the dataset index: built once beside the data, memory-mapped ------------------------------------------------


def _shard(path, pairs):
    import io
    import tarfile

    from PIL import Image

    with tarfile.open(path, "w") as tar:
        for key, color in pairs:
            buf = io.BytesIO()
            Image.new("RGB", (12, 10), color).save(buf, format="PNG")
            for name, data in ((f"{key}.png", buf.getvalue()), (f"{key}.txt", f"a {color} square".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_dataset_index_is_built_once_beside_the_data_and_memory_mapped(tmp_path, monkeypatch):
    import pickle

    from PIL import Image

    from t2istudy.diffusion import data_index
    from t2istudy.diffusion.data import FolderPairs

    _shard(tmp_path / "a.tar", [("k1", "red"), ("k2", "blue")])
    _shard(tmp_path / "b.tar", [("k3", "green")])
    first = FolderPairs(tmp_path, resolution=8)
    assert (tmp_path / ".t2istudy-index" / "index.json").is_file()
    assert isinstance(first.index.members, np.memmap) and isinstance(first.captions.data, np.memmap)
    assert list(first.captions) == ["a red square", "a blue square", "a green square"]
    # Every later process and resume reads the index: nothing is listed and no image is opened.
    monkeypatch.setattr(data_index, "build_index", lambda *a, **k: pytest.fail("listed the data again"))
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("opened an image at start-up"))
    again = FolderPairs(tmp_path, resolution=8)
    assert (
        len(again) == 3 and again.captions[2] == "a green square" and again.captions[-1] == "a green square"
    )
    monkeypatch.undo()
    image, caption = pickle.loads(pickle.dumps(again))[1]  # a worker process reopens the maps
    assert caption == "a blue square" and torch.allclose(image[:, 4, 4], torch.tensor([-1.0, -1.0, 1.0]))
    _shard(tmp_path / "b.tar", [("k3", "green"), ("k4", "white")])  # a changed shard: listed again
    assert FolderPairs(tmp_path, resolution=8).captions[-1] == "a white square"


def test_per_image_checks_are_optional(tmp_path):
    from t2istudy.diffusion.data import FolderPairs

    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "bad.txt").write_text("a broken square")
    (tmp_path / "ok.png").write_bytes((tmp_path / "bad.png").read_bytes())
    fast = FolderPairs(tmp_path, resolution=8, verify_images=False)  # ok.png has no caption: still skipped
    assert len(fast) == 1 and fast.index.meta["verified"] is False
    with pytest.raises(ValueError, match=r"Cannot read image .*bad\.png.*delete .*\.t2istudy-index"):
        fast[0]
    with pytest.raises(ValueError, match="No usable"):  # checks asked for: listed again, the image skipped
        FolderPairs(tmp_path, resolution=8)


def test_fp16_gemma_stays_finite_and_close_to_float32():
    """A real attention sink (gemma3-270m): unguarded float16 gave NaN on every token (a residual sum inside
    a block overflowed and a norm turned it into NaN); guarded, the features match float32's direction."""
    from t2istudy.text.encoders import load_encoder

    prompts = ["a red circle left of a blue square", "two green triangles", "no star"]
    ref, mask = load_encoder("gemma3-270m").encode_aggregated(prompts, "norm_mean")
    with pytest.warns(UserWarning, match="clamped"):
        half, _ = load_encoder("gemma3-270m", dtype="fp16").encode_aggregated(prompts, "norm_mean")
    assert torch.isfinite(half).all()
    assert torch.nn.functional.cosine_similarity(half[mask], ref[mask], dim=-1).min() > 0.999


# ---- docs and errors name modules that exist -------------------------------------------------------------------


def test_docs_and_the_preset_error_name_modules_that_exist():
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    named = {
        path
        for doc in [*(repo / "docs").glob("*.md"), repo / "README.md"]
        for path in re.findall(r"t2istudy/[\w/]+\.py", doc.read_text())
    }
    assert named and sorted(p for p in named if not (repo / p).is_file()) == []
    with pytest.raises(ValueError) as err:
        get_preset("sd3")
    assert re.findall(r"t2istudy/[\w/]+\.py", str(err.value)) == ["t2istudy/diffusion/model.py"]
