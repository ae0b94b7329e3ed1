"""Two training processes on CPU (gloo), launched exactly as users launch multi-GPU runs."""

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

PROBE = Path(__file__).with_name("dist_probe.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(prepared_tiny, tmp_path, *extra):
    """`accelerate launch` of the probe with two CPU ranks; returns both ranks' reports."""
    out = tmp_path / "probe"
    out.mkdir()
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(PROBE), str(out),
           f"paths.root_dir={tmp_path}", f"prepared_dir={prepared_tiny}", "batch_size=2", "max_steps=3",
           "checkpointing_steps=3", "validation_steps=3", "num_validation_images=3",
           "validation_inference_steps=2", "log_every=1", "model.random_weights=true", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    if proc.returncode != 0 and "Timeout (0:01:30)!" in proc.stderr:
        # A rare stall at the end of the 2-process CPU run has been seen (about 1 run in 20: one
        # rank stuck freeing the DDP model after train() returned; train() now frees it between
        # barriers). The probe dumps every thread's stack and exits; report it and try once more
        # on a fresh port. A second failure, or any other error, fails the test.
        warnings.warn(f"2-process launch stalled; stacks:\n{proc.stderr[-6000:]}", stacklevel=1)
        cmd[cmd.index("--main_process_port") + 1] = str(_free_port())
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]


def test_two_cpu_processes_stay_in_sync_on_disjoint_data(prepared_tiny, tmp_path):
    ranks = _launch(prepared_tiny, tmp_path)
    assert [r["world"] for r in ranks] == [2, 2]
    # the same parameters on both ranks after 3 optimizer steps
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    # each rank saw 3 x 2 samples, and no sample twice across ranks
    seen0 = {tuple(s) for s in ranks[0]["seen"]}
    seen1 = {tuple(s) for s in ranks[1]["seen"]}
    assert len(seen0) == len(seen1) == 6
    assert not seen0 & seen1
    # one checkpoint written once; validation gathered from both ranks into one grid
    run_dir = tmp_path / "data" / "runs" / "tiny"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-3"]
    assert sorted(p.name for p in (run_dir / "validation" / "step-3").iterdir()) == [
        "00.png", "01.png", "02.png", "grid.png"]


def test_two_cpu_processes_with_the_reward_stay_in_sync(prepared_tiny, tmp_path):
    """The reward fine-tune under `accelerate launch`: rank 0 trains the segmenter, both use it, in sync."""
    ranks = _launch(prepared_tiny, tmp_path, "reward=default", "reward.segmenter.steps=10",
                    "reward.segmenter.batch_size=4", "validation_steps=0")
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["step"] == ranks[1]["step"] == 3
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["reward"] is not None and ranks[1]["reward"] is not None
