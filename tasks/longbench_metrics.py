"""LongBench's official metric per dataset (Bai et al. 2023, the ``metrics.py``/``eval.py`` of THUDM/LongBench).

Each scorer maps (prediction, one ground truth, all_classes) to [0, 1]; ``score_example`` takes the
best over the ground truths, after keeping only the first line of the prediction for the few-shot
datasets (trec, triviaqa, samsum, lsht), and a dataset's score is 100 x the mean, as LongBench reports.

- QA F1: token-level F1 after SQuAD normalisation (lower case, no punctuation, no articles);
  Chinese: F1 over jieba words with Chinese and ASCII punctuation removed.
- ROUGE-L: the ``rouge`` package's summary-level ROUGE-L F (what LongBench calls); Chinese: on jieba words.
- classification: 1/m when the true class is among the m class names found in the prediction
  (a class found only as part of the true class's own name does not count, with the official loop's
  skip-after-removal kept); else 0. (The official fallback to the most similar class is unreachable
  code there, ``if em_match_list != 0``, and is left out here.)
- retrieval: the share of the numbers in the prediction that equal the true paragraph's number.
- count: the share of the numbers in the prediction that equal the true count.
- code edit similarity: fuzzywuzzy's ``fuzz.ratio`` / 100 between the true line and the first
  predicted line that is not a comment or a code fence.
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from collections.abc import Callable

FIRST_LINE_ONLY = ("trec", "triviaqa", "samsum", "lsht")
ZH_PUNCTUATION = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】"
                  "〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, drop articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def normalize_zh_answer(s: str) -> str:
    drop = set(string.punctuation + ZH_PUNCTUATION)
    return "".join("".join(ch for ch in s.lower() if ch not in drop).split())


def _jieba_words(text: str) -> list[str]:
    import jieba

    jieba.setLogLevel(60)  # silence the dictionary-loading chatter
    return list(jieba.cut(text, cut_all=False))


def token_f1(prediction: list[str], truth: list[str]) -> float:
    same = sum((Counter(prediction) & Counter(truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, truth: str, **_) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(truth).split())


def qa_f1_zh(prediction: str, truth: str, **_) -> float:
    words = [[w for w in (normalize_zh_answer(t) for t in _jieba_words(x)) if w] for x in (prediction, truth)]
    return token_f1(words[0], words[1])


def rouge_l(prediction: str, truth: str, **_) -> float:
    from rouge import Rouge

    try:
        return float(Rouge().get_scores([prediction], [truth], avg=True)["rouge-l"]["f"])
    except (ValueError, RecursionError):  # empty hypothesis or reference (the official code scores these 0)
        return 0.0


def rouge_l_zh(prediction: str, truth: str, **_) -> float:
    return rouge_l(" ".join(_jieba_words(prediction)), " ".join(_jieba_words(truth)))


def classification(prediction: str, truth: str, all_classes: list[str] | None = None, **_) -> float:
    found = [c for c in (all_classes or []) if c in prediction]
    i = 0  # drop classes that are only part of the true class's name, stepping like the official loop,
    while i < len(found):  # which removes from the list it iterates (the element after a removal is skipped)
        if found[i] in truth and found[i] != truth:
            found.pop(i)
        i += 1
    return 1.0 / len(found) if truth in found else 0.0


def _number_share(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def retrieval(prediction: str, truth: str, **_) -> float:
    return _number_share(prediction, re.findall(r"Paragraph (\d+)", truth)[0])


def retrieval_zh(prediction: str, truth: str, **_) -> float:
    return _number_share(prediction, re.findall(r"段落(\d+)", truth)[0])


def count(prediction: str, truth: str, **_) -> float:
    return _number_share(prediction, str(truth))


def first_code_line(prediction: str) -> str:
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_similarity(prediction: str, truth: str, **_) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "slow pure-python SequenceMatcher": the official setting
        from fuzzywuzzy import fuzz
    return fuzz.ratio(first_code_line(prediction), truth) / 100


METRICS: dict[str, Callable[..., float]] = {
    "narrativeqa": qa_f1, "qasper": qa_f1, "multifieldqa_en": qa_f1, "multifieldqa_zh": qa_f1_zh,
    "hotpotqa": qa_f1, "2wikimqa": qa_f1, "musique": qa_f1, "dureader": rouge_l_zh, "gov_report": rouge_l,
    "qmsum": rouge_l, "multi_news": rouge_l, "vcsum": rouge_l_zh, "trec": classification, "triviaqa": qa_f1,
    "samsum": rouge_l, "lsht": classification, "passage_retrieval_en": retrieval, "passage_count": count,
    "passage_retrieval_zh": retrieval_zh, "lcc": code_similarity, "repobench-p": code_similarity,
}


def score_example(dataset: str, prediction: str, answers: list[str], all_classes: list[str] | None) -> float:
    """One example's score in [0, 1]: the best over its ground truths."""
    if dataset in FIRST_LINE_ONLY:
        prediction = prediction.lstrip("\n").split("\n")[0]
    return max((METRICS[dataset](prediction, truth, all_classes=all_classes) for truth in answers), default=0.0)
