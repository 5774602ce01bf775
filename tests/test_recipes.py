"""Released systems' recipes: grammar (lists, depth fractions, minmax, templates), hand-computed values,
exact template token dropping on real tokenizers, the cache key, and the fold's memory.

The end-to-end references run a tiny random 6-block Llama with SmolLM2's real tokenizer: every recipe
through the streaming encoder is compared with states read straight from transformers and combined by
hand, on token ids built by hand.
"""

import functools
import gc
import math
import weakref
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from t2istudy.text.aggregation import (
    Aggregator,
    aggregate,
    output_width,
    parse_strategy,
    projection_parameters,
    recipe_of,
    selected_states,
)
from t2istudy.text.cache import EmbeddingCache
from t2istudy.text.recipes import RECIPES
from t2istudy.text.templates import TEMPLATES, Template, special_tokens, wrap_and_tokenize

EXPANSIONS = {
    "paper": "norm_mean",
    "flux2": "concat[none,layers=1/4;1/2;3/4,template=chat]",
    "cosmos2.5": "concat[standardize,no_embed,template=cosmos2.5]",
    "ltx2": "concat[minmax]",
    "ltx2.3": "concat[rms]",
    "lumina2": "layer:-2[template=lumina2]",
    "z-image": "layer:-2[template=chat]",
    "hunyuan": "layer:-3[template=hunyuan]",
    "qwen-image": "last[template=qwen-image]",
    "sana": "last[template=sana]",
    "bria-fibo": "concat[none,layers=-2;-1]",
}


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float32), rtol=0, atol=atol)


# ---- grammar ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_parses_round_trips_and_names_itself(name):
    strategy = parse_strategy(f"recipe:{name}")
    assert str(strategy) == EXPANSIONS[name] == RECIPES[name].strategy
    assert parse_strategy(str(strategy)) == strategy
    assert recipe_of(str(strategy)) == f"recipe:{name}"


def test_recipe_list_is_the_documented_one():
    assert set(RECIPES) == set(EXPANSIONS)
    assert recipe_of("concat[layernorm,layers=1/4;1/2;3/4]") is None  # the FLUX.2 layers without its choices


@pytest.mark.parametrize(
    ("blocks", "states"),
    [
        (6, [2, 3, 5]),
        (18, [5, 9, 14]),
        (30, [8, 15, 23]),
        (24, [6, 12, 18]),
        (36, [9, 18, 27]),
        (40, [10, 20, 30]),
    ],
)
def test_flux2_depth_fractions_round_half_up(blocks, states):
    # floor(f * B + 1/2): 6 blocks: 1.5 -> 2, 3, 4.5 -> 5; 18: 4.5 -> 5, 9, 13.5 -> 14; 30: 7.5 -> 8, 15, 22.5 -> 23.
    assert selected_states("recipe:flux2", blocks + 1) == states
    assert output_width("recipe:flux2", blocks + 1, 10) == 30


def test_positions_lists_and_fraction_slices():
    assert selected_states("layer:1/2", 19) == [9]
    assert selected_states("layer:0/1", 19) == [0] and selected_states("layer:1/1", 19) == [18]
    assert selected_states("concat[layers=-2;-1]", 19) == [17, 18]
    assert selected_states("mean[layers=2;1/2;-1]", 31) == [2, 15, 30]
    assert selected_states("norm_mean[layers=1/2:]", 19) == list(range(9, 19))
    assert selected_states("norm_mean[no_embed,layers=:1/2]", 7) == [1, 2]
    assert selected_states("recipe:cosmos2.5", 7) == [1, 2, 3, 4, 5, 6]
    assert selected_states("recipe:ltx2", 7) == list(range(7))
    assert selected_states("recipe:hunyuan", 31) == [28]
    assert str(parse_strategy("concat[layers=2/4;4/4]")) == "concat[layers=1/2;1/1]"
    assert str(parse_strategy("norm_mean[template=chat,minmax]")) == "norm_mean[minmax,template=chat]"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("recipe:dalle", "Known recipes: recipe:paper, recipe:flux2"),
        ("concat[layers=3/2;1]", "must lie in [0, 1]"),
        ("layer:-1/2", "must lie in [0, 1]"),
        ("concat[layers=1;1]", "lists a position twice"),
        ("concat[layers=1:2;3]", "not both"),
        ("concat[layers=1;;3]", "integers or fractions"),
        ("last[template=llama]", "known templates: qwen-image, hunyuan"),
        ("mean[minmax]", "use 'norm_mean[minmax]'"),
    ],
)
def test_bad_recipe_and_grammar_strings(bad, message):
    with pytest.raises(ValueError) as err:
        parse_strategy(bad)
    assert message in str(err.value)


def test_lists_must_resolve_shallow_to_deep_and_distinct():
    with pytest.raises(ValueError, match="shallow to deep"):
        selected_states("concat[layers=3;1]", 7)
    with pytest.raises(ValueError, match="round to the same state"):
        selected_states("recipe:flux2", 3)  # 2 blocks: 1/4 -> 1, 1/2 -> 1
    with pytest.raises(ValueError, match="-7 <= k <= 6"):
        selected_states("concat[layers=1;9]", 7)


def test_projection_parameters_per_arm():
    # Gemma-3-270M (19 states x 640) into a 256-wide cross-attention: (in + 1) * 256 (+ layer logits).
    assert projection_parameters("recipe:paper", 19, 640, 256) == 641 * 256
    assert projection_parameters("recipe:flux2", 19, 640, 256) == (3 * 640 + 1) * 256
    assert projection_parameters("recipe:ltx2", 19, 640, 256) == (19 * 640 + 1) * 256
    assert projection_parameters("recipe:cosmos2.5", 19, 640, 256) == (18 * 640 + 1) * 256
    assert projection_parameters("recipe:bria-fibo", 19, 640, 256) == (2 * 640 + 1) * 256
    assert projection_parameters("learned", 19, 640, 256) == 641 * 256 + 19


# ---- minmax by hand --------------------------------------------------------------------------------------


def test_minmax_is_per_layer_over_the_prompts_real_tokens():
    # One state, two prompts of width 2. Prompt 0 has 2 real tokens and a padding token of 100s that must
    # not count: entries 1, 3, 5, -1 -> mean 2, max 5, min -1, range 6. Prompt 1: entries 0, 4 -> mean 2, range 4.
    hidden = torch.tensor([[[[1.0, 3.0], [5.0, -1.0], [100.0, 100.0]], [[0.0, 4.0], [7.0, 7.0], [7.0, 7.0]]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    e = 1e-6
    expected = [
        [[-1 / (6 + e), 1 / (6 + e)], [3 / (6 + e), -3 / (6 + e)], [0.0, 0.0]],
        [[-2 / (4 + e), 2 / (4 + e)], [0.0, 0.0], [0.0, 0.0]],
    ]
    close(aggregate(hidden, mask, "last[minmax]"), expected)
    close(aggregate(hidden, mask, "concat[minmax]"), expected)
    # Per layer: a second state with its own statistics goes into its own slot of the concat.
    stacked = torch.cat([hidden, 2 * hidden])
    close(aggregate(stacked, mask, "concat[minmax]")[..., 2:], expected)  # scale-free: (2x - 2m) / 2r


def test_minmax_needs_the_mask_in_the_fold():
    with pytest.raises(ValueError, match="pass Aggregator"):
        Aggregator("recipe:ltx2", 7)


# ---- the streaming fold keeps O(1) layers ---------------------------------------------------------------


def _held_elements(agg: Aggregator) -> int:
    """Elements of every tensor the aggregator references (attributes, and inside lists / dicts)."""
    total = 0
    for value in vars(agg).values():
        items = (
            value.values() if isinstance(value, dict) else value if isinstance(value, list | set) else [value]
        )
        total += sum(v.numel() for v in items if isinstance(v, torch.Tensor))
    return total


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_fold_memory_is_independent_of_depth_except_concat(name):
    b, t, d = 2, 5, 8
    mask = torch.ones(b, t, dtype=torch.bool)
    held = {}
    for num_states in (7, 19, 31):
        agg = Aggregator(f"recipe:{name}", num_states, mask=mask)
        refs = []
        for i in range(num_states):
            state = torch.randn(b, t, d)
            refs.append(weakref.ref(state))
            agg.add(i, state)
            del state
        gc.collect()
        assert all(r() is None for r in refs), "the fold kept a reference to a state it was fed"
        held[num_states] = _held_elements(agg) - mask.numel()
        agg.result(mask)
    n = {s: len(selected_states(f"recipe:{name}", s)) for s in held}
    if parse_strategy(f"recipe:{name}").kind == "concat":
        assert held == {s: b * t * n[s] * d for s in held}  # inherently L x D wide
    else:
        assert held == {7: b * t * d, 19: b * t * d, 31: b * t * d}


# ---- templates: exact dropping on real tokenizers --------------------------------------------------------


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from t2istudy.text.encoders import converted_dir, resolve_encoder

    return AutoTokenizer.from_pretrained(
        converted_dir(resolve_encoder("smollm2-135m")), local_files_only=True
    )


@pytest.fixture(scope="module")
def gemma_tokenizer():
    from transformers import AutoTokenizer

    from t2istudy.text.encoders import converted_dir, resolve_encoder

    return AutoTokenizer.from_pretrained(converted_dir(resolve_encoder("gemma3-270m")), local_files_only=True)


# SmolLM2 (ChatML): "<|im_start|>user\n" = 1 4093 198; "two red circles" = 11355 2382 11144 (two, Ġred, Ġcircles);
# "<|im_end|>\n<|im_start|>assistant\n" = 2 198 1 520 9531 198. No BOS. Pad = <|im_end|> = 2.
CHAT_PREFIX, PROMPT_IDS, CHAT_SUFFIX = [1, 4093, 198], [11355, 2382, 11144], [2, 198, 1, 520, 9531, 198]


def test_template_tokens_built_and_dropped_by_hand_smollm(smol_tokenizer):
    assert special_tokens(smol_tokenizer) == ([], [])
    chat = TEMPLATES["chat"]
    for keep, kept in [
        ("all", list(range(12))),
        ("prompt", [3, 4, 5]),
        ("prompt+suffix", list(range(3, 12))),
        ("bos+prompt", [3, 4, 5]),  # no BOS in SmolLM2: the prompt alone
    ]:
        template = Template("t", chat.prefix, chat.suffix, keep, "test")
        w = wrap_and_tokenize(smol_tokenizer, ["two red circles", "two"], template, max_length=128, pad_id=2)
        assert w.ids[0].tolist() == CHAT_PREFIX + PROMPT_IDS + CHAT_SUFFIX
        assert w.ids[1].tolist() == CHAT_PREFIX + [11355] + CHAT_SUFFIX + [2, 2]
        assert w.mask.sum(1).tolist() == [12, 10]
        assert w.keep[0].tolist() == kept and w.keep_mask[0].all()
        if keep in ("prompt", "bos+prompt"):  # the kept ids are the prompt's own, at the prompt's positions
            assert w.ids[0][w.keep[0]].tolist() == PROMPT_IDS
            assert w.keep[1].tolist() == [3, 0, 0] and w.keep_mask[1].tolist() == [True, False, False]
    assert smol_tokenizer.decode(PROMPT_IDS) == "two red circles"


def test_template_truncates_the_prompt_not_the_template(smol_tokenizer):
    w = wrap_and_tokenize(smol_tokenizer, ["two red circles"], TEMPLATES["chat"], max_length=2, pad_id=2)
    assert w.ids[0].tolist() == CHAT_PREFIX + PROMPT_IDS[:2] + CHAT_SUFFIX
    assert w.n_truncated == 1


def test_sana_keeps_bos_and_prompt_gemma(gemma_tokenizer):
    """Gemma adds <bos> (id 2) before the text: Sana's cut keeps it and the prompt, not the instruction."""
    assert special_tokens(gemma_tokenizer) == ([2], [])
    own = gemma_tokenizer("two red circles", add_special_tokens=False)["input_ids"]
    instruction = gemma_tokenizer(TEMPLATES["sana"].prefix, add_special_tokens=False)["input_ids"]
    w = wrap_and_tokenize(gemma_tokenizer, ["two red circles"], "sana", max_length=128, pad_id=0)
    assert w.ids[0].tolist() == [2, *instruction, *own]
    start = 1 + len(instruction)
    assert w.keep[0].tolist() == [0, *range(start, start + len(own))]
    assert w.ids[0][w.keep[0]].tolist() == [2, *own]
    assert gemma_tokenizer.decode(own) == "two red circles"


# ---- every recipe against a hand-computed reference on a tiny model -------------------------------------


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    """A random 6-block Llama (7 states of width 16) with SmolLM2's tokenizer."""
    import transformers as tf

    from t2istudy.text.encoders import FrozenEncoder

    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=len(smol_tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return FrozenEncoder(tf.LlamaModel(config), smol_tokenizer, name="tiny", kind="decoder")


PROMPTS = ["two red circles", "two"]


def _reference_states(tiny, prefix: list[int], suffix: list[int]) -> list[tuple[torch.Tensor, list[int]]]:
    """Per prompt: transformers' hidden states [7, T, 16] of prefix + prompt + suffix, run alone, and the
    prompt's positions."""
    out = []
    for ids in (PROMPT_IDS, PROMPT_IDS[:1]):
        seq = torch.tensor([prefix + ids + suffix])
        with torch.no_grad():
            states = tiny.model(input_ids=seq, output_hidden_states=True, use_cache=False).hidden_states
        out.append((torch.stack([h[0] for h in states]), list(range(len(prefix), len(prefix) + len(ids)))))
    return out


def _ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-5)


def _std(x):
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6)


def _rms(x):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _minmax(x):  # one prompt's tokens of one layer [T, D]
    return (x - x.mean()) / (x.max() - x.min() + 1e-6)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# recipe -> (template text to build by hand (prefix, suffix) or None, which positions are kept, reference of the
# kept states h [7, K, 16]); hand choices: 6 blocks, -2 = state 5, -3 = state 4, FLUX.2 = states 2, 3, 5.
HAND = {
    "paper": (None, "all", lambda h: _ln(h).mean(0)),
    "flux2": ("chat", "all", lambda h: torch.cat([h[2], h[3], h[5]], -1)),
    "cosmos2.5": ("cosmos2.5", "all", lambda h: torch.cat([_std(h[i]) for i in range(1, 7)], -1)),
    "ltx2": (None, "all", lambda h: torch.cat([_minmax(h[i]) for i in range(7)], -1)),
    "ltx2.3": (None, "all", lambda h: torch.cat([_rms(h[i]) for i in range(7)], -1)),
    "lumina2": ("lumina2", "all", lambda h: h[5]),
    "z-image": ("chat", "all", lambda h: h[5]),
    "hunyuan": ("hunyuan", "prompt+suffix", lambda h: h[4]),
    "qwen-image": ("qwen-image", "prompt+suffix", lambda h: h[6]),
    "sana": ("sana", "prompt", lambda h: h[6]),  # bos+prompt; SmolLM2 has no BOS
    "bria-fibo": (None, "all", lambda h: torch.cat([h[5], h[6]], -1)),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_matches_hand_computed_reference_on_tiny_model(tiny, name):
    template, keep, combine = HAND[name]
    tok = tiny.tokenizer
    prefix = _ids(tok, TEMPLATES[template].prefix) if template else []
    suffix = _ids(tok, TEMPLATES[template].suffix) if template and TEMPLATES[template].suffix else []
    features, mask = tiny.encode_aggregated(PROMPTS, f"recipe:{name}", batch_size=2)
    for row, (states, prompt_pos) in enumerate(_reference_states(tiny, prefix, suffix)):
        total = states.shape[1]
        kept = {"all": range(total), "prompt": prompt_pos, "prompt+suffix": range(prompt_pos[0], total)}[keep]
        expected = combine(states[:, list(kept)])
        n = len(kept)
        assert mask[row].tolist() == [True] * n + [False] * (mask.shape[1] - n)
        torch.testing.assert_close(features[row, :n], expected, rtol=0, atol=1e-5, msg=name)
        assert features[row, n:].abs().sum() == 0


def test_template_streaming_equals_stacked_and_ids_are_the_prompts(tiny):
    for template in ("chat", "qwen-image"):
        states = tiny.encode(PROMPTS, template=template)
        assert states.template == template
        for strategy in (f"norm_mean[template={template}]", f"concat[minmax,template={template}]"):
            streamed, mask = tiny.encode_aggregated(PROMPTS, strategy, batch_size=1)
            assert torch.equal(mask, states.mask)
            torch.testing.assert_close(
                streamed, aggregate(states.hidden, states.mask, strategy), rtol=0, atol=1e-5
            )
    prompt_only = tiny.encode(PROMPTS, template="sana")  # SmolLM2: no BOS, so the prompt's tokens alone
    assert prompt_only.ids[0].tolist() == PROMPT_IDS
    assert prompt_only.ids[1, :1].tolist() == PROMPT_IDS[:1] and prompt_only.mask.sum(1).tolist() == [3, 1]


def test_one_forward_pass_per_template(tiny):
    with pytest.raises(ValueError, match="call it once per template"):
        tiny.encode_aggregated_many(PROMPTS, ["recipe:qwen-image", "recipe:paper"])


def test_null_prompt_under_a_template(tiny):
    feats, mask = tiny.encode_null("recipe:qwen-image")  # "" keeps only the suffix's 6 tokens
    assert mask.tolist() == [[True] * 6]
    feats, mask = tiny.encode_null("last[template=hunyuan]")
    assert mask.tolist() == [[True]]  # <|im_end|>


# ---- the template is part of the cache key ---------------------------------------------------------------


def test_cache_key_includes_the_template(tmp_path, tiny):
    captions = ["two red circles", "two"]
    plain, templated = EmbeddingCache.build_many(
        tiny, ["last", "recipe:qwen-image"], captions, tmp_path, progress=False
    )
    digest = TEMPLATES["qwen-image"].digest()
    assert templated.strategy == "last[template=qwen-image]" and templated.meta["template_digest"] == digest
    assert f"-T{digest}-L" in templated.path.name and plain.meta["template_digest"] is None
    assert plain.path != templated.path
    direct, _ = tiny.encode_aggregated(captions, "recipe:qwen-image")
    feats, _ = templated.embed(captions)
    torch.testing.assert_close(feats, direct[:, : feats.shape[1]], rtol=1e-3, atol=1e-3)  # float16 storage
    assert EmbeddingCache.find(tmp_path, "tiny", "recipe:qwen-image", captions).path == templated.path
    # An entry written for another version of the template's text is not served.
    meta = templated.path / "meta.json"
    meta.write_text(meta.read_text().replace(digest, "00000000"))
    assert EmbeddingCache.find(tmp_path, "tiny", "recipe:qwen-image", captions) is None
    assert math.isfinite(plain.token_rms[0])


def test_probe_sweep_reads_each_template_from_its_own_encoder_pass(tiny, monkeypatch):
    """Recipes with prompt templates in one probe sweep: each template gets its own forward pass, and a
    templated layer (lumina2: layer -2 under its template) is not read from the plain pass's stack."""
    from t2istudy.probe.layerwise import ProbeOptions, from_stack, sweep, template_of

    assert template_of("recipe:lumina2") == "lumina2" and template_of("layers/3") is None
    assert from_stack("layer:4") and from_stack("learned") and not from_stack("layer:-2[template=lumina2]")
    calls: list[str | None] = []
    real = tiny.encode

    def encode(batch, template=None, **kw):
        calls.append(template)
        return real(batch, template=template, **kw)

    monkeypatch.setattr(tiny, "encode", encode)
    result = sweep(
        ["tiny"],
        ["layer:5", "recipe:lumina2", "recipe:sana"],
        seeds=[0],
        options=ProbeOptions(steps=2, n_boot=10),
        n_train=40,
        n_eval=16,
        control_representations=["last"],
        random_init=["tiny"],
        load=lambda name, **_: tiny,
        progress=False,
    )
    assert calls == [None, "lumina2", "sana", None]  # 56 prompts: one chunk per template, then random init
    table = result.table
    assert sorted(table.loc[table.control == "none", "representation"].unique()) == [
        "last[template=sana]",
        "layer:-2[template=lumina2]",
        "layer:5",
    ]
    assert list(table.loc[table.control == "shuffled", "representation"].unique()) == ["last"]
    # the random-init encoder probes the control representations only, with no shuffled control on top
    assert list(table.loc[table.control == "random_init", "representation"].unique()) == ["last"]
    assert len(table[table.control == "shuffled"]) == len(table[table.control == "random_init"])


def test_probe_sweep_interrupted_resumes_from_its_finished_groups_and_equals_one_pass(tiny, tmp_path):
    """A sweep killed in its second template group, rerun with the same arguments, reads the first group
    back (no second encoder pass for it) and ends with the table of an uninterrupted sweep. Other settings
    compute afresh beside the stored group; a record without its table is named and computed again."""
    from t2istudy.probe.layerwise import ProbeOptions, sweep

    calls: list[str | None] = []
    real = tiny.encode

    class Killed(RuntimeError):
        pass

    def encoder(kill_at):
        def encode(batch, template=None, **kw):
            calls.append(template)
            if template == kill_at:
                raise Killed(template)
            return real(batch, template=template, **kw)

        return SimpleNamespace(encode=encode)

    def run(kill_at="no template", resume_dir=None, steps=2):
        return sweep(
            ["tiny-0.5b"],  # a dotted name, like qwen2.5-0.5b: the stored files keep it whole
            ["recipe:paper", "recipe:sana"],
            seeds=[0],
            options=ProbeOptions(steps=steps, n_boot=10, threads=1),
            n_train=40,
            n_eval=16,
            control_representations=["last"],
            load=lambda name, **_: encoder(kill_at),
            progress=False,
            resume_dir=resume_dir,
        )

    whole = run()
    assert calls == [None, "sana"]
    store = tmp_path / "probe"
    calls.clear()
    with pytest.raises(Killed):
        run(kill_at="sana", resume_dir=store)
    assert calls == [None, "sana"] and len(list(store.glob("tiny-0.5b__plain__*.json"))) == 1
    calls.clear()
    resumed = run(resume_dir=store)
    assert calls == ["sana"]  # the plain group was read back, not encoded again
    pd.testing.assert_frame_equal(resumed.table, whole.table)
    assert resumed.timings.loc[0, "encode_s"] > 0 and resumed.timings.loc[0, "load_s"] >= 0
    assert len(list(store.glob("*.json"))) == len(list(store.glob("*.csv"))) == 2
    calls.clear()
    run(resume_dir=store, steps=3)  # another budget: both groups afresh, the stored ones kept
    assert calls == [None, "sana"] and len(list(store.glob("*.json"))) == 4
    for table in store.glob("tiny-0.5b__sana__*.csv"):
        table.unlink()
    calls.clear()
    with pytest.warns(UserWarning, match=r"its table .*tiny-0\.5b__sana__.*\.csv is missing"):
        again = run(resume_dir=store)  # a done-mark without its table: the group is computed again
    assert calls == ["sana"]
    pd.testing.assert_frame_equal(again.table, whole.table)


# ---- a template's shared prefix runs once ------------------------------------------------------------------


def test_shared_prefix_runs_once_and_equals_whole_prompts(tiny, monkeypatch):
    """qwen-image's 48-token prefix is run once per call, then each batch continues from its cache; the
    states equal those of running every prompt whole. chat's 3-token prefix is below the threshold."""
    from t2istudy.text.encoders import PREFIX_CACHE_MIN_TOKENS

    prompts = ["two red circles", "two", "a blue square left of a green triangle", "three"]
    wrapped = tiny.tokenize_templated(prompts, "qwen-image")
    prefix = tiny.tokenizer(TEMPLATES["qwen-image"].prefix, add_special_tokens=False)["input_ids"]
    assert wrapped.shared == len(prefix) >= PREFIX_CACHE_MIN_TOKENS  # SmolLM2 adds no BOS
    assert tiny.tokenize_templated(prompts, "chat").shared < PREFIX_CACHE_MIN_TOKENS
    calls = []
    real = tiny.model.forward

    @functools.wraps(real)  # keeps the signature the encoder reads the cache argument's name from
    def forward(*args, input_ids=None, **kw):
        calls.append(input_ids.shape[1])
        return real(*args, input_ids=input_ids, **kw)

    monkeypatch.setattr(tiny.model, "forward", forward)
    cached = tiny.encode(prompts, batch_size=2, template="qwen-image")
    assert calls[0] == len(prefix) and all(n < len(prefix) for n in calls[1:]) and len(calls) == 3
    streamed, mask = tiny.encode_aggregated(prompts, "recipe:sana", batch_size=3)
    monkeypatch.setattr(tiny, "prefix_cache", False)
    whole = tiny.encode(prompts, batch_size=2, template="qwen-image")
    assert torch.equal(cached.mask, whole.mask) and torch.equal(cached.ids, whole.ids)
    torch.testing.assert_close(cached.hidden, whole.hidden, rtol=0, atol=1e-5)
    streamed_whole, mask_whole = tiny.encode_aggregated(prompts, "recipe:sana", batch_size=3)
    assert torch.equal(mask, mask_whole)
    torch.testing.assert_close(streamed, streamed_whole, rtol=0, atol=1e-5)
    calls.clear()
    tiny.encode(prompts, batch_size=2, template="qwen-image")
    whole_rows = [int(wrapped.mask[rows].sum(1).max()) for rows in (slice(0, 2), slice(2, 4))]
    assert calls == whole_rows  # off: each batch's rows whole, no prefix pass
