"""Export: checkpoint -> model folder -> the same pipeline; and the embedded demo, reduced."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from seg2sat.config import compose
from seg2sat.errors import ModelError
from seg2sat.generation.models import MODEL_INFO, load_pipeline
from seg2sat.generation.pipeline import generate
from seg2sat.hints import codes_to_hint
from seg2sat.labels import CLASSES
from seg2sat.prompts import DEFAULT_TEMPLATE
from seg2sat.stages import demo, export
from seg2sat.training.export import trained_with


def test_export_round_trip(trained_run, stage_cfg, tmp_path):
    out = tmp_path / "models" / "m"
    result = export.run(stage_cfg("export", f"run_dir={trained_run.run_dir}", f"output_dir={out}", "fp16=true"))
    assert result.model_dir == out and result.steps == 2 and result.base_model == "base"
    info = json.loads((out / MODEL_INFO).read_text())
    assert info["base_model"] == "base" and info["steps"] == 2 and info["prediction_type"] == "epsilon"
    prepared = OmegaConf.load(Path(OmegaConf.load(trained_run.run_dir / "config.yaml").prepared_dir) / "prepare_config.yaml")
    assert prepared.caption.template is None  # the default template, by its one owner
    assert info["resolution"] == 64 and info["caption_template"] == DEFAULT_TEMPLATE
    assert [c["color"] for c in info["legend"]] == [c.hex for c in CLASSES]
    assert (out / "base" / "model_index.json").exists()
    assert (out / "training_config.yaml").exists() and "ControlNet" in (out / "README.md").read_text()
    fp32 = load_file(str(out / "controlnet" / "diffusion_pytorch_model.safetensors"))
    fp16 = load_file(str(out / "controlnet_fp16" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in fp32.values()} == {torch.float32} and {t.dtype for t in fp16.values()} == {torch.float16}
    assert not list(out.parent.glob(".tmp-*"))
    # the exported folder gives exactly the checkpoint's model
    hint = codes_to_hint(np.where(np.arange(64)[:, None] < 32, 1, 6).astype(np.uint8).repeat(64, 1))
    a = generate(load_pipeline(out), hint, "Aerial view of Gironde. building", steps=2, seed=3)
    ckpt_pipe = load_pipeline(trained_run.checkpoints[-1] / "controlnet", base=out / "base")
    b = generate(ckpt_pipe, hint, "Aerial view of Gironde. building", steps=2, seed=3)
    np.testing.assert_array_equal(a, b)


def test_export_records_the_resolution_and_template_the_run_used(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    template = "Vue aérienne de {place}. {classes}"
    (prepared / "prepare_config.yaml").write_text(OmegaConf.to_yaml({"caption": {"template": template}}))
    run = {"resolution": 96, "model": {"resolution": 64}, "prepared_dir": str(prepared)}
    assert trained_with(run) == (96, template)  # the run's resolution, not the preset's
    assert trained_with({**run, "prepared_dir": str(tmp_path / "gone")}) == (96, DEFAULT_TEMPLATE)
    assert trained_with(None) == (512, DEFAULT_TEMPLATE)


def test_export_refuses_to_overwrite_and_needs_a_checkpoint(trained_run, stage_cfg, tmp_path):
    out = tmp_path / "m"
    export.run(stage_cfg("export", f"run_dir={trained_run.run_dir}", f"output_dir={out}"))
    with pytest.raises(ModelError, match="already exists"):
        export.run(stage_cfg("export", f"run_dir={trained_run.run_dir}", f"output_dir={out}"))
    with pytest.raises(ModelError, match="no checkpoint found"):
        export.run(stage_cfg("export", f"run_dir={tmp_path / 'empty'}", f"output_dir={tmp_path / 'x'}"))


def test_demo_end_to_end_reduced(tmp_path):
    cfg = compose("demo", [
        f"paths.root_dir={tmp_path}", 'sample_data=["tiles_per_domain=4"]',
        'train=["run_name=demo","max_steps=4","checkpointing_steps=2","validation_steps=2",'
        '"num_validation_images=2","validation_inference_steps=2","batch_size=4"]',
        'reward_train=["max_steps=2","checkpointing_steps=2","batch_size=4","reward.segmenter.steps=10",'
        '"reward.segmenter.batch_size=4","reward.segmenter.widths=[8,16,16]"]',
        'evaluate=["num_images=2","judge.widths=[8,16,16]","judge.steps=10","judge.batch_size=4",'
        '"second_judge.widths=[8,16]","second_judge.steps=10","second_judge.batch_size=4","realism.enabled=false",'
        '"sweep_steps=[1,2]"]',
        "sampling.steps=2"])
    result = demo.run(cfg)
    assert result.sample_image.exists() and result.sample_image.suffix == ".png"
    assert (result.model_dir / MODEL_INFO).exists() and (result.model_dir / "validation_grid.png").exists()
    for key in ("generated", "untrained", "real_images", "vae_round_trip"):  # each mIoU is its classes' mean
        per_class = result.fidelity[key]["per_class_iou"]
        assert result.fidelity[key]["miou"] == pytest.approx(np.mean(list(per_class.values()))) and per_class
    assert result.fidelity["num_images"] == 2
    info = json.loads((result.model_dir / MODEL_INFO).read_text())
    assert info["fidelity"]["generated"]["miou"] == result.fidelity["generated"]["miou"]
    assert info["steps"] == 2 and result.seconds["reward"] > 0  # the reward fine-tune's 2 steps, exported
    # the demo's sampling is the model's recommendation (infer and the app default to it)
    assert result.fidelity["sampling"]["steps"] == 2  # evaluate sampled with the model's recommendation
    # the recommendation then holds the fewest faithful steps the sweep measured
    assert info["sampling"] == {"steps": result.fidelity["recommended_steps"], "guidance_scale": 1.0,
                                "controlnet_scale": 3.0}
    assert "second_judge" in result.fidelity
    demo_json = json.loads((tmp_path / "data" / "outputs" / "demo" / "demo.json").read_text())
    assert demo_json["fidelity"]["fidelity_ratio"] == pytest.approx(result.fidelity["fidelity_ratio"])
    assert demo_json["base"].endswith("assets/tiny-base")
    # a second run resumes: everything exists, training writes no new checkpoint, nothing is re-prepared
    def stamps(folder):
        return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    run_dir, prepared = tmp_path / "data" / "runs" / "demo_reward", tmp_path / "data" / "prepared"
    before = stamps(run_dir / "checkpoints"), (prepared / "manifest.jsonl").stat().st_mtime_ns
    again = demo.run(cfg)
    assert (stamps(run_dir / "checkpoints"), (prepared / "manifest.jsonl").stat().st_mtime_ns) == before
    assert sorted(before[0]) == ["checkpoint-2"]
    assert again.fidelity["generated"]["miou"] == pytest.approx(result.fidelity["generated"]["miou"])
    assert "pretrain_base" not in again.seconds


def test_export_plain_controlnet_with_its_base(trained_run, stage_cfg, tmp_path):
    cn = trained_run.checkpoints[-1] / "controlnet"
    with pytest.raises(ModelError, match="needs base_model="):
        export.run(stage_cfg("export", f"controlnet_dir={cn}", f"output_dir={tmp_path / 'p'}"))
    first = export.run(stage_cfg("export", f"run_dir={trained_run.run_dir}", f"output_dir={tmp_path / 'a'}"))
    plain = export.run(stage_cfg("export", f"controlnet_dir={cn}", f"base_model={first.model_dir / 'base'}",
                                 f"output_dir={tmp_path / 'p'}"))
    info = json.loads((plain.model_dir / MODEL_INFO).read_text())
    assert info["base_model"] == str(first.model_dir / "base") and info["steps"] is None
    a, b = load_pipeline(plain.model_dir).controlnet, load_pipeline(first.model_dir).controlnet
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


FIDELITY = {"num_images": 4, "sampling": {"steps": 2}, "fidelity_ratio": 0.5,
            "generated": {"miou": 0.3, "pixel_accuracy": 0.6}, "real_images": {"miou": 0.6, "pixel_accuracy": 0.8}}


def test_card_is_hub_ready_and_the_model_has_a_stac_mlm_item(trained_run, stage_cfg, tmp_path, stac_errors):
    from huggingface_hub import ModelCard

    from seg2sat.training.export import record_fidelity

    out = tmp_path / "models" / "m"
    export.run(stage_cfg("export", f"run_dir={trained_run.run_dir}", f"output_dir={out}", "card.tags=[france]"))
    card = ModelCard.load(out / "README.md")  # the hub's own parser
    data = card.data.to_dict()
    assert data["license"] == "mit"  # the tiny preset's base is ours (conf/model/tiny.yaml)
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "image-to-image"
    assert {"controlnet", "remote-sensing", "land-cover", "france"} <= set(data["tags"])
    assert data["datasets"] == ["IGNF/FLAIR"] and "base_model" not in data  # "base" is a folder, not a hub id
    assert "model-index" not in data and "Not measured" in card.text
    # scores measured later land in the model-index, parsed back as eval results
    record_fidelity(out, FIDELITY)
    card = ModelCard.load(out / "README.md")
    scores = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert scores == {"mean_iou": 0.3, "accuracy": 0.6, "fidelity_ratio": 0.5}
    assert {r.dataset_type for r in card.data.eval_results} == {"IGNF/FLAIR"}
    assert "**Fidelity ratio (generated / real): 0.50**" in card.text
    item = json.loads((out / "model.stac.json").read_text())
    assert stac_errors(item) == []
    from safetensors.torch import load_file

    weights = load_file(str(out / "controlnet" / "diffusion_pytorch_model.safetensors"))
    p = item["properties"]
    assert p["mlm:total_parameters"] == sum(t.numel() for t in weights.values())
    assert p["mlm:tasks"] == ["generative"] and p["mlm:input"][0]["input"]["shape"] == [-1, 3, 64, 64]
    assert item["assets"]["weights"]["href"] == "./controlnet/diffusion_pytorch_model.safetensors"
    assert "mlm:model" in item["assets"]["weights"]["roles"]


def test_a_plain_controlnet_with_a_hub_base_names_it(trained_run, stage_cfg, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "plain"
    export.run(stage_cfg("export", f"controlnet_dir={trained_run.checkpoints[-1] / 'controlnet'}",
                         "base_model=stabilityai/stable-diffusion-2-1-base", f"output_dir={out}",
                         "card.license=openrail++"))
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert data["base_model"] == "stabilityai/stable-diffusion-2-1-base" and data["license"] == "openrail++"


def test_push_dry_run_lists_exactly_the_files_and_offline_push_is_one_line(trained_run, stage_cfg, tmp_path,
                                                                            capsys, monkeypatch):
    out = tmp_path / "m"
    export.run(stage_cfg("export", f"run_dir={trained_run.run_dir}", f"output_dir={out}"))
    (out / ".tmp-1234-x").write_text("a killed write")  # never sent
    result = export.run(stage_cfg("export", f"output_dir={out}", "push_to_hub=true", "repo_id=me/seg2sat-m",
                                  "check=true"))
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".tmp-" not in p.name)
    assert result.hub_files == on_disk and "README.md" in on_disk and "model.stac.json" in on_disk
    printed = capsys.readouterr().out
    assert f"would upload {len(on_disk)} files" in printed and "me/seg2sat-m" in printed
    assert all(f"  {name}  " in printed for name in on_disk)
    with pytest.raises(Exception, match="repo_id=None: push_to_hub needs repo_id"):
        export.run(stage_cfg("export", f"output_dir={out}", "push_to_hub=true", "check=true"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="upload to me/seg2sat-m failed"):
        export.run(stage_cfg("export", f"output_dir={out}", "push_to_hub=true", "repo_id=me/seg2sat-m"))
