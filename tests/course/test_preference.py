"""DPO on the small GPT: the loss starts at log 2 and the held-out chosen/rejected margin rises."""

import math

import pytest
import torch

from seg2sat.course import preference
from seg2sat.labels import CLASSES


def test_pairs_come_from_the_legend_and_hold_out_whole_classes():
    train, heldout = preference.load_pairs()
    assert len(train) + len(heldout) == 3 * len(CLASSES)
    assert {p.topic for p in heldout} == {"water", "vineyard", "snow", "greenhouse", "bare soil"}
    assert not {p.topic for p in heldout} & {p.topic for p in train}
    water = next(p for p in heldout if p.topic == "water")
    assert "code 5" in water.chosen and "#1553ae" in water.chosen and "code" not in water.rejected


# A lesson's training or the small LLM (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_dpo_raises_the_heldout_margin():
    train, heldout = preference.load_pairs()
    torch.manual_seed(0)
    ref, tok = preference.warm_up(train + heldout, steps=30, seed=0)
    # the policy starts as the reference, so the DPO loss starts at -log sigmoid(0) = log 2
    assert float(preference.dpo_loss(ref, ref, tok, train[:8], beta=0.1).detach()) == pytest.approx(math.log(2), abs=1e-5)
    _, _, log = preference.train_dpo(train, heldout, warmup_steps=30, steps=20, eval_every=10, seed=0)
    assert log.steps == [0, 10, 20]
    # measured: held-out margin -11 -> +124 nats over 60 steps (150 warm-up steps); here 20 steps
    assert log.heldout_margin[-1] > log.heldout_margin[0] + 10
    assert log.train_margin[-1] > log.train_margin[0] + 10
    assert log.loss[-1] < math.log(2)


def test_sequence_logprob_refuses_texts_longer_than_the_block():
    train, _ = preference.load_pairs()
    ref, tok = preference.warm_up(train, steps=1)
    long = preference.Pair("Q: " + "a" * 200 + "\nA: ", train[0].chosen, train[0].rejected, "x")
    with pytest.raises(ValueError, match="the model's block is 128"):
        preference.sequence_logprob(ref, tok, [long], "chosen")
