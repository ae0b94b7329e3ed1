"""Does synthetic data help a segmenter? The four scenarios of issue 33, each arm against real only.

One command runs the whole proof through the real stages (sample-data, prepare, train, export,
specialize, synthesize with and without trust, segment with its mixes) and writes
`<out>/synthetic.json` (`synthetic_tiny.json` at `--scale tiny`) and a plot:

    python benchmarks/bench_synthetic.py                               # the real protocol: hours on 2 cores
    python benchmarks/bench_synthetic.py --scale tiny --out /tmp/bs    # a smoke run (minutes), CPU estimate
    python benchmarks/bench_synthetic.py --scenarios few_labels,full   # some scenarios only

The protocol (docs/synthetic.md, "The benchmark"):
1. Data, all `sample-data` trees of the same four domains in the same order, so that tile ids
   never collide with the test tiles' (a tile id is 10000 x its domain's index + k):
   - `pool` (seed 0: the demo's data): the generator's large labelled pool (its training split)
     and the test tiles (its D064_2021 domain, the validation split of every prepared set);
   - `own` (seed 1: maps nobody trained on): the segmenter's few labelled tiles and, apart from
     them, maps whose images no arm sees except the oracle;
   - `place` (seed 0, D064_2021 with its own look): new_place's test tiles; `place_unlabelled`
     (seed 2, same look): the place's unlabelled images the generator is specialised on.
2. The generator: the demo's recipe (plain, then its reward phase) on `pool`'s training split;
   the judge (per-image bar and per-pixel trust) on the same split. Neither sees a test tile.
3. Synthetic sets: `seg2sat synthesize` from the segmenter's own maps (re-render) or from the
   new maps, with and without `trust.enabled`; for `rare`, edited maps aimed at the rare classes;
   for `new_place`, rendered by the specialised generator.
4. Each arm: `seg2sat segment` (classical augmentation on, `seeds` segmenters) trained on the
   arm's sets, scored on the scenario's test tiles. Every arm is compared with real only
   (the same labelled tiles, the same augmentation); `gain` is the best recipe arm's mIoU minus
   real only's, `gain_std` the spread of that difference (the two seed spreads added in
   quadrature), and a gain counts (`significant`) only when larger than twice its spread.
Each arm's `segment.json` and each synthetic set stay in `--work`: a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
DOCS_PLOT = Path(__file__).parents[1] / "docs" / "synthetic.png"
SCENARIOS = ("few_labels", "rare", "new_place", "full")
RARE = ("greenhouse", "swimming pool")
RARE_TARGETS = "{greenhouse: 0.03, swimming pool: 0.01}"
PLACE = "D064_2021"  # the test domain (and new_place's place)
LABELLED = ("D033_2020", "D075_2019", "D013_2020")
DOMAINS = (PLACE, *LABELLED)  # one order in every tree: tile ids never collide across trees' domains
PLACE_LOOK = "{cast: [1.15, 1.0, 0.85], brightness: 0.9, season: autumn, texture_scale: 1.5}"
# A no-op look: `sample-data looks=null` fails at HEAD (stages/sample_data.looks_of hands a plain
# dict to OmegaConf.to_container); a default look on one domain takes the same code path as the demo.
NO_LOOK = "{D033_2020: {brightness: 1.0}}"
BASELINE = "real_aug"  # real only, classical augmentation on
ORACLE = "oracle"  # the new maps' real images instead of generated ones
TARGETS = {"few_labels": 0.08, "new_place": 0.03, "full": -0.005}  # gain at least; rare: 1.3x IoU; few: 60 % oracle
RARE_RATIO, ORACLE_SHARE = 1.3, 0.6


@dataclass(frozen=True)
class Scale:
    """Sizes and steps of one run (`tiny`: a smoke run; `full`: the protocol)."""

    pool: int  # tiles per domain of the generator's pool (and of the test domain)
    own: int  # tiles per domain of the segmenter's own tree (labelled + new maps)
    labelled: int  # the segmenter's labelled tiles (few_labels, rare, new_place)
    place: int  # the place's unlabelled images
    seeds: int  # segmenters per arm
    seg_steps: int
    seg_batch: int
    gen_steps: int | None  # None: the demo recipe's own steps
    reward_steps: int | None
    gen_batch: int | None  # None: the recipe's (16)
    synth_steps: int | None  # sampling steps (None: the model's recorded ones)
    judge_steps: int | None  # None: conf/judge's
    specialize_steps: int
    specialize_batch: int
    diversity: int  # maps measured for diversity by synthesize (0: skip)
    threshold: float | None = None  # synthesize's per-image bar (None: conf/synthesize.yaml's)


SCALES = {
    "tiny": Scale(pool=3, own=4, labelled=4, place=4, seeds=3, seg_steps=3, seg_batch=4, gen_steps=2, reward_steps=2, gen_batch=4,
                  synth_steps=2, judge_steps=5, specialize_steps=2, specialize_batch=2, diversity=0,
                  threshold=0.0),  # 2 training steps render noise: the bar would drop every pair
    "full": Scale(pool=24, own=24, labelled=16, place=24, seeds=3, seg_steps=300, seg_batch=16, gen_steps=None,
                  reward_steps=None, gen_batch=None, synth_steps=None, judge_steps=None, specialize_steps=300, specialize_batch=8,
                  diversity=8),
}


# ---------------------------------------------------------------------------------------------
# CPU time: what each kind of work cost here, to estimate the full run from a tiny one.
# ---------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (every thread, every core)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Ledger:
    """CPU seconds, work units (steps x batch, tiles x sampling steps, ...) and calls per kind of work.

    `variable` is the part of the CPU that grows with the units, where a stage reports it (the
    segmenter's and the generator's training loops); the rest is a fixed cost per call (loading
    models and data, scoring). Kept in the work folder (`path`) across reruns: work skipped because
    it was done before (a cached generator, judge, set or arm) adds nothing.
    """

    path: Path | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    units: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    variable: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        data = json.loads(path.read_text()) if path.exists() else {}
        return cls(path, *(data.get(k, {}) for k in ("cpu", "units", "calls", "variable")))

    def measure(self, kind: str, units: float, fn: Callable[[], Any], done: bool = False,
                variable: Callable[[Any], float] | None = None) -> Any:
        """Run `fn`; unless it was `done` before (cached), add its CPU and `units` to `kind`
        (`variable(result)`: the seconds of it that grow with the units; unknown: all of it)."""
        t0 = cpu_seconds()
        out = fn()
        if not done:
            self.add(kind, cpu_seconds() - t0, units, None if variable is None else variable(out))
        return out

    def add(self, kind: str, cpu: float, units: float, variable: float | None = None) -> None:
        for table, value in ((self.cpu, cpu), (self.units, units), (self.calls, 1),
                             (self.variable, cpu if variable is None else min(cpu, variable))):
            table[kind] = table.get(kind, 0) + value
        if self.path is not None:
            from seg2sat.atomic import write_json

            write_json(self.path, {"cpu": self.cpu, "units": self.units, "calls": self.calls,
                                   "variable": self.variable})


# Steps x batch of the demo recipe (conf/experiment/demo.yaml, demo_reward.yaml) and of conf/judge.
DEMO_UNITS = {"generator": 1000 * 16 + 400 * 16, "judge": 400 * 16, "synth_steps": 20}


def generator_units(scale: Scale) -> int:
    """Steps x batch of the generator's two phases."""
    return (scale.gen_steps + scale.reward_steps) * (scale.gen_batch or 16) if scale.gen_steps \
        else DEMO_UNITS["generator"]


def set_tiles(scale: Scale, name: str) -> int:
    """The tiles of a synthetic set: one per map of its subset (the own tree's maps, or all its tiles)."""
    return 3 * scale.own if SETS[name].tiles == "own" else 3 * scale.own - scale.labelled


def full_units(scale: Scale, scenarios: Sequence[str]) -> dict[str, float]:
    """The work units of a run at `scale` (the full run's, when estimating it from a tiny one)."""
    arms = {s: ARMS[s](Paths(Path("."), Path("."))) for s in scenarios}
    sets = dict.fromkeys(n for a in arms.values() for arm in a.values() for n in arm.synthetic_sets())
    return {"data": data_units(scale), "generator": generator_units(scale),
            "judge": (scale.judge_steps or DEMO_UNITS["judge"] // 16) * 16,
            "specialize": scale.specialize_steps * scale.specialize_batch if "new_place" in scenarios else 0,
            "synthesize": sum(set_tiles(scale, n) for n in sets) * (scale.synth_steps or DEMO_UNITS["synth_steps"]),
            "segment": sum(len(a) for a in arms.values()) * scale.seeds * scale.seg_steps * scale.seg_batch}


def data_units(scale: Scale) -> int:
    """Sample tiles written (and prepared): pool and place, own, the place's unlabelled images."""
    return 4 * (2 * scale.pool + scale.own + scale.place)


def full_calls(scenarios: Sequence[str]) -> dict[str, int]:
    """Calls of each kind of work in a run of `scenarios` (a fixed cost each)."""
    arms = {s: ARMS[s](Paths(Path("."), Path("."))) for s in scenarios}
    sets = dict.fromkeys(n for a in arms.values() for arm in a.values() for n in arm.synthetic_sets())
    return {"data": 1, "generator": 2, "judge": 1, "specialize": int("new_place" in scenarios),
            "synthesize": len(sets), "segment": sum(len(a) for a in arms.values())}


def estimate(ledger: Ledger, units: dict[str, float], calls: dict[str, int]) -> dict[str, float]:
    """Each kind's CPU per unit (its variable part) times the target's units, plus its fixed CPU per call
    times the target's calls. Where a stage reports no variable part, all of it scales (an upper bound)."""
    out = {}
    for kind, n in units.items():
        if not ledger.units.get(kind):
            out[kind] = 0.0
            continue
        per_unit = ledger.variable[kind] / ledger.units[kind]
        fixed = (ledger.cpu[kind] - ledger.variable[kind]) / max(1, ledger.calls[kind])
        out[kind] = round(per_unit * n + fixed * calls.get(kind, 0), 1)
    out["total"] = round(sum(out.values()), 1)
    return out


# ---------------------------------------------------------------------------------------------
# Data: the sample trees, their prepared sets, and subsets written as prepared datasets.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Where every set of a run lives (`work`), and the generator and its judge's data."""

    work: Path
    pool_prepared: Path

    def sample(self, name: str) -> Path:
        return self.work / "data" / name / "sample"

    def prepared(self, name: str) -> Path:
        return self.work / "data" / name / "prepared"

    def subset(self, name: str) -> Path:
        return self.work / "data" / "subsets" / name

    def synthetic(self, name: str) -> Path:
        return self.work / "synthetic" / name

    @property
    def model(self) -> Path:
        return self.work / "generator" / "model"

    @property
    def specialized(self) -> Path:
        return self.work / "generator" / "specialized"


TREES = {"pool": (0, None), "own": (1, None), "place": (0, PLACE_LOOK), "place_unlabelled": (2, PLACE_LOOK)}


def make_tree(p: Paths, name: str, per_domain: int) -> Path:
    """`sample-data` then `prepare` (validation split: the test domain) of one tree; kept when done."""
    from seg2sat.config import compose
    from seg2sat.stages import prepare, sample_data

    seed, look = TREES[name]
    sample, prepared = p.sample(name), p.prepared(name)
    if not (prepared / "manifest.jsonl").exists():
        looks = f"{{{PLACE}: {look}}}" if look else NO_LOOK
        sample_data.run(compose("sample_data", [f"paths.root_dir={p.work}", f"output_dir={sample}", f"seed={seed}",
                                                f"tiles_per_domain={per_domain}", f"looks={looks}"]))
        prepare.run(compose("prepare", [f"paths.root_dir={p.work}", f"data_root={sample}", f"output_dir={prepared}",
                                        f"split.val_domains=[{PLACE}]", "workers=0"]))
    return prepared


def write_subset(prepared: Path, dest: Path, ids: Sequence[str]) -> Path:
    """A prepared dataset holding only `ids` of `prepared`'s training split (its folders linked, not copied)."""
    from seg2sat.atomic import write_text
    from seg2sat.data.dataset import read_manifest

    keep = set(ids)
    records = [r for r in read_manifest(prepared) if r["split"] == "train" and r["id"] in keep]
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "hints", "valid"):
        if (prepared / sub).exists() and not (dest / sub).exists():
            os.symlink((prepared / sub).resolve(), dest / sub)
    shutil.copy(prepared / "prepare_config.yaml", dest / "prepare_config.yaml")
    write_text(dest / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return dest


def choose_labelled(records: Sequence[dict], n: int, seed: int = 0) -> list[str]:
    """`n` seeded training tiles."""
    ids = [r["id"] for r in records if r["split"] == "train"]
    return [ids[i] for i in sorted(np.random.default_rng(seed).permutation(len(ids))[:n])]


def choose_rare(records: Sequence[dict], n: int, rare: Sequence[str] = RARE, most: int = 2) -> list[str]:
    """`n` training tiles in which each rare class appears in at most `most` of them.

    Tiles without any rare class first (seeded order), then those holding the fewest rare pixels,
    each taken only while every rare class it holds is under `most`; short of `n`, refused.
    """
    train = [r for r in records if r["split"] == "train"]
    order = np.random.default_rng(0).permutation(len(train))
    ranked = sorted((train[i] for i in order), key=lambda r: sum(r["shares"].get(c, 0.0) for c in rare))
    chosen, counts = [], dict.fromkeys(rare, 0)
    for r in ranked:
        held = [c for c in rare if r["shares"].get(c, 0.0) > 0]
        if all(counts[c] < most for c in held):
            chosen.append(r["id"])
            counts.update({c: counts[c] + 1 for c in held})
        if len(chosen) == n:
            return sorted(chosen)
    raise SystemExit(f"rare: only {len(chosen)} of {len(train)} tiles keep {', '.join(rare)} in <= {most} tiles; "
                     f"{n} wanted (a larger --scale own tree)")


def make_data(p: Paths, scale: Scale, scenarios: Sequence[str]) -> None:
    """1. Every tree the scenarios need, and the labelled / new-maps subsets of `own`."""
    from seg2sat.data.dataset import read_manifest

    make_tree(p, "pool", scale.pool)
    own = make_tree(p, "own", scale.own)
    records = read_manifest(own)
    train_ids = [r["id"] for r in records if r["split"] == "train"]
    labelled = choose_labelled(records, scale.labelled)
    write_subset(own, p.subset("labelled"), labelled)
    write_subset(own, p.subset("maps"), [i for i in train_ids if i not in set(labelled)])
    if "rare" in scenarios:
        rare = choose_rare(records, scale.labelled)
        write_subset(own, p.subset("rare_labelled"), rare)
        write_subset(own, p.subset("rare_maps"), [i for i in train_ids if i not in set(rare)])
    if "new_place" in scenarios:
        make_tree(p, "place", scale.pool)
        make_tree(p, "place_unlabelled", scale.place)
    check_unseen(p)


def check_unseen(p: Paths) -> None:
    """No test tile (the pool's validation split) in the split the generator, judge and reward model train on."""
    from seg2sat.data.dataset import read_manifest

    records = read_manifest(p.pool_prepared)
    seen = {r["domain"] for r in records if r["split"] == "train"}
    if PLACE in seen:
        raise SystemExit(f"{p.pool_prepared}: the test domain {PLACE} is in the generator's training split")


# ---------------------------------------------------------------------------------------------
# Models and synthetic sets: the real stages, each result kept in the work folder.
# ---------------------------------------------------------------------------------------------


def train_generator(p: Paths, scale: Scale) -> tuple[Path, float]:
    """2. The demo's recipe (plain, then its reward phase) on the pool's training split, exported; kept.

    Returns the model folder and the seconds its training loops took (samples / samples per second).
    """
    from omegaconf import OmegaConf

    from seg2sat.config import compose
    from seg2sat.generation.models import EMBEDDED_TINY_BASE
    from seg2sat.stages import export, train
    from seg2sat.training.checkpoint import list_checkpoints

    if (p.model / "seg2sat.json").exists():
        return p.model, 0.0
    root, demo = p.work / "generator", compose("demo")
    common = [f"paths.root_dir={p.work}", "model=tiny", f"model.pretrained_dir={EMBEDDED_TINY_BASE}",
              f"prepared_dir={p.pool_prepared}", "resume=latest", "validation_steps=0"]
    batch = [f"batch_size={scale.gen_batch}"] if scale.gen_batch else []
    steps = lambda n: [f"max_steps={n}", f"checkpointing_steps={n}", *batch] if n else []  # noqa: E731
    run = train.run(compose("train", [*common, f"experiment={demo.experiment}", f"run_dir={root / 'run'}",
                                      *steps(scale.gen_steps)]))
    loops = [run]
    if demo.get("reward_experiment"):
        init = list_checkpoints(run.run_dir)[-1] / "controlnet"
        reward = [f"reward.segmenter.steps={scale.judge_steps}"] if scale.judge_steps else []
        run = train.run(compose("train", [*common, f"experiment={demo.reward_experiment}", *steps(scale.reward_steps),
                                          *reward,
                                          f"model.controlnet_init={init}", f"run_dir={root / 'reward_run'}"]))
        loops.append(run)
    ex = compose("export", [f"paths.root_dir={p.work}", f"run_dir={run.run_dir}", f"output_dir={p.model}",
                            "overwrite=true"])
    OmegaConf.update(ex, "sampling", OmegaConf.to_container(demo.sampling))
    export.run(ex)
    seconds = sum(r.global_step * (scale.gen_batch or 16) / r.samples_per_s for r in loops if r.samples_per_s)
    return p.model, seconds


def judge_overrides(scale: Scale) -> list[str]:
    """The judge settings synthesize is given (they key the judge's cache in the pool's prepared set)."""
    return [f"judge.steps={scale.judge_steps}"] if scale.judge_steps else []


def train_judge(p: Paths, scale: Scale) -> bool:
    """The synthesis judge (bar and trust) on the pool's training split, trained once here so that its
    CPU is counted apart; synthesize then finds it in its cache. Whether it was trained now."""
    from seg2sat.config import compose
    from seg2sat.evaluation.judge import JudgeConfig, load_or_train_judge

    cfg = compose("synthesize", [f"paths.root_dir={p.work}", *judge_overrides(scale)])
    return load_or_train_judge(p.pool_prepared, JudgeConfig.from_config(cfg.judge))[1]


def specialize_generator(p: Paths, scale: Scale) -> Path:
    """The generator's base adapted to the place's unlabelled images (its ControlNet kept); kept."""
    from seg2sat.config import compose
    from seg2sat.stages import specialize

    if (p.specialized / "seg2sat.json").exists():
        return p.specialized
    specialize.run(compose("specialize", [
        f"paths.root_dir={p.work}", f"model_path={p.model}", f"images={p.sample('place_unlabelled')}",
        f"domain={PLACE}", f"output_dir={p.specialized}", f"run_dir={p.work / 'generator' / 'specialize_run'}",
        f"train.steps={scale.specialize_steps}", f"train.batch_size={scale.specialize_batch}",
        f"train.checkpointing_steps={scale.specialize_steps}"]))
    return p.specialized


@dataclass(frozen=True)
class SynthSet:
    """One synthetic set: which model renders which maps, how many tiles, with trust or targets."""

    maps: str  # a subset name (Paths.subset) or a prepared tree name
    trust: bool = False
    targets: str | None = None  # rare classes: edited maps aimed at them
    specialized: bool = False
    tiles: str = "maps"  # as many tiles as this subset has maps


SETS = {
    "rerender": SynthSet("labelled"),
    "new": SynthSet("maps"),
    "new_trust": SynthSet("maps", trust=True),
    "rare_targeted": SynthSet("rare_maps", trust=True, targets=RARE_TARGETS, tiles="rare_maps"),
    "place_specialized": SynthSet("maps", trust=True, specialized=True),
    "full_trust": SynthSet("own", trust=True, tiles="own"),
}


def _maps_dir(p: Paths, name: str) -> Path:
    return p.prepared(name) if name in TREES else p.subset(name)


def synthesize_set(p: Paths, scale: Scale, name: str) -> tuple[Path, int]:
    """3. `seg2sat synthesize` of one set (its tiles resume; the report marks it done); (folder, tiles)."""
    from seg2sat.config import compose
    from seg2sat.data.dataset import read_manifest
    from seg2sat.stages import synthesize

    spec, out = SETS[name], p.synthetic(name)
    maps = _maps_dir(p, spec.maps)
    n = len(read_manifest(_maps_dir(p, spec.tiles), "train"))
    if (out / "report.json").exists():
        return out, n
    sources = f"{{kind: prepared, path: {maps}, split: train}}"
    if spec.targets:
        sources += f", {{kind: edited, path: {maps}, split: train}}"
    overrides = [f"paths.root_dir={p.work}", f"model_path={p.specialized if spec.specialized else p.model}",
                 f"output_dir={out}", f"judge_data={p.pool_prepared}", f"target.n_tiles={n}",
                 f"target.classes={spec.targets or 'null'}", f"sources=[{sources}]",
                 f"trust.enabled={str(spec.trust).lower()}", f"diversity.maps={scale.diversity}"]
    overrides += [f"sampling.steps={scale.synth_steps}"] if scale.synth_steps else []
    overrides += judge_overrides(scale)
    overrides += [f"quality.threshold={scale.threshold}"] if scale.threshold is not None else []
    report = synthesize.run(compose("synthesize", overrides)).report
    if not report.get("accepted"):
        raise SystemExit(f"{out}: synthesize kept no pair of {n} (all under the bar {report.get('threshold')}); "
                         "the arms need some: see its report.json, delete the folder to retry")
    return out, n


# ---------------------------------------------------------------------------------------------
# Arms: which sets each segmenter trains on, and in what mix.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """The training sets of one arm ({name: segment's set spec}) and its schedule (None: one phase)."""

    train: dict[str, dict]
    schedule: tuple[tuple[tuple[str, ...], float], ...] | None = None  # (sets, share of the steps)

    def synthetic_sets(self) -> list[str]:
        return [s["synth"] for s in self.train.values() if "synth" in s]


def _real(path: Path) -> dict:
    return {"path": str(path), "split": "train"}


def _synth(name: str, **mix: float) -> dict:
    return {"synth": name, **mix}  # resolved to the set's folder once synthesized


def few_labels_arms(p: Paths) -> dict[str, Arm]:
    real = {"real": _real(p.subset("labelled"))}
    return {
        BASELINE: Arm(real),
        "rerender": Arm({**real, "synthetic": _synth("rerender")}),
        "new_layouts": Arm({**real, "synthetic": _synth("new")}),
        "new_layouts_trust": Arm({**real, "synthetic": _synth("new_trust")}),
        "trust_rate50": Arm({**real, "synthetic": _synth("new_trust", rate=0.5)}),
        "trust_weight05": Arm({**real, "synthetic": _synth("new_trust", weight=0.5)}),
        # FreeMask's other route: pretrain on the generated pairs, fine-tune on real (2/3 then 1/3 of the steps)
        "trust_pretrain": Arm({**real, "synthetic": _synth("new_trust")},
                              ((("synthetic",), 2 / 3), (("real",), 1 / 3))),
        ORACLE: Arm({**real, "oracle": _real(p.subset("maps"))}),
    }


def rare_arms(p: Paths) -> dict[str, Arm]:
    real = {"real": _real(p.subset("rare_labelled"))}
    return {BASELINE: Arm(real), "targeted_trust": Arm({**real, "synthetic": _synth("rare_targeted")}),
            "targeted_trust_rate50": Arm({**real, "synthetic": _synth("rare_targeted", rate=0.5)})}


def new_place_arms(p: Paths) -> dict[str, Arm]:
    real = {"real": _real(p.subset("labelled"))}
    return {BASELINE: Arm(real), "generic_trust": Arm({**real, "synthetic": _synth("new_trust")}),
            "specialized_trust": Arm({**real, "synthetic": _synth("place_specialized")}),
            "specialized_trust_rate50": Arm({**real, "synthetic": _synth("place_specialized", rate=0.5)})}


RECIPE = {"rate": 0.5}  # the recommended default: new layouts, per-pixel trust, half the samples synthetic


def full_arms(p: Paths) -> dict[str, Arm]:
    real = {"real": _real(p.pool_prepared)}
    return {BASELINE: Arm(real), "recipe": Arm({**real, "synthetic": _synth("full_trust", **RECIPE)})}


ARMS: dict[str, Callable[[Paths], dict[str, Arm]]] = {
    "few_labels": few_labels_arms, "rare": rare_arms, "new_place": new_place_arms, "full": full_arms}


def test_tiles_of(p: Paths, scenario: str) -> dict:
    """The scenario's test tiles: the test domain of `pool` (of `place`, with its look, for new_place)."""
    return {"path": str(p.sample("place" if scenario == "new_place" else "pool")), "domains": [PLACE]}


def segment_arm(p: Paths, scale: Scale, scenario: str, name: str, arm: Arm) -> dict:
    """4. `seg2sat segment` of one arm (`scale.seeds` segmenters); its segment.json is kept and reused."""
    from omegaconf import OmegaConf, open_dict

    from seg2sat.config import compose
    from seg2sat.stages import segment

    out = p.work / "arms" / scenario / name
    if (out / segment.RECORD).exists():
        return json.loads((out / segment.RECORD).read_text())
    train = {k: ({"path": str(p.synthetic(v["synth"])), **{m: v[m] for m in ("rate", "weight") if m in v}}
                 if "synth" in v else v) for k, v in arm.train.items()}
    cfg = compose("segment", [f"paths.root_dir={p.work}", f"output_dir={out}", f"steps={scale.seg_steps}",
                              f"batch_size={scale.seg_batch}", f"seeds=[{','.join(map(str, range(scale.seeds)))}]"])
    with open_dict(cfg):
        cfg.train = OmegaConf.create(train)
        cfg.test = OmegaConf.create(test_tiles_of(p, scenario))
        if arm.schedule:
            cfg.schedule = OmegaConf.create([{"sets": list(sets), "steps": max(1, round(share * scale.seg_steps))}
                                             for sets, share in arm.schedule])
    return segment.run(cfg).record


# ---------------------------------------------------------------------------------------------
# Bookkeeping: gains against real only, their spread, the targets.
# ---------------------------------------------------------------------------------------------


def arm_summary(record: dict, base: dict | None) -> dict:
    """One arm's mIoU, spread and, against real only, its gain, the gain's spread and whether it counts."""
    out = {"miou_mean": record["miou_mean"], "miou_std": record["miou_std"],
           "mious": [r["miou"] for r in record["runs"]], "per_class_iou": record["per_class_iou"],
           "tiles": {k: v["tiles"] for k, v in record["train"].items()},
           "ignored_share": {k: v["ignored_share"] for k, v in record["train"].items()},
           "phases": record["phases"], "seconds": record.get("seconds")}
    if base is not None:
        gain = record["miou_mean"] - base["miou_mean"]
        std = float(np.hypot(record["miou_std"], base["miou_std"]))
        out.update(gain=gain, gain_std=std, significant=bool(abs(gain) > 2 * std))
    return out


def rare_ratios(arm: dict, base: dict, rare: Sequence[str] = RARE) -> dict[str, float | None]:
    """Each rare class's IoU in the arm over its IoU with real only (None where real only never scores it)."""
    return {c: (arm["per_class_iou"].get(c, 0.0) / base["per_class_iou"][c]
                if base["per_class_iou"].get(c) else None) for c in rare}


def summarize(scenario: str, records: dict[str, dict]) -> dict:
    """The scenario's record: every arm against real only, the best recipe arm, the oracle, the target."""
    base = records[BASELINE]
    arms = {name: arm_summary(r, None if name == BASELINE else base) for name, r in records.items()}
    recipes = [n for n in arms if n not in (BASELINE, ORACLE)]
    best = max(recipes, key=lambda n: arms[n]["gain"])
    out = {"baseline": BASELINE, "recipe": best, "gain": arms[best]["gain"], "gain_std": arms[best]["gain_std"],
           "significant": arms[best]["gain"] > 2 * arms[best]["gain_std"],
           "oracle_gain": arms[ORACLE]["gain"] if ORACLE in arms else None, "arms": arms}
    if out["oracle_gain"] and out["oracle_gain"] > 0:  # the share of the oracle's gain the recipe reaches
        out["gap_closed"] = out["gain"] / out["oracle_gain"]
    if scenario == "rare":
        out["rare_iou_ratio"] = rare_ratios(arms[best], arms[BASELINE])
    out["target"], out["met"] = target_met(scenario, out)
    return out


def target_met(scenario: str, s: dict) -> tuple[str, bool]:
    """The issue's target for the scenario, and whether the record meets it (significance included)."""
    if scenario == "rare":
        ratios = [r for r in s["rare_iou_ratio"].values() if r is not None]
        return f"rare classes >= {RARE_RATIO}x their real-only IoU", bool(ratios) and min(ratios) >= RARE_RATIO
    goal = TARGETS[scenario]
    met = s["gain"] >= goal and (goal < 0 or s["significant"])
    text = f"gain >= {goal:+g}" + (" and > 2x its spread" if goal >= 0 else "")
    if scenario == "few_labels":
        text += f", >= {ORACLE_SHARE:.0%} of the oracle's gain"
        met = met and bool(s.get("oracle_gain")) and s["gain"] >= ORACLE_SHARE * s["oracle_gain"]
    return text, bool(met)


def _colour(name: str, arm: dict) -> str:
    """Orange: the oracle; blue: a gain that counts; red: a loss that counts; grey: within twice the spread."""
    if name == ORACLE:
        return "#d9822b"
    if not arm["significant"]:
        return "#aaaaaa"
    return "#3a7ca5" if arm["gain"] > 0 else "#c0392b"


def plot(record: dict, path: Path) -> None:
    """Per scenario, every arm's gain over real only with its 2-sigma bar (colours: `_colour`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scen = record["scenarios"]
    fig, axes = plt.subplots(1, len(scen), figsize=(3.4 * len(scen), 3.8), sharey=True, squeeze=False)
    for ax, (name, s) in zip(axes[0], scen.items(), strict=True):
        arms = [a for a in s["arms"] if a != BASELINE]
        gains = [s["arms"][a]["gain"] for a in arms]
        ax.bar(range(len(arms)), gains, yerr=[2 * s["arms"][a]["gain_std"] for a in arms], capsize=3,
               color=[_colour(a, s["arms"][a]) for a in arms])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(arms)), arms, rotation=40, ha="right", fontsize=7)
        ax.set_title(f"{name}: real only {s['arms'][BASELINE]['miou_mean']:.3f}", fontsize=9)
    axes[0][0].set_ylabel("mIoU gain over real only (±2σ)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, among {', '.join(SCENARIOS)}")
    p.add_argument("--scale", choices=sorted(SCALES), default="full", help="tiny: a smoke run; full: the protocol")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the record (synthetic.json)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default data/bench_synthetic/<scale>)")
    p.add_argument("--seeds", type=int, default=None, help="segmenters per arm (default: the scale's, 3)")
    p.add_argument("--plot", type=Path, default=None,
                   help="the plot (default docs/synthetic.png at full scale, <out>/synthetic_tiny.png at tiny)")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown or not args.scenarios:
        p.error(f"--scenarios: {', '.join(unknown) or 'none given'}; choose among {', '.join(SCENARIOS)}")
    if args.seeds is not None and args.seeds < 3:
        p.error("--seeds: at least 3 (a gain counts only against its seed spread)")
    return args


def run_scenario(p: Paths, scale: Scale, scenario: str, ledger: Ledger) -> dict:
    """Its synthetic sets (once each), then every arm's segmenters; the scenario's record."""
    arms = ARMS[scenario](p)
    if scenario == "new_place":
        ledger.measure("specialize", scale.specialize_steps * scale.specialize_batch,
                       lambda: specialize_generator(p, scale), done=(p.specialized / "seg2sat.json").exists())
    steps = scale.synth_steps or DEMO_UNITS["synth_steps"]
    for name in dict.fromkeys(s for a in arms.values() for s in a.synthetic_sets()):
        ledger.measure("synthesize", set_tiles(scale, name) * steps, lambda name=name: synthesize_set(p, scale, name),
                       done=(p.synthetic(name) / "report.json").exists())
    records = {}
    for name, arm in arms.items():
        records[name] = ledger.measure("segment", scale.seeds * scale.seg_steps * scale.seg_batch,
                                       lambda name=name, arm=arm: segment_arm(p, scale, scenario, name, arm),
                                       done=(p.work / "arms" / scenario / name / "segment.json").exists(),
                                       variable=lambda r: sum(run["seconds"] for run in r["runs"]))
        print(f"{scenario:10s} {name:26s} mIoU {records[name]['miou_mean']:.3f} ± {records[name]['miou_std']:.3f}",
              flush=True)
    return summarize(scenario, records)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse(argv)
    scale = SCALES[args.scale] if args.seeds is None else replace(SCALES[args.scale], seeds=args.seeds)
    work = (args.work or Path("data") / "bench_synthetic" / args.scale).resolve()
    p, ledger, t0 = Paths(work, work / "data" / "pool" / "prepared"), Ledger.load(work / "ledger.json"), time.perf_counter()
    # 1-2. Data, the generator, and the judge (cached in the pool's prepared set, where synthesize finds it).
    ledger.measure("data", data_units(scale), lambda: make_data(p, scale, args.scenarios),
                   done=(p.pool_prepared / "manifest.jsonl").exists())
    ledger.measure("generator", generator_units(scale), lambda: train_generator(p, scale),
                   done=(p.model / "seg2sat.json").exists(), variable=lambda out: out[1])
    t_judge = cpu_seconds()
    if train_judge(p, scale):
        ledger.add("judge", cpu_seconds() - t_judge, (scale.judge_steps or DEMO_UNITS["judge"] // 16) * 16)
    # 3-4. Each scenario: its synthetic sets, then its arms.
    scenarios = {s: run_scenario(p, scale, s, ledger) for s in args.scenarios}
    record = {"benchmark": "synthetic", "scale": args.scale, "scenarios": scenarios, "settings": asdict(scale),
              "protocol": {"test_domain": PLACE, "labelled_domains": list(LABELLED), "place_look": PLACE_LOOK,
                           "rare": list(RARE), "rare_targets": RARE_TARGETS, "recipe": RECIPE,
                           "gain": "best recipe arm's mIoU minus real only (augmentation on); gain_std: the two "
                                   "seed spreads in quadrature; significant: gain > 2 gain_std"},
              "synthesis": synthesis_reports(p), "cpu_seconds": {k: round(v, 1) for k, v in ledger.cpu.items()},
              "work_units": ledger.units,
              "seconds": round(time.perf_counter() - t0), "machine": platform.machine(),
              "date": time.strftime("%Y-%m-%d")}
    if args.scale != "full":
        record["full_cpu_estimate_s"] = estimate(ledger, full_units(SCALES["full"], args.scenarios),
                                                 full_calls(args.scenarios))
    return finish(args, record)


def synthesis_reports(p: Paths) -> dict:
    """What limits the synthetic sets, from their report.json: pairs kept and dropped, judge scores
    (fidelity), ignored pixels (trust), map reuse and diversity."""
    out = {}
    for name in SETS:
        path = p.synthetic(name) / "report.json"
        if path.exists():
            report = json.loads(path.read_text())
            out[name] = {k: report.get(k) for k in ("accepted", "dropped", "score", "trust", "maps", "diversity")}
    return out


def finish(args: argparse.Namespace, record: dict) -> dict:
    """5. The record and the plot, each atomically; the table and the CPU estimate printed."""
    from seg2sat.atomic import write_json

    name = "synthetic.json" if args.scale == "full" else f"synthetic_{args.scale}.json"
    path = write_json(args.out / name, record)
    plot_path = args.plot or (DOCS_PLOT if args.scale == "full" else args.out / f"synthetic_{args.scale}.png")
    plot(record, plot_path)
    for scenario, s in record["scenarios"].items():
        print(f"{scenario:10s} gain {s['gain']:+.3f} ± {s['gain_std']:.3f} ({s['recipe']}; "
              f"{'counts' if s['significant'] else 'within 2x spread'}); target {s['target']}: "
              f"{'met' if s['met'] else 'not met'}" + (f"; oracle {s['oracle_gain']:+.3f}" if s["oracle_gain"] else ""))
    if "full_cpu_estimate_s" in record:
        est = record["full_cpu_estimate_s"]
        print(f"CPU here: {sum(record['cpu_seconds'].values()):.0f} s; the full run's, estimated from this one: "
              f"{est['total'] / 3600:.1f} CPU-hours (" + ", ".join(f"{k} {v / 3600:.2f} h" for k, v in est.items()
                                                                  if k != "total") + ")")
    print(f"wrote {path} and {plot_path}")
    return record


if __name__ == "__main__":
    main()
