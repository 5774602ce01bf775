"""The paper-scale path end to end on one GPU, small: train sd2-256 a few steps under the launcher's own
``accelerate launch`` command, sample GenAI-Bench's 527 prompts on the GPU, score them with VQAScore against
the fake OpenAI-compatible server (tests/vqa_server.py), and write the timings.

The GPU machine has no encoder weights and no network, so the text side is a weight-free word-hash encoder
(tests/helpers.py FakeEncoder) whose embedding cache is built here for the training captions and the
prompts, and the VAE is a randomly initialised Stable Diffusion AutoencoderKL (the cost does not depend on
its weights). ``--cpu`` is the degraded smoke mode that checks this script on a CPU machine: cpu-tiny-latent,
a tiny random VAE of its shape, 2 sampling steps.

    scripts/gpu_check.sh                 # on the GPU machine: writes figures/gpu/gpu_check.json
    scripts/gpu_check.sh --cpu --out /tmp/gpu_check.json     # here
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fake encoder and the fake VQA server
from helpers import FakeEncoder  # noqa: E402
from vqa_server import FakeVQAServer  # noqa: E402

from t2istudy.diffusion.data import shapes_pool  # noqa: E402
from t2istudy.diffusion.model import get_preset  # noqa: E402
from t2istudy.diffusion.train_folder import read_options, read_train_log  # noqa: E402
from t2istudy.study import launch, run  # noqa: E402
from t2istudy.study.run_config import RunConfig  # noqa: E402
from t2istudy.text.cache import EmbeddingCache  # noqa: E402
from t2istudy.world.genai_bench import load_genai_bench  # noqa: E402


def random_vae(path: Path, preset_name: str) -> None:
    """A random AutoencoderKL whose latents fit the preset (SD's architecture for sd2-256)."""
    from diffusers import AutoencoderKL

    preset = get_preset(preset_name)
    levels = (preset.image_size // preset.latent_size).bit_length()  # 8x -> 4 levels, 2x -> 2
    widths = (128, 256, 512, 512) if preset_name == "sd2-256" else (8, 8)
    torch.manual_seed(0)
    AutoencoderKL(
        latent_channels=preset.latent_channels,
        sample_size=preset.image_size,
        layers_per_block=2 if preset_name == "sd2-256" else 1,
        block_out_channels=widths[:levels],
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=32 if preset_name == "sd2-256" else 8,
    ).save_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="smoke mode on a CPU machine (tiny preset)")
    parser.add_argument(
        "--work",
        default="/tmp/t2istudy-gpu-check",
        help="scratch folder: VAE, text cache, the run, VQA cache",
    )
    parser.add_argument(
        "--out",
        default=str(REPO / "figures" / "gpu" / "gpu_check.json"),
        help="JSON the timings are written to",
    )
    parser.add_argument("--steps", type=int, default=20, help="training steps")
    parser.add_argument("--batch", type=int, default=16, help="training batch per GPU")
    parser.add_argument(
        "--sample_steps", type=int, default=None, help="DDIM steps (default: preset's; --cpu: 2)"
    )
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("No GPU here: run scripts/gpu_check.sh --cpu for the smoke mode on a CPU machine.")
    preset = "cpu-tiny-latent" if args.cpu else "sd2-256"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    # Inputs: a VAE of the preset's shape, the text cache of the training pool and of the 527 prompts.
    random_vae(work / "vae", preset)
    pool = 64
    out = work / "run"
    config = RunConfig(
        encoder="fake-8", strategy="norm_mean", preset=preset, max_train_steps=args.steps,
        train_options={
            "pool_size": pool, "cache_dir": str(work / "cache"), "vae_path": str(work / "vae"),
            "train_batch_size": args.batch, "checkpointing_steps": args.steps, "logging_steps": 1,
            "lr_warmup_steps": 0, "latents": "online",
        },
        benchmark="genai-bench", scorer="vqascore", sample_steps=args.sample_steps or (2 if args.cpu else None),
        vqa_cache_path=str(work / "vqascore.sqlite"),
    )  # fmt: skip
    opts = config.to_train_options(config.train_dir(out))
    bench = load_genai_bench()
    encoder = FakeEncoder()
    EmbeddingCache.build(encoder, "norm_mean", shapes_pool(pool, 0, get_preset(preset).image_size).captions, work / "cache", progress=False)  # fmt: skip
    EmbeddingCache.build(encoder, "norm_mean", bench["prompt"].tolist(), work / "cache", progress=False)
    timings["inputs_s"] = time.perf_counter() - t

    # Train: the launcher's command (one process per GPU; gloo on the CPU), as each SLURM job runs it.
    gpus = max(torch.cuda.device_count(), 1) if not args.cpu else 1
    cmd = launch.accelerate_command(launch.train_flags(opts), launch.Resources(gpus=gpus))
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    timings["train_s"] = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"training failed:\n{done.stderr[-4000:]}")
    log = read_train_log(opts.output_dir)
    processes = read_options(opts.output_dir)["derived"]["num_processes"]

    # The run finds the model trained, samples on the training device and scores against the fake server.
    with FakeVQAServer() as server:
        config.vqa_base_url = server.url
        os.environ["OPENAI_API_KEY"] = "sk-gpu-check"
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        record = run.run(config, out)
        timings["sample_and_score_s"] = time.perf_counter() - t
    metrics = record.metrics
    usage = metrics["vqascore"]["genai-bench"]["usage"]
    record = {
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "mode": "cpu smoke" if args.cpu else "gpu",
        "torch": torch.__version__,
        "preset": preset,
        "gpus": gpus,
        "train_steps": args.steps,
        "train_batch_per_gpu": args.batch,
        "train_command": cmd,
        "first_loss": log[0]["loss"],
        "last_loss": log[-1]["loss"],
        "num_processes": processes,
        "prompts": metrics["n_prompts"],
        "sample_steps": config.sample_steps or get_preset(preset).sample_steps,
        "sample_device": metrics["sample_device"],
        "sample_and_score_s": metrics["sample_seconds"],  # the run times both together
        "vqascore_wall_s": round(usage["wall_s"], 1),
        "peak_sampling_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
        ),
        "overall": metrics["tiers"]["genai-bench"]["overall"]["mean"],
        "usage": usage,
        "skills_note": metrics.get("skills_note"),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "load_average": os.getloadavg(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1, default=str))
    print(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
