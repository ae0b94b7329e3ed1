"""Run diffusers' own ControlNet training script on our data, unmodified, and time it.

The peer is `examples/controlnet/train_controlnet.py` of diffusers at a release tag, fetched by
the user and never committed:

    git clone https://github.com/huggingface/diffusers && cd diffusers
    git show v0.40.0:examples/controlnet/train_controlnet.py > /tmp/train_controlnet.py
    pip install datasets   # the script reads its data with `datasets.load_dataset`

What this module does around it (nothing inside it):
1. writes the prepared train split as a parquet dataset with the script's three columns
   (image, text, conditioning_image), images embedded as PNG bytes;
2. starts the script in a subprocess with our settings (same base folder, same initial
   ControlNet folder, resolution, batch, steps, learning rate, precision, share of empty
   prompts; no validation, no checkpoint inside the timed steps);
3. reads the wall time of every step from the TensorBoard events the script logs
   (`accelerator.log` once per step), and returns the steady-state samples/s between the
   end of the warm-up and the last step, so start-up, model loading and compilation are not
   counted, as for our own loop.
Where torchvision cannot be imported (CPU torch pinned here), the script is started through
`benchmarks/shims/run_script.py`, which provides the four transforms it uses and runs it as is.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SHIMS = Path(__file__).resolve().parent / "shims"


@dataclass
class PeerRun:
    """Figures of one run of the peer script."""

    samples_per_s: float
    seconds: float  # wall time of the timed steps
    steps_timed: int


def export_parquet(prepared_dir: Path, out_dir: Path) -> Path:
    """The train split of a prepared dataset as `out_dir/train.parquet` for `load_dataset(out_dir)`."""
    import datasets

    from seg2sat.data.dataset import read_manifest

    records = read_manifest(prepared_dir, "train")

    def png(rel: str) -> dict[str, object]:
        return {"bytes": (Path(prepared_dir) / rel).read_bytes(), "path": None}

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "conditioning_image": datasets.Image()})
    table = datasets.Dataset.from_dict({"image": [png(r["image"]) for r in records],
                                        "text": [r["caption"] for r in records],
                                        "conditioning_image": [png(r["hint"]) for r in records]}, features=features)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(out_dir / "train.parquet"))
    return out_dir


def _launcher(script: Path) -> list[str]:
    """`python script`, or through the transforms stand-in when torchvision is absent."""
    if importlib.util.find_spec("torchvision") is None:
        return [sys.executable, str(SHIMS / "run_script.py"), str(script)]
    return [sys.executable, str(script)]


def step_times(logdir: Path) -> dict[int, float]:
    """step -> wall time of the `loss` scalar the script logs once per optimizer step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times: dict[int, float] = {}
    for events in glob.glob(str(logdir / "**" / "events.out.tfevents.*"), recursive=True):
        acc = EventAccumulator(events, size_guidance={"scalars": 0})
        acc.Reload()
        if "loss" in acc.Tags().get("scalars", []):
            times.update({e.step: e.wall_time for e in acc.Scalars("loss")})
    return times


def run_peer(script: Path, *, base: Path, controlnet: Path, data_dir: Path, out_dir: Path, resolution: int,
             batch_size: int, warmup: int, steps: int, learning_rate: float, precision: str,
             empty_prompt_prob: float, workers: int = 0, seed: int = 0) -> PeerRun:
    """Run `train_controlnet.py` for warmup + steps optimizer steps; time the last `steps`."""
    total = warmup + steps
    cmd = [*_launcher(script), f"--pretrained_model_name_or_path={base}",
           f"--controlnet_model_name_or_path={controlnet}", f"--train_data_dir={data_dir}",
           "--image_column=image", "--caption_column=text", "--conditioning_image_column=conditioning_image",
           f"--output_dir={out_dir}", f"--cache_dir={out_dir / 'hf-cache'}", f"--resolution={resolution}",
           f"--train_batch_size={batch_size}", f"--max_train_steps={total}", f"--learning_rate={learning_rate}",
           "--lr_scheduler=constant", "--lr_warmup_steps=0", f"--checkpointing_steps={10 * total + 1}",
           f"--mixed_precision={precision}", f"--proportion_empty_prompts={empty_prompt_prob}",
           f"--dataloader_num_workers={workers}", f"--seed={seed}", "--report_to=tensorboard",
           "--set_grads_to_none"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise RuntimeError(f"{script} failed (exit {proc.returncode}):\n{tail}")
    times = step_times(out_dir)
    if warmup not in times or total not in times:
        raise RuntimeError(f"{out_dir}: no TensorBoard loss events for steps {warmup} and {total}")
    dt = times[total] - times[warmup]
    return PeerRun(samples_per_s=steps * batch_size / dt, seconds=dt, steps_timed=steps)

