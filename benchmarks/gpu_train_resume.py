"""The paper-scale training loop on one GPU: `t2istudy.diffusion.train` end to end with the sd2-256 preset in bf16
(VAE encode, cached LLM-side text, EMA, Min-SNR, checkpoints), an interrupted-and-resumed run against an
uninterrupted one, and the whole loop's images/s next to the bare training step.

Prepared for a GPU session. The GPU machine has no encoder weights, so the text cache is built here first
(MiniLM over the pool's captions, a few MB) and carried; the VAE is a randomly initialised SD
AutoencoderKL written to a local folder on that machine (the loop's cost does not depend on its weights):

    python benchmarks/gpu_train_resume.py --build-cache .gpu/cache    # here, on the CPU
    python benchmarks/gpu_train_resume.py --cache .gpu/cache          # on one H100: ~4 min

What it prints, and writes to <out>.json:
- loss at every step, uninterrupted vs stopped at --stop and resumed from `latest`. Steps before the
  stop measure the GPU's run-to-run nondeterminism alone (same code, same inputs); steps after add the
  resume. A resume that lost state (optimizer, EMA, LR schedule, data position, RNG) shows as a jump there;
- the final raw and EMA weights of both runs, max |difference|;
- images/s of the whole loop (steps --stop+1 .. --steps of the uninterrupted run, between its two
  checkpoints) and of the bare step (`gpu_sd2_throughput.run_loop`) in the same process, plus the VAE
  encode alone, so the difference between the two is accounted for.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import t2istudy.diffusion.train as T  # noqa: E402
from t2istudy.diffusion.checkpoint import final_weights  # noqa: E402
from t2istudy.diffusion.model import get_preset  # noqa: E402
from t2istudy.text.cache import EmbeddingCache  # noqa: E402

ENCODER, STRATEGY, PRESET = "minilm-l6", "norm_mean", "sd2-256"


def options(args, out: Path, **kw) -> T.TrainOptions:
    base = dict(
        encoder=ENCODER,
        strategy=STRATEGY,
        preset=args.preset,
        pool_size=args.pool,
        cache_dir=args.cache,
        vae_path=args.vae,
        output_dir=str(out),
        max_train_steps=args.steps,
        train_batch_size=args.batch,
        checkpointing_steps=args.stop,
        checkpoints_total_limit=1,
        logging_steps=1,
        report_to="none",
        progress=False,
        lr_warmup_steps=0,
        use_ema=True,
    )
    return T.TrainOptions(**{**base, **kw})


def build_cache(args) -> None:
    opts = T.resolve_options(options(args, Path("unused")))
    captions = list(T.build_data(opts, get_preset(opts.preset)).captions)
    entry = EmbeddingCache.get_or_build(
        args.build_cache,
        ENCODER,
        STRATEGY,
        captions,
        max_length=opts.max_length,
        batch_size=opts.encode_batch_size,
    )
    print(f"cache for {len(set(captions))} captions at {entry.path}")


def random_vae(path: str) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(  # Stable Diffusion's VAE architecture (83.7M parameters), random weights
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=256,
        layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    ).save_pretrained(path)


def vae_encode_rate(path: str, batch: int, dtype: torch.dtype) -> float:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(path).to("cuda", dtype).eval()
    x = torch.randn(batch, 3, 256, 256, device="cuda", dtype=dtype)
    with torch.no_grad():
        for _ in range(3):
            vae.encode(x).latent_dist.sample()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            vae.encode(x).latent_dist.sample()
        torch.cuda.synchronize()
    return batch * 10 / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-cache", help="build the text cache into this folder (run on the CPU machine)")
    ap.add_argument("--cache", default=".gpu/cache", help="the text cache folder (built by --build-cache)")
    ap.add_argument("--vae", default="/tmp/t2istudy_vae", help="folder the random-weight VAE is written to")
    ap.add_argument(
        "--work", default="/tmp/t2istudy_resume", help="scratch folder of the training runs (emptied first)"
    )
    ap.add_argument("--preset", default=PRESET, help="model preset; another only for a smoke test")
    ap.add_argument("--pool", type=int, default=512, help="scenes in the fixed training pool")
    ap.add_argument("--batch", type=int, default=64, help="training batch size")
    ap.add_argument("--steps", type=int, default=40, help="training steps per run")
    ap.add_argument(
        "--stop", type=int, default=20, help="step the interrupted run stops and checkpoints at, then resumes"
    )
    ap.add_argument("--out", default="figures/gpu/gpu_train_resume", help="path stem of the .json report")
    ap.add_argument("--smoke", action="store_true", help="CPU check of this script: no VAE, no bare step")
    ap.add_argument(
        "--loop-variants",
        type=int,
        nargs="*",
        default=None,
        metavar="WORKERS",
        help="only time the loop (no checkpoint writes, no resume), once per DataLoader worker count given",
    )
    args = ap.parse_args()
    if args.build_cache:
        args.cache = args.build_cache
        return build_cache(args)
    assert torch.cuda.is_available() or args.smoke, "run this on a GPU (--build-cache is the CPU half)"
    report: dict = {"torch": torch.__version__, "batch": args.batch}
    if not args.smoke:
        from gpu_sd2_throughput import run_loop

        report["device"] = torch.cuda.get_device_name()
        random_vae(args.vae)
        report["vae_encode_img_per_s"] = {
            "fp32": vae_encode_rate(args.vae, args.batch, torch.float32),
            "bf16": vae_encode_rate(args.vae, args.batch, torch.bfloat16),
        }
        bare = run_loop("t2istudy", args.batch, steps=20, warmup=5, device="cuda")
        report["bare_step_img_per_s"] = bare["img_per_s"]
        torch.cuda.empty_cache()

    marks: dict[int, tuple[float, float]] = {}  # step -> (checkpoint save begins, ends)
    save, write = T.save_checkpoint, args.loop_variants is None  # --loop-variants: time, never write

    def timed_save(accelerator, run_dir, step, keep):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        begin = time.perf_counter()
        if write:
            save(accelerator, run_dir, step, keep)
        marks[step] = (begin, time.perf_counter())

    T.save_checkpoint = timed_save
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    if args.loop_variants is not None:  # steps stop+1..steps timed between two skipped checkpoint writes
        for workers in args.loop_variants:
            marks.clear()
            T.train(options(args, work / f"w{workers}", dataloader_num_workers=workers))
            rate = (args.steps - args.stop) * args.batch / (marks[args.steps][0] - marks[args.stop][1])
            report[f"loop_img_per_s_workers{workers}"] = rate
            shutil.rmtree(work / f"w{workers}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(report, indent=1))
        print("\n".join(f"{k}: {v}" for k, v in report.items()))
        return
    t = time.perf_counter()
    full = T.train(options(args, work / "full"))
    report["full_run_wall_s"] = time.perf_counter() - t
    loop_s = marks[args.steps][0] - marks[args.stop][1]
    report["loop_img_per_s"] = (args.steps - args.stop) * args.batch / loop_s
    report["checkpoint_save_s"] = marks[args.stop][1] - marks[args.stop][0]
    if torch.cuda.is_available():
        report["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
    shutil.rmtree(full / "checkpoints")  # ~14 GB each: keep the disk for the second run

    part = T.train(options(args, work / "part", stop_after_steps=args.stop))
    assert not (part / "final").exists()
    T.train(options(args, work / "part", resume_from_checkpoint="latest"))
    a, b = ([r["loss"] for r in T.read_train_log(run)] for run in (full, part))
    assert len(a) == len(b) == args.steps, (len(a), len(b))
    diff = [abs(x - y) for x, y in zip(a, b, strict=True)]
    report["loss_full"], report["loss_resumed"] = a, b
    report["max_loss_diff_before_stop"] = max(diff[: args.stop])
    report["max_loss_diff_after_stop"] = max(diff[args.stop :])
    report["bitwise_equal_losses"] = a == b
    for which, name in (("final", "ema"), ("raw", "raw")):
        wa, wb = final_weights(full, which), final_weights(part, which)
        assert wa.keys() == wb.keys()
        report[f"max_weight_diff_{name}"] = max(
            float((wa[k].float() - wb[k].float()).abs().max()) for k in wa
        )
        report[f"max_weight_abs_{name}"] = max(float(wa[k].float().abs().max()) for k in wa)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1))
    for key, value in report.items():
        if not key.startswith("loss_"):
            print(f"{key}: {value}")
    print("step  loss(uninterrupted)  loss(resumed)")
    for i, (x, y) in enumerate(zip(a, b, strict=True), 1):
        print(f"{i:4d}  {x:.6f}  {y:.6f}" + ("   <- resumed here" if i == args.stop + 1 else ""))


if __name__ == "__main__":
    main()
