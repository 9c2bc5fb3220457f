"""V+L tickets: features, tokenizer, UNITER model and heads, pre-training masks, ITM negatives, metrics,
adversarial training, baselines and a tiny end-to-end study."""

from __future__ import annotations

import pytest
import torch

from ticketlab.baselines import BASELINES
from ticketlab.config import parse_config
from ticketlab.data import build_task
from ticketlab.data.scenes import generate_scenes
from ticketlab.errors import DataError
from ticketlab.experiment import run_experiment
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.models.hf import minilm_path
from ticketlab.objectives import OBJECTIVES
from ticketlab.prunable import prunable_names
from ticketlab.run_context import RunContext
from ticketlab.vl.adversarial import AdversarialTrace, adversarial_loss, ascend, symmetric_kl
from ticketlab.vl.benchmark import VL_TASKS, generate
from ticketlab.vl.features import image_features, region_class
from ticketlab.vl.metrics import recall_at_k, retrieval_metric
from ticketlab.vl.model import PADDING_LOGIT, PointerHead, VLFeatures
from ticketlab.vl.pretraining import IGNORE, itm_pairs, mask_regions, mask_tokens
from ticketlab.vl.text import tokenizer_for

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64}
TINY_UNITER = {"name": "uniter", "options": {"config": TINY_BERT}}
SIZES = {"n_train": 48, "n_val": 24, "n_test": 24}
ADAMW = {"optimizer": "adamw", "lr": 1e-3, "epochs": 1, "batch_size": 16, "head_lr_mult": 10}


def tiny_model(task):
    return build_model("uniter", task.num_classes, TINY_UNITER["options"], seed=0, head=task.head)


# -- data --------------------------------------------------------------------------------------------
def test_every_generated_text_is_in_the_compact_vocabulary():
    tok = tokenizer_for(None)
    scenes = generate_scenes(200, seed=2)[1]
    for task in VL_TASKS:
        samples = generate(task, scenes, seed=1)
        texts = [s.text for s in samples] + [c for s in samples for c in s.choices]
        ids = tok.encode(texts, 40)
        assert not (ids == tok.unk_id).any(), task
    assert tok.vocab_size < 100  # a compact table, not BERT's 30 k rows


def test_region_features_point_at_their_objects():
    from ticketlab.data import images_to_tensor

    images, scenes = generate_scenes(30, seed=4)

    feats = image_features(images_to_tensor(images, None), scenes, "regions", seed=0)
    for i, scene in enumerate(scenes):
        assert int(feats.mask[i].sum()) == len(scene.objects)
        for j, obj in enumerate(scene.objects):
            slot = feats.object_slot[i][j]
            assert int(feats.labels[i, slot]) == region_class(obj)
            x0, y0, x1, y1 = (feats.boxes[i, slot, :4] * 32).tolist()
            assert x0 <= obj.x <= x1 and y0 <= obj.y <= y1
    patches = image_features(images_to_tensor(images, None), scenes, "patches")
    assert patches.feats.shape == (30, 16, 192)
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):
            x0, y0, x1, y1 = (patches.boxes[i, patches.object_slot[i][j], :4] * 32).tolist()
            assert x0 <= obj.x < x1 + 1e-6 and y0 <= obj.y < y1 + 1e-6


def test_refcoco_labels_are_the_referred_region():
    task = build_task("vl_refcoco", dict(SIZES))
    tok = tokenizer_for(None)
    from ticketlab.data.scenes import COLOURS, SHAPES

    for i in range(len(task.test)):
        words = [tok.tokenizer.convert_ids_to_tokens(tok.compact_ids[t]) for t in task.test.x["text_ids"][i, 0]]
        words = [w for w in words if w not in ("[CLS]", "[SEP]", "[PAD]")]
        phrase = tok.tokenizer.convert_tokens_to_string(words).split()
        colour, shape = phrase[-2], phrase[-1]
        label = int(task.test.x["region_labels"][i, 0, task.test.y[i]])
        assert label == SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour)


def test_retrieval_training_pairs_and_galleries():
    task = build_task("vl_retrieval", dict(SIZES))
    y = task.train.y
    assert 0 < int(y.sum()) < len(y)  # positives and sampled negatives
    negatives = task.train.x["image_feats"][y == 0]
    positives_text = task.train.x["text_ids"][y == 1]
    negatives_text = task.train.x["text_ids"][y == 0]
    assert torch.equal(positives_text, negatives_text)  # one negative image per caption
    assert not torch.equal(negatives, task.train.x["image_feats"][y == 1])
    assert bool((task.test.y == 1).all())  # a gallery: caption i belongs to image i


# -- model and heads ---------------------------------------------------------------------------------
def test_uniter_loads_the_real_minilm_weights_into_a_compact_vocabulary():
    from transformers import BertModel

    ref = BertModel.from_pretrained(minilm_path())
    model = build_model("uniter", 3, {"num_layers": 2}, head="answer")
    tok = tokenizer_for(None)
    bert = model.backbone.bert
    assert torch.equal(bert.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight[tok.compact_ids])
    assert len(bert.encoder.layer) == 2
    for name, p in bert.encoder.layer[1].named_parameters():
        assert torch.equal(p, dict(ref.encoder.layer[1].named_parameters())[name]), name


def test_heads_are_never_pruned_and_prunable_set_is_encoder_and_pooler():
    task = build_task("vl_vqa", dict(SIZES))
    model = tiny_model(task)
    names = prunable_names(model)
    assert not any(n.startswith("head.") or "embeddings" in n for n in names)
    assert sum(".attention." in n for n in names) == 2 * 4 and any("pooler" in n for n in names)
    assert len(names) == 2 * 6 + 1  # Q, K, V, O, FFN in, FFN out per layer + pooler


@pytest.mark.parametrize("name,head", [("vl_vqa", "answer"), ("vl_nlvr2", "pair"), ("vl_vcr", "choice"),
                                       ("vl_refcoco", "pointer"), ("vl_retrieval", "answer"), ("vl_snli_ve", "answer"),
                                       ("vl_gqa", "answer")])
def test_every_task_trains_through_its_head(name, head):
    task = build_task(name, dict(SIZES))
    assert task.head == head
    model = tiny_model(task)
    logits = model(task.train.inputs(slice(0, 5)))
    assert logits.shape == (5, task.num_classes)
    loss = torch.nn.functional.cross_entropy(logits, task.train.y[:5])
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("head."))


def test_pointer_head_never_points_at_padding():
    head = PointerHead(4, 5)
    states = torch.zeros(2, 5, 4)
    states[:, 4] = 100.0  # the padded slot would win without the mask
    states[0, 1], states[1, 3] = 1.0, 1.0
    with torch.no_grad():
        head.score.weight.fill_(1.0)
        head.score.bias.zero_()
    mask = torch.tensor([[True] * 4 + [False]] * 2)
    logits = head(VLFeatures(torch.zeros(2, 4), torch.zeros(2, 3, 4), states, mask, 1))
    assert logits.argmax(1).tolist() == [1, 3]
    assert bool((logits[:, 4] == PADDING_LOGIT).all())


def test_features_of_the_wrong_size_are_a_clear_error():
    task = build_task("vl_vqa", dict(SIZES, features="patches", patch=4))
    model = tiny_model(task)
    with pytest.raises(DataError, match="image_feature_dim"):
        model(task.train.inputs(slice(0, 2)))


# -- metrics -----------------------------------------------------------------------------------------
def test_recall_at_k_on_hand_built_scores():
    scores = torch.tensor([[0.9, 0.1, 0.0, 0.0],   # caption 0: its image ranks 1st
                           [0.8, 0.5, 0.7, 0.0],   # caption 1: 3rd
                           [0.0, 0.0, 0.6, 0.0],   # caption 2: 1st
                           [0.9, 0.8, 0.7, 0.1]])  # caption 3: 4th
    r = recall_at_k(scores, ks=(1, 2, 3))
    assert r["t2i_r1"] == 0.5 and r["t2i_r2"] == 0.5 and r["t2i_r3"] == 0.75
    # image 0: caption 3 ties its 0.9 (ties count against: 2nd); image 1: 2nd; image 2: 3rd; image 3: 1st
    assert r["i2t_r1"] == 0.25 and r["i2t_r2"] == 0.75 and r["i2t_r3"] == 1.0
    assert recall_at_k(torch.zeros(5, 5))["t2i_r1"] == 0.0  # a constant scorer gets nothing for free


def test_retrieval_metric_scores_every_caption_with_every_image():
    task = build_task("vl_retrieval", dict(SIZES))

    class Oracle(torch.nn.Module):  # 'matched' iff the image features are the caption's own image
        def forward(self, inputs):
            own = task.test.x["image_feats"]
            feats = inputs["image_feats"]
            text = inputs["text_ids"][:, 0]
            owner = (task.test.x["text_ids"][:, 0][None] == text[:, None]).all(-1).float().argmax(1)
            match = (own[owner] == feats).flatten(1).all(1).float()
            return torch.stack([-match, match], 1)

    result = retrieval_metric(Oracle(), task.test)
    assert result["score"] == 1.0 and result["t2i_r1"] == 1.0 and result["i2t_r1"] == 1.0


# -- pre-training --------------------------------------------------------------------------------------
def test_mlm_masking_rates_and_labels():
    special, mask_id, vocab = (0, 1, 2, 3, 4), 4, 60
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (400, 1, 250), generator=g)
    ids[:, :, 0], ids[:, :, -1] = 2, 3  # [CLS] ... [SEP]
    masked, labels = mask_tokens(ids, special, mask_id, vocab, 0.15, g)
    selected = labels != IGNORE
    candidates = ids.numel() - 2 * 400
    assert abs(int(selected.sum()) / candidates - 0.15) < 0.005
    assert not selected[:, :, 0].any() and not selected[:, :, -1].any()  # specials are never masked
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    became_mask = (masked[selected] == mask_id).float().mean()
    unchanged = (masked[selected] == ids[selected]).float().mean()
    random_word = 1 - became_mask - unchanged
    assert abs(became_mask - 0.8) < 0.01 and abs(unchanged - 0.1) < 0.01 and abs(random_word - 0.1) < 0.01
    assert not torch.isin(masked[selected & (masked != mask_id)], torch.tensor([0, 1, 2, 3])).any()


def test_every_sample_gets_at_least_one_masked_token_and_region():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[[2, 7, 3, 0, 0]]] * 50)
    _, labels = mask_tokens(ids, (0, 1, 2, 3, 4), 4, 10, 0.01, g)
    assert bool(((labels != IGNORE).sum(-1) == 1).all())
    image_mask = torch.tensor([[[True, True, False]]] * 50)
    chosen = mask_regions(image_mask, 0.01, g)
    assert bool((chosen.sum(-1) >= 1).all()) and not chosen[..., 2].any()


def test_itm_negatives_really_mismatch():
    g = torch.Generator().manual_seed(0)
    texts = torch.randint(0, 3, (200, 1, 2), generator=g)  # many duplicate captions
    index, labels = itm_pairs(texts, g)
    same_text = (texts.flatten(1) == texts[index].flatten(1)).all(1)
    assert bool((labels[~same_text] == 0).all())  # a different caption is always a negative
    assert bool((labels[same_text] == 1).all())  # an identical caption is never called a negative
    assert 0.3 < float((index != torch.arange(200)).float().mean()) < 0.7


def test_vl_pretraining_objective_learns_mlm_itm_mrm():
    task = build_task("vl_pretrain", {"n_train": 64, "n_val": 32, "n_test": 32})
    model = tiny_model(task)
    objective = OBJECTIVES.build("vl_pretrain")
    objective.setup(model, None)
    g = torch.Generator().manual_seed(0)
    for name in ("mlm", "itm", "mrm"):
        loss, logits, target = getattr(objective, name)(model, task.train.inputs(slice(0, 16)), g)
        assert torch.isfinite(loss) and loss > 0 and len(logits) == len(target)
    objective.evaluate(model, task, "val")
    assert {"mlm_acc", "itm_acc", "mrm_acc"} <= set(objective.details["val"])


# -- adversarial training ------------------------------------------------------------------------------
def test_symmetric_kl_is_symmetric_and_zero_on_equal_inputs():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(symmetric_kl(a, b), symmetric_kl(b, a))
    assert float(symmetric_kl(a, a)) == pytest.approx(0.0, abs=1e-6)


def test_pgd_step_has_the_step_size_and_respects_the_norm_bound():
    grad = torch.randn(3, 5, 8)
    step = ascend(torch.zeros(3, 5, 8), grad, 0.3, 0.0)
    assert torch.allclose(step.flatten(1).norm(dim=1), torch.full((3,), 0.3))
    assert torch.allclose(step, 0.3 * grad / grad.flatten(1).norm(dim=1)[:, None, None])
    far = ascend(step, grad, 1.0, 0.5)
    assert float(far.flatten(1).norm(dim=1).max()) <= 0.5 + 1e-6


def test_adversarial_loss_increases_the_loss_and_respects_max_norm():
    task = build_task("vl_vqa", dict(SIZES))
    model = tiny_model(task)
    model.eval()  # no dropout: the comparison is between inputs, not dropout masks
    trace = AdversarialTrace()
    inputs, labels = task.train.inputs(slice(0, 16)), task.train.y[:16]
    total = adversarial_loss(model, inputs, labels, steps=3, step_size=0.05, max_norm=0.08, kl_weight=1.5,
                             trace=trace)
    assert trace.perturbed_losses[0] > trace.clean_loss  # the step-0 ascent raises the task loss
    assert all(t <= 0.08 + 1e-5 and i <= 0.08 + 1e-5 for t, i in trace.delta_norms)
    assert trace.delta_norms[0][0] == pytest.approx(0.05, rel=1e-4)
    total.backward()
    assert float(total.detach()) > trace.clean_loss


def test_villa_objective_trains_under_a_mask_without_regrowth(tmp_path):
    cfg = parse_config({"model": TINY_UNITER, "task": {"name": "vl_vqa", "options": SIZES}, "train": ADAMW,
                        "objective": "villa", "objective_options": {"steps": 2, "step_size": 0.01},
                        "prune": {"schedule": "original", "rate": 0.3, "rounds": 1, "rewind": "init"}, "baselines": []})
    run = run_experiment(cfg, tmp_path, progress=False)
    mask = Mask.load(run / "rounds" / "round_001" / "mask.safetensors")
    from ticketlab.tensorfiles import load_tensors

    weights = load_tensors(run / "rounds" / "round_001" / "weights.safetensors")[0]
    assert mask.sparsity() == pytest.approx(0.3, abs=1e-4)
    for name in mask.names():
        assert bool((weights[name][~mask.tensors[name]] == 0).all())


# -- IMP with the V+L baselines ------------------------------------------------------------------------
def vl_imp_config(**overrides: object):
    cfg = {
        "model": TINY_UNITER, "task": {"name": "vl_refcoco", "options": SIZES}, "train": ADAMW,
        "pretrain": {"objective": "vl_pretrain", "task": {"name": "vl_pretrain", "options": SIZES}, "train": ADAMW,
                     "seed": 0},
        "prune": {"schedule": "original", "rate": 0.1, "rounds": 3},
        "baselines": ["random_prune", "base_checkpoint", "shuffled_pretrained"], "baseline_rounds": [2], "seed": 1,
    }
    return parse_config({**cfg, **overrides})


def test_vl_imp_with_pretraining_and_baselines(tmp_path):
    cfg = vl_imp_config()
    run_dir = run_experiment(cfg, tmp_path, progress=False)
    assert len(list(tmp_path.glob("pretrain-*"))) == 1
    run = RunContext(cfg, run_dir, build_task("vl_refcoco", SIZES))
    for k, target in enumerate([0.0, 0.1, 0.2, 0.3]):
        assert run.imp_mask(k).sparsity() == pytest.approx(target, abs=1e-4)
    for name in ("random_prune", "base_checkpoint", "shuffled_pretrained"):
        assert sorted(p.name for p in (run_dir / "baselines" / name).iterdir()) == ["round_002"]
    theta_p, base = run.pretrained_state(), BASELINES.get("base_checkpoint")(run, 2)[1]
    layer = run.prunable()[0]
    assert not torch.equal(theta_p[layer], base[layer])  # V+L pre-training changed the weights

    mask, shuffled = BASELINES.get("shuffled_pretrained")(run, 2)
    assert torch.equal(mask.tensors[layer], run.imp_mask(2).tensors[layer])
    for name in run.prunable():
        assert torch.equal(shuffled[name].flatten().sort().values, theta_p[name].flatten().sort().values)
        assert not torch.equal(shuffled[name], theta_p[name])
    mask, start = BASELINES.get("base_checkpoint")(run, 2)
    assert torch.equal(start[layer], base[layer])
    # another seed of IMP shares θp, because pretrain.seed fixes the pre-training's seed
    run_experiment(vl_imp_config(seed=2, baselines=[], baseline_rounds=[]), tmp_path, progress=False)
    assert len(list(tmp_path.glob("pretrain-*"))) == 1


def test_baseline_rounds_outside_the_run_are_rejected():
    from ticketlab.errors import ConfigError

    with pytest.raises(ConfigError, match="baseline_rounds"):
        vl_imp_config(baseline_rounds=[4])


def test_mean_pooling_reads_both_streams_and_ignores_padding():
    task = build_task("vl_vqa", dict(SIZES))
    model = build_model("uniter", task.num_classes, {**TINY_UNITER["options"], "pooling": "mean"}, head="answer").eval()
    inputs = task.train.inputs(slice(0, 16))
    padded = inputs["image_mask"][:, 0].logical_not()
    assert padded.any()
    noisy = dict(inputs, image_feats=inputs["image_feats"] + 5.0 * padded[:, None, :, None])  # change padding only
    assert torch.allclose(model.backbone(inputs).pooled, model.backbone(noisy).pooled, atol=1e-5)
    other = dict(inputs, image_feats=inputs["image_feats"].flip(0), image_boxes=inputs["image_boxes"].flip(0),
                 image_mask=inputs["image_mask"].flip(0))
    assert not torch.allclose(model.backbone(inputs).pooled, model.backbone(other).pooled, atol=1e-4)
    from ticketlab.errors import ConfigError

    with pytest.raises(ConfigError, match="pooling"):
        build_model("uniter", 2, {**TINY_UNITER["options"], "pooling": "max"})


HF_VL_CONFIGS = {
    "visualbert": TINY_BERT,
    "vilt": {**TINY_BERT, "image_size": 32, "patch_size": 8},
}


@pytest.mark.parametrize("name", list(HF_VL_CONFIGS))
def test_vilt_and_visualbert_share_the_inputs_heads_and_prunable_set(name):
    for task_name in ("vl_nlvr2", "vl_refcoco"):
        task = build_task(task_name, dict(SIZES))
        model = build_model(name, task.num_classes, {"config": HF_VL_CONFIGS[name]}, head=task.head)
        logits = model(task.train.inputs(slice(0, 4)))
        assert logits.shape == (4, task.num_classes)
        names = prunable_names(model)
        assert len(names) == 2 * 6 + 1 and not any("embeddings" in n or n.startswith("head.") for n in names)
        trace = AdversarialTrace()
        adversarial_loss(model, task.train.inputs(slice(0, 4)), task.train.y[:4], 2, 0.01, 0.0, 1.5,
                         trace=trace).backward()
        assert len(trace.perturbed_losses) == 2


def test_visualbert_loads_a_checkpoint_folder_into_the_compact_vocabulary(tmp_path):
    from transformers import VisualBertConfig, VisualBertModel

    torch.manual_seed(0)
    full = VisualBertModel(VisualBertConfig(**TINY_BERT, vocab_size=30522, visual_embedding_dim=192))
    full.save_pretrained(tmp_path)
    model = build_model("visualbert", 2, {"path": str(tmp_path), "tokenizer": minilm_path()}, head="answer")
    tok = tokenizer_for(minilm_path())
    assert torch.equal(model.backbone.word_embeddings.weight, full.embeddings.word_embeddings.weight[tok.compact_ids])
    layer = "encoder.layer.1.output.dense.weight"
    assert torch.equal(dict(model.backbone.model.named_parameters())[layer], dict(full.named_parameters())[layer])


@pytest.mark.parametrize("options,match", [({"features": "boxes"}, "features"),
                                           ({"features": "patches", "patch": 5}, "patch"),
                                           ({"n_train": 0}, r"n_train of task .vl_vqa. must be in \[1, inf\], got 0")])
def test_bad_vl_task_options_are_clear_errors(options, match):
    from ticketlab.errors import TicketlabError

    with pytest.raises(TicketlabError, match=match):
        build_task("vl_vqa", {**SIZES, **options})


def test_retrieval_with_a_single_caption_is_an_error_not_an_endless_search():
    with pytest.raises(DataError, match="two different captions"):
        build_task("vl_retrieval", {**SIZES, "n_train": 1})
