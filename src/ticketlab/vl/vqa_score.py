"""The official VQA score (GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``) and the
``vqa_score`` metric.

As the official code does it, a prediction is normalised (``processPunctuation`` then ``processDigitArticle``) and
the annotators' answers are left as given, except that when they disagree (more than one distinct answer) they get
``processPunctuation`` only. The released VQA annotations are already normalised, so give answers as released:
raw answers that all annotators agree on are compared unnormalised, just as in the official code. A question's
score is the mean, over the leave-one-annotator-out subsets, of ``min(1, #answers in the subset equal to the
prediction / 3)``.

A split scored by ``vqa_score`` carries a sparse per-question table (the classes that earn credit and their
scores) as two extra input keys that models ignore, so no dense [questions × answers] table is ever held.
"""

from __future__ import annotations

import re
from collections import Counter

import torch
from torch import nn

from ticketlab.data.base import Split
from ticketlab.errors import DataError
from ticketlab.metrics import METRICS
from ticketlab.vl.metrics import majority_chance, scored_predictions

ANSWER_IDS, ANSWER_SCORES = "vqa_answer_ids", "vqa_answer_scores"  # [N, K] class id (-1: padding), [N, K] score

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
              "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
# The official pattern: ``(?!<=\d)`` is a (mistyped) look-ahead, so every period not followed by a digit goes.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!")


def process_punctuation(text: str) -> str:
    """``processPunctuation``: a mark beside a space, or any mark in text with a digit-comma-digit, is deleted;
    otherwise it becomes a space. Then periods not followed by a digit are deleted."""
    out = text
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # the official call passes re.UNICODE (32) as sub's count: at most 32 periods are stripped
    return PERIOD_STRIP.sub("", out, count=re.UNICODE)


def process_digit_article(text: str) -> str:
    """``processDigitArticle``: lower-case, number words to digits, articles dropped, contractions restored."""
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalise_answer(answer: str) -> str:
    """A predicted answer as the official evaluation compares it (newlines/tabs to spaces, stripped, punctuation,
    digits, articles)."""
    return process_digit_article(process_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


def _credit(answers: list[str]) -> dict[str, float]:
    """The score of every (normalised) prediction that earns credit on one question: an answer given ``m`` times by
    ``n`` annotators scores ``(m·min(1, (m-1)/3) + (n-m)·min(1, m/3)) / n`` — the leave-one-out mean in closed form
    (the left-out annotator is one of the ``m`` in ``m`` subsets, another one in the rest)."""
    if not answers:
        raise DataError("a VQA question has no annotator answers; give each question its answers list")
    if len(set(answers)) > 1:
        answers = [process_punctuation(a) for a in answers]
    n = len(answers)
    return {a: (m * min(1.0, (m - 1) / 3) + (n - m) * min(1.0, m / 3)) / n for a, m in Counter(answers).items()}


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The official VQA accuracy of one predicted answer against the annotators' answers (normally 10)."""
    return _credit(list(answers)).get(normalise_answer(prediction), 0.0)


def answer_targets(answers_per_question: list[list[str]], class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per question, the classes that earn credit and their scores: ids ``[N, K]`` (-1 padding) and scores ``[N, K]``,
    ``K`` the most classes any question credits (at most the number of annotators, more only where several class
    names normalise alike)."""
    by_answer: dict[str, list[int]] = {}
    for c, name in enumerate(class_names):
        by_answer.setdefault(normalise_answer(name), []).append(c)
    rows = [[(c, s) for a, s in _credit(list(answers)).items() if s > 0 for c in by_answer.get(a, [])]
            for answers in answers_per_question]
    width = max([len(r) for r in rows] + [1])
    ids, scores = torch.full((len(rows), width), -1), torch.zeros(len(rows), width)
    for q, row in enumerate(rows):
        for k, (c, s) in enumerate(row):
            ids[q, k], scores[q, k] = c, s
    return ids, scores


def answer_scores(answers_per_question: list[list[str]], class_names: list[str]) -> torch.Tensor:
    """The VQA score ``[N, C]`` of answering class c to question n (a soft-target table: argmax + gather scores)."""
    ids, scores = answer_targets(answers_per_question, class_names)
    table = torch.zeros(len(ids), len(class_names) + 1)  # the last column takes the padding
    table.scatter_(1, torch.where(ids < 0, len(class_names), ids), scores)
    return table[:, :-1]


def credited(pred: torch.Tensor, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The score of each predicted class from a sparse table (0 where the class earns no credit)."""
    return ((ids == pred[:, None]) * scores).sum(1)


@METRICS.register("vqa_score")
def vqa_score_metric(model: nn.Module, split: Split) -> dict[str, float]:
    """VQA score (official vqaEval): the mean min(1, matches/3) of the arg-max answer over leave-one-out annotators."""
    pred = scored_predictions(model, split, ANSWER_IDS, "vqa_score", "the annotators' answers: build the task with "
                              "vl_disk from samples with an answers list")
    per_question = credited(pred, split.x[ANSWER_IDS].cpu(), split.x[ANSWER_SCORES].cpu())
    return {"score": float(per_question.mean()) if len(pred) else 0.0,
            "accuracy": float((pred == split.y.cpu()).float().mean()) if len(pred) else 0.0}


vqa_score_metric.chance = majority_chance  # type: ignore[attr-defined]
