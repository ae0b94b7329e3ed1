"""Training on the tiny preset: checkpoints, resume, cache, objectives, validation."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seg2sat.data.latent_cache import LatentCache
from seg2sat.errors import ConfigError, Seg2SatError
from seg2sat.generation.models import Components
from seg2sat.generation.tiny import build_tiny_components
from seg2sat.stages import train
from seg2sat.training.checkpoint import list_checkpoints, resolve_resume
from seg2sat.training.objective import compute_loss


def _controlnet_state(ckpt):
    return load_file(str(ckpt / "controlnet" / "diffusion_pytorch_model.safetensors"))


def test_two_steps_write_named_atomic_checkpoints(train_cfg):
    result = train.run(train_cfg("max_steps=2", "checkpointing_steps=1", "checkpoints_total_limit=1"))
    assert result.global_step == 2
    assert result.last_loss is not None and math.isfinite(result.last_loss) and result.last_loss > 0
    ckpts = result.run_dir / "checkpoints"
    # the limit keeps only the newest; no temp folder survives
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]
    state = json.loads((ckpts / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["samples_seen"] == 8
    assert (ckpts / "checkpoint-2" / "controlnet" / "config.json").exists()
    assert resolve_resume(result.run_dir, "latest") == ckpts / "checkpoint-2"
    assert (result.run_dir / "config.yaml").read_text().count("resolved_base: tiny-random-0") == 1


def test_resume_equals_uninterrupted_run(train_cfg, tmp_path):
    full = train.run(train_cfg("run_name=full", "max_steps=6", "checkpointing_steps=3"))
    # the same run, stopped after 3 steps (2 train batches per epoch: crosses an epoch)...
    part = train.run(train_cfg("run_name=part", "max_steps=3", "checkpointing_steps=3"))
    assert [p.name for p in list_checkpoints(part.run_dir)] == ["checkpoint-3"]
    # ...and resumed to 6.
    resumed = train.run(train_cfg("run_name=part", "max_steps=6", "checkpointing_steps=3", "resume=latest"))
    assert resumed.global_step == 6
    # samples after the resume are exactly those the full run saw in steps 4..6
    assert part.seen + resumed.seen == full.seen
    a, b = _controlnet_state(full.checkpoints[-1]), _controlnet_state(resumed.checkpoints[-1])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    # and training did change the weights
    first = _controlnet_state(part.checkpoints[0])
    assert any(not torch.equal(first[k], a[k]) for k in a)


def test_resume_from_missing_checkpoint_is_a_clear_error(train_cfg, tmp_path):
    with pytest.raises(Seg2SatError, match="checkpoint-99"):
        train.run(train_cfg("max_steps=1", f"resume={tmp_path}/nowhere/checkpoint-99"))


def _record_cache_builds(monkeypatch) -> list[bool]:
    """Spy on LatentCache.build_or_load: the `built` flag of every call, in order."""
    built: list[bool] = []
    original = LatentCache.build_or_load.__func__

    def spy(cls, *args, **kwargs):
        cache, was_built = original(cls, *args, **kwargs)
        built.append(was_built)
        return cache, was_built

    monkeypatch.setattr(LatentCache, "build_or_load", classmethod(spy))
    return built


def test_cache_is_built_once_and_reused(train_cfg, prepared_tiny, monkeypatch):
    # The first run on this data may build the cache (another test may have built it already);
    # after it, a run loads it and computes nothing: its one call reports built=False.
    train.run(train_cfg("run_name=a", "max_steps=1"))
    indexes = sorted((prepared_tiny / "cache").glob("train-*/index.json"))
    assert len(indexes) == 1
    built = _record_cache_builds(monkeypatch)
    train.run(train_cfg("run_name=b", "max_steps=1"))
    assert built == [False]
    assert sorted((prepared_tiny / "cache").glob("train-*/index.json")) == indexes
    n_train = sum(1 for line in (prepared_tiny / "manifest.jsonl").read_text().splitlines()
                  if json.loads(line)["split"] == "train")
    index = json.loads(indexes[0].read_text())
    assert index["n"] == n_train and index["shards"] == 1 and len(index["ids"]) == n_train
    tensors = load_file(str(indexes[0].parent / "shard-00000.safetensors"))
    assert tensors["latent_mean"].shape == (n_train, 4, 16, 16)  # 64 px tiles, latent factor 4
    assert tensors["text_embeds"].shape == (n_train, 77, 32)
    assert tensors["hints"].shape == (n_train, 3, 64, 64) and tensors["hints"].dtype == torch.uint8


def test_cache_refuses_augmentations_it_cannot_apply(train_cfg):
    # a crop is an augmentation, but one cached latents cannot follow
    with pytest.raises(Seg2SatError, match="cache_latents=true allows only flips and rot90"):
        train.run(train_cfg("max_steps=1", "+augment.crop_scale=[0.5,1.0]"))
    # ...and which the pixel path (VAE encoding every step) applies
    result = train.run(train_cfg("max_steps=1", "cache_latents=false", "+augment.crop_scale=[0.5,1.0]"))
    assert result.global_step == 1 and len(result.seen) == 4 and math.isfinite(result.last_loss)


@pytest.mark.parametrize("cache_latents", ["true", "false"])
def test_unknown_augmentation_is_refused_not_ignored(train_cfg, cache_latents):
    # Nothing applies color_jitter: a run must not train silently without it, cached or not.
    with pytest.raises(ConfigError, match="color_jitter"):
        train.run(train_cfg("max_steps=1", f"cache_latents={cache_latents}", "+augment.color_jitter=0.2"))


def test_resuming_a_finished_run_takes_no_step(train_cfg):
    done = train.run(train_cfg("max_steps=2", "checkpointing_steps=1"))
    names = [p.name for p in done.checkpoints]
    again = train.run(train_cfg("max_steps=2", "checkpointing_steps=1", "resume=latest"))
    assert again.global_step == 2 and again.seen == [] and again.last_loss is None
    assert [p.name for p in list_checkpoints(again.run_dir)] == names == ["checkpoint-1", "checkpoint-2"]
    saved = _controlnet_state(done.checkpoints[-1])
    for key, value in again.controlnet.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_gradient_accumulation_counts_optimizer_steps(train_cfg):
    result = train.run(train_cfg("max_steps=2", "gradient_accumulation_steps=2", "batch_size=2"))
    assert result.global_step == 2
    assert len(result.seen) == 8  # 2 steps x 2 micro-batches x 2 samples


def test_validation_writes_images_and_grid(train_cfg):
    cfg = train_cfg("max_steps=1", "validation_steps=1", "num_validation_images=2", "validation_inference_steps=2")
    killed = Path(cfg.run_dir) / "validation" / ".tmp-0badc0de-step-1"  # what a killed run leaves
    killed.mkdir(parents=True)
    result = train.run(cfg)
    out = result.run_dir / "validation" / "step-1"
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png", "grid.png"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["step-1"]  # the leftover is swept


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_target_follows_the_base_scheduler(prediction_type):
    from diffusers import DDPMScheduler

    from seg2sat.generation.tiny import controlnet_from_unet

    parts = build_tiny_components(0)
    sched = DDPMScheduler.from_config(parts.pop("scheduler").config, prediction_type=prediction_type)
    comps = Components(noise_scheduler=sched, base="tiny", **parts)
    controlnet = controlnet_from_unet(comps.unet, comps.vae)
    batch = {"latent_mean": torch.randn(2, 4, 16, 16), "latent_std": torch.full((2, 4, 16, 16), 0.1),
             "text_embeds": torch.randn(2, 77, 32), "conditioning": torch.rand(2, 3, 64, 64)}
    loss = compute_loss(batch, comps, controlnet, torch.Generator().manual_seed(0), torch.float32)
    # recompute by hand with the same draws
    gen = torch.Generator().manual_seed(0)
    latents = (batch["latent_mean"] + batch["latent_std"] * torch.randn((2, 4, 16, 16), generator=gen))
    latents = latents * comps.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, 1000, (2,), generator=gen)
    noisy = sched.add_noise(latents, noise, t)
    with torch.no_grad():
        down, mid = controlnet(noisy, t, encoder_hidden_states=batch["text_embeds"],
                               controlnet_cond=batch["conditioning"], return_dict=False)
        pred = comps.unet(noisy, t, encoder_hidden_states=batch["text_embeds"],
                          down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    target = noise if prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
    expected = torch.nn.functional.mse_loss(pred, target)
    other = torch.nn.functional.mse_loss(pred, sched.get_velocity(latents, noise, t)
                                         if prediction_type == "epsilon" else noise)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(loss.item() - other.item()) > 1e-3


def test_tensorboard_tracker_logs_scalars(train_cfg):
    result = train.run(train_cfg("max_steps=2", "logger=tensorboard"))
    events = list(result.run_dir.rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_wandb_offline_tracker_logs_a_run(train_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = train.run(train_cfg("max_steps=2", "logger=wandb"))
    runs = list(result.run_dir.rglob("offline-run-*"))
    assert runs, sorted(str(p) for p in result.run_dir.rglob("*"))[:20]
    assert list(runs[0].glob("*.wandb"))


def test_cubic_timesteps_favour_high_noise():
    from seg2sat.training.objective import sample_timesteps

    gen = torch.Generator().manual_seed(0)
    uniform = sample_timesteps(20000, 1000, "uniform", gen, torch.device("cpu"))
    cubic = sample_timesteps(20000, 1000, "cubic", gen, torch.device("cpu"))
    assert int(uniform.min()) >= 0 and int(cubic.max()) <= 999 and cubic.dtype == torch.long
    # P(t >= 500) = 1/2 for uniform; for cubic P(1 - u^3 >= 1/2) = P(u <= 0.5^(1/3)) = 0.79
    assert (uniform >= 500).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert (cubic >= 500).float().mean().item() == pytest.approx(0.5 ** (1 / 3), abs=0.02)
    with pytest.raises(Seg2SatError, match="timestep_sampling='log'"):
        sample_timesteps(2, 1000, "log", gen, torch.device("cpu"))


def test_zero_convs_get_their_own_learning_rate():
    from seg2sat.generation.tiny import controlnet_from_unet
    from seg2sat.training.setup import param_groups

    parts = build_tiny_components(0)
    cn = controlnet_from_unet(parts["unet"], parts["vae"])
    rest, zero = param_groups(cn, 1e-3, 5.0)
    assert rest["lr"] == 1e-3 and zero["lr"] == pytest.approx(5e-3)
    # the zero-initialised ones are exactly those that are all zeros at init
    zero_ids = {id(p) for p in zero["params"]}
    assert all(torch.count_nonzero(p) == 0 for p in zero["params"])
    assert all(id(p) in zero_ids for p in cn.parameters() if p.dim() > 1 and torch.count_nonzero(p) == 0)
    assert len(rest["params"]) + len(zero["params"]) == len(list(cn.parameters()))


def test_dataloader_workers_change_nothing_but_speed(train_cfg):
    # Persistent workers load the batches in other processes: the run must be the same run.
    inline = train.run(train_cfg("run_name=w0", "max_steps=3", "num_workers=0"))
    workers = train.run(train_cfg("run_name=w2", "max_steps=3", "num_workers=2"))
    assert workers.seen == inline.seen and workers.last_loss == inline.last_loss
    for (name, a), b in zip(inline.controlnet.state_dict().items(), workers.controlnet.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_auto_workers_are_none_on_cpu_and_cores_less_one_on_a_gpu(train_cfg, monkeypatch):
    from seg2sat.training.setup import num_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    cfg = train_cfg()
    assert num_workers(cfg, torch.device("cpu")) == 0
    assert num_workers(cfg, torch.device("cuda")) == 8 and num_workers(cfg, torch.device("cuda"), local_world=4) == 3
    assert num_workers(train_cfg("num_workers=5"), torch.device("cpu")) == 5


def test_profile_writes_an_operator_summary_and_a_trace(train_cfg):
    result = train.run(train_cfg("max_steps=4", "profile.enabled=true", "profile.wait=1", "profile.active=2"))
    summary = (result.run_dir / "profile" / "summary.txt").read_text()
    assert "aten::convolution" in summary and "Self CPU" in summary
    trace = json.loads((result.run_dir / "profile" / "trace.json").read_text())
    assert any(e.get("name") == "aten::convolution" for e in trace["traceEvents"])
