"""Issue 22, the trainer half: a resume refuses changed options, checkpoints and logs survive kills and power
loss, a finished folder is not retrained by accident, and options are range-checked when made."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import TINY_POOL as POOL
from helpers import build_tiny_cache, tiny_train_options

from t2istudy import staging
from t2istudy.diffusion import run_checks
from t2istudy.diffusion import train as train_module
from t2istudy.diffusion import train_folder as tf
from t2istudy.diffusion.options import TrainOptions, resolve_options
from t2istudy.diffusion.train import main, train


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return build_tiny_cache(tmp_path_factory.mktemp("cache"))


options = tiny_train_options


@pytest.fixture(scope="module")
def stopped(cache_dir, tmp_path_factory):
    """A run killed at step 3 of 6 (checkpoint-3 and log lines 1-3); tests resume copies of it."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    train(options(cache_dir, run, stop_after_steps=3))
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# ---- 1. a resume compares the options --------------------------------------------------------------------


def resolved(**kw) -> dict:
    return asdict(resolve_options(TrainOptions(preset="cpu-tiny", **kw)))


def test_result_changing_differences_lists_what_would_change_the_result():
    old = resolved(max_train_steps=100)
    assert tf.result_changing_differences(old, dict(old)) == {}
    new = {**old, "seed": 1, "strategy": "mean", "learning_rate": 2e-3, "logging_steps": 3, "num_threads": 2}
    assert tf.result_changing_differences(old, new) == {
        "seed": (0, 1),
        "strategy": ("norm_mean", "mean"),
        "learning_rate": (old["learning_rate"], 2e-3),
    }
    neutral = {
        "logging_steps": 3,
        "num_threads": 2,
        "progress": False,
        "report_to": "none",
        "output_dir": "elsewhere",
        "cache_dir": "/other/cache",
        "checkpointing_steps": 7,
        "checkpoints_total_limit": 5,
        "stop_after_steps": 20,
        "resume_from_checkpoint": "latest",
        "dataloader_num_workers": 2,
    }
    assert tf.result_changing_differences(old, {**old, **neutral}) == {}
    assert set(tf.changed_options(old, {**old, **neutral})) == set(neutral)
    # A ladder extends a constant schedule; a decaying one spans max_train_steps, and nothing may shrink.
    assert tf.result_changing_differences(old, {**old, "max_train_steps": 200}) == {}
    assert tf.result_changing_differences(old, {**old, "max_train_steps": 50}) == {
        "max_train_steps": (100, 50)
    }
    cosine = resolved(max_train_steps=100, lr_scheduler="cosine")
    assert tf.result_changing_differences(cosine, {**cosine, "max_train_steps": 200}) == {
        "max_train_steps": (100, 200)
    }
    # More processes change the global batch; an option older records lack is not compared.
    one, two = ({**old, "derived": {"global_batch_size": b}} for b in (8, 16))
    assert tf.result_changing_differences(one, two) == {"global_batch_size": (8, 16)}
    # A grid's resolved options leave the preset's own autoencoder as None; options.json records its folder.
    latent = {**old, "vae_path": "cache/autoencoders/shapes-f2c4-8e8174dd7f"}
    assert tf.result_changing_differences(latent, old) == {}
    assert tf.result_changing_differences(latent, {**old, "vae_path": "/other/vae"}) == {
        "vae_path": ("cache/autoencoders/shapes-f2c4-8e8174dd7f", "/other/vae")
    }
    older = {k: v for k, v in old.items() if k != "snr_gamma"}
    assert tf.result_changing_differences(older, {**old, "snr_gamma": 5.0}) == {}
    text = tf.describe_differences({"seed": (0, 1), "max_train_steps": (100, 200)}, cosine)
    assert "--seed: 0 -> 1" in text and "--lr_scheduler cosine spans max_train_steps" in text


def test_resume_refuses_changed_options_and_records_neutral_ones(cache_dir, stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    recorded = (run / tf.OPTIONS).read_bytes()
    changed = dict(seed=1, strategy="mean", learning_rate=2e-3)
    with pytest.raises(ValueError, match="Cannot resume") as err:
        train(options(cache_dir, run, resume_from_checkpoint="latest", **changed))
    message = str(err.value)
    for line in ("--seed: 0 -> 1", "--strategy: 'norm_mean' -> 'mean'", "--learning_rate: 0.001 -> 0.002"):
        assert line in message
    assert "new --output_dir" in message and "Resume with the recorded values" in message
    assert (run / tf.OPTIONS).read_bytes() == recorded  # nothing rewritten
    with pytest.raises(ValueError, match="--seed: 0 -> 1"):  # the command line too (no silent rc 0)
        main(["--encoder", "fake-8", "--preset", "cpu-tiny", "--pool_size", str(POOL), "--cache_dir",
              str(cache_dir), "--output_dir", str(run), "--max_train_steps", "6", "--train_batch_size", "8",
              "--lr_warmup_steps", "2", "--seed", "1", "--report_to", "none", "--progress", "false",
              "--resume_from_checkpoint", "latest"])  # fmt: skip
    # Result-neutral changes and a longer constant schedule are allowed, and recorded.
    train(
        options(
            cache_dir,
            run,
            resume_from_checkpoint="latest",
            logging_steps=2,
            checkpointing_steps=4,
            max_train_steps=8,
        )
    )
    record = json.loads((run / tf.OPTIONS).read_text())
    assert record["max_train_steps"] == 8 and record["logging_steps"] == 2
    assert record["resumed_with_changes"] == [
        {
            "step": 3,
            "changes": {
                "max_train_steps": [6, 8],
                "output_dir": [str(stopped), str(run)],  # this copy was moved: a location, recorded
                "checkpointing_steps": [3, 4],
                "stop_after_steps": [3, None],
                "logging_steps": [1, 2],
            },
        }
    ]
    assert [r["step"] for r in tf.read_train_log(run)] == [1, 2, 3, 4, 6, 8]


# ---- 2. checkpoint temporaries are unique per process ------------------------------------------------------


def test_checkpoint_temporaries_are_unique_and_stale_ones_are_cleaned(
    cache_dir, stopped, tmp_path, monkeypatch
):
    a, b = staging.temporary_name("checkpoint-3"), staging.temporary_name("checkpoint-3")
    assert a != b and a.startswith("checkpoint-3.tmp-") and f"-{os.getpid()}-" in a
    assert tf.checkpoint_step(a) is None  # never counted as a checkpoint

    run = copy_of(stopped, tmp_path)
    ckpts = run / tf.CHECKPOINTS
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = staging.temporary_name("x").split(".tmp-")[1].split("-")[0]
    stale = [ckpts / "checkpoint-3.tmp", ckpts / f"checkpoint-6.tmp-{host}-{int(dead.stdout)}-00000000"]
    foreign = ckpts / "checkpoint-6.tmp-otherhost-1-00000000"  # another machine's writer may be alive
    for path in (*stale, foreign):
        path.mkdir()
    assert staging.stale_temporaries(ckpts, "checkpoint-") == sorted(stale)
    saved = []
    save_state = train_module.Accelerator.save_state
    monkeypatch.setattr(
        train_module.Accelerator,
        "save_state",
        lambda self, d, **k: saved.append(d) or save_state(self, d, **k),
    )
    train(options(cache_dir, run, resume_from_checkpoint="latest"))
    assert len(saved) == 1 and Path(saved[0]).name.startswith(f"checkpoint-6.tmp-{host}-")
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-3", "checkpoint-6", foreign.name]


# ---- 3. a torn log ------------------------------------------------------------------------------------------


def test_torn_last_log_line_is_dropped_with_a_warning_and_a_bad_middle_line_is_named(tmp_path):
    log = tmp_path / tf.TRAIN_LOG
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo\x00\x00')
    with pytest.warns(UserWarning, match=rf"{tf.TRAIN_LOG}: dropped its torn last line 3"):
        assert [r["step"] for r in tf.read_train_log(tmp_path)] == [1, 2]
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo\n{"step": 3, "loss": 0.3}\n')
    with pytest.raises(
        ValueError, match=rf"{tf.TRAIN_LOG} line 2 is not valid JSON.*mv .*{tf.TRAIN_LOG}.bad"
    ):
        tf.read_train_log(tmp_path)


def test_resume_after_a_torn_log_trims_it_and_keeps_steps_strictly_increasing(cache_dir, stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    with open(run / tf.TRAIN_LOG, "a") as f:  # killed after logging step 4, power lost while writing step 5
        f.write('{"step": 4, "loss": 1.0, "grad_norm": 1.0, "lr": 0.001}\n{"step": 5, "loss": 0.')
    with pytest.warns(UserWarning, match="torn last line"):
        train(options(cache_dir, run, resume_from_checkpoint="latest"))
    steps = [r["step"] for r in tf.read_train_log(run)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert tf.read_train_log(run)[3]["loss"] != 1.0  # step 4 was logged again by the resumed run


# ---- 4. a finished folder is not retrained by accident --------------------------------------------------------


def test_rerunning_a_finished_or_checkpointed_folder_without_resume_is_refused(cache_dir, stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    with pytest.raises(FileExistsError, match="has checkpoint-3.*--resume_from_checkpoint latest"):
        train(options(cache_dir, run))
    train(options(cache_dir, run, resume_from_checkpoint="latest"))
    log, summary = (run / tf.TRAIN_LOG).read_bytes(), (run / tf.FINAL / tf.SUMMARY).read_bytes()
    with pytest.raises(
        FileExistsError, match=r"is trained \(final/ exists\).*new --output_dir.*delete the folder"
    ):
        train(options(cache_dir, run))
    assert (run / tf.TRAIN_LOG).read_bytes() == log and (run / tf.FINAL / tf.SUMMARY).read_bytes() == summary
    tf.delete_checkpoints(run)  # as the run notebook does: nothing left to train further from
    with pytest.raises(FileNotFoundError, match="is trained .* no checkpoint left"):
        train(options(cache_dir, run, resume_from_checkpoint="latest", max_train_steps=8))


def test_a_run_killed_before_its_first_checkpoint_starts_over_with_a_fresh_log(cache_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / tf.TRAIN_LOG).write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    train(options(cache_dir, run, max_train_steps=2, checkpointing_steps=2))
    assert [r["step"] for r in tf.read_train_log(run)] == [1, 2] and tf.read_train_log(run)[0]["loss"] != 9.0


# ---- 5. option ranges, checked when the options are made ------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("logging_steps", 0, ">= 1"),
        ("seed", -1, "0 .. 2"),
        ("stop_after_steps", -3, ">= 1"),
        ("lr_warmup_steps", -5, ">= 0"),
        ("ema_decay", 2.0, r"\[0, 1\)"),
        ("train_batch_size", 0, ">= 1"),
        ("encode_batch_size", 0, ">= 1"),
        ("learning_rate", 0.0, "> 0"),
        ("learning_rate", float("nan"), "> 0"),
        ("caption_dropout", 1.0, r"\[0, 1\)"),
        ("max_train_steps", 0, ">= 1"),
        ("checkpointing_steps", 0, ">= 1"),
        ("gradient_accumulation_steps", 0, ">= 1"),
        ("snr_gamma", -1.0, ">= 0"),
        ("adam_beta2", 1.0, r"\[0, 1\)"),
        ("num_threads", 0, ">= 1"),
    ],
)
def test_out_of_range_options_are_refused_naming_flag_value_and_range(field, value, allowed):
    with pytest.raises(ValueError, match=rf"--{field} {value!r} is out of range: allowed {allowed}"):
        TrainOptions(**{field: value})


def test_option_types_and_choices_are_checked_at_construction_and_on_the_command_line(capsys):
    with pytest.raises(ValueError, match=r"--learning_rate '1e-3' is not valid: expected a number"):
        TrainOptions(learning_rate="1e-3")  # YAML reads 1e-3 as a string
    with pytest.raises(ValueError, match=r"--max_train_steps 10.5 is not valid: expected a whole number"):
        TrainOptions(max_train_steps=10.5)
    with pytest.raises(ValueError, match=r"--lr_scheduler 'cosin' is not valid: choose one of .*cosine"):
        TrainOptions(lr_scheduler="cosin")
    assert TrainOptions(snr_gamma=0.0, checkpoints_total_limit=0).snr_gamma == 0.0  # documented "off" values
    assert resolve_options(TrainOptions(preset="cpu-small")).train_batch_size == 64  # preset defaults pass
    with pytest.raises(SystemExit) as exit_:  # a usage error before anything loads
        main(["--logging_steps", "0"])
    assert (
        exit_.value.code == 2 and "--logging_steps 0 is out of range: allowed >= 1" in capsys.readouterr().err
    )


def test_a_shared_model_is_reused_only_for_the_options_it_was_trained_with(tmp_path):
    """run.ipynb's shared_train_dir: sampling a model trained for another arm would credit the wrong arm."""
    from dataclasses import replace

    from t2istudy.diffusion.model import get_preset

    asked = TrainOptions(encoder="smollm2-135m", strategy="last", preset="cpu-tiny", seed=0, output_dir="a")
    resolved = resolve_options(asked)
    trained_on_4 = run_checks.planned_options(resolved, get_preset(resolved.preset), world=4)
    (tmp_path / tf.OPTIONS).write_text(json.dumps(trained_on_4))
    # threads, logging and the folder do not change the model; neither does the machine it trained on
    run_checks.check_reusable(tmp_path, replace(asked, num_threads=1, output_dir="b", progress=False))
    with pytest.raises(ValueError, match=r"(?s)other options.*--seed: 0 -> 1.*leave it empty to train one"):
        run_checks.check_reusable(tmp_path, replace(asked, seed=1))
    longer = resolved.max_train_steps + 100  # a resume may extend a constant schedule; a reuse may not
    with pytest.raises(ValueError, match=rf"--max_train_steps: {resolved.max_train_steps} -> {longer}"):
        run_checks.check_reusable(tmp_path, replace(asked, max_train_steps=longer))
