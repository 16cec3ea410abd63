"""phi-1's quality classifier: a random forest on mean-pooled final hidden states of a code model.

phi-1 (Gunasekar et al. 2023, section 2.1) labelled a sample of files for "educational value", embedded every file
with a pretrained code model and trained a random forest on the embeddings to filter the rest. Here the
embedding model is one of our checkpoints (``tools/...`` training output, loaded with
``megatron_code.inference.load_for_inference``) or a local Hugging Face model directory (``transformers``
``AutoModel``, local files only); the forest is scikit-learn's ``RandomForestClassifier``.

Labels files are JSONL ``{"text": ..., "label": 0|1}`` (1 = keep). The saved bundle (joblib) holds the forest and
the embedding settings, so the pipeline step needs only its path.
"""

from __future__ import annotations

import json
import os

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from ..errors import UserError


class ClassifierError(UserError, ValueError):
    pass


def _is_our_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "latest")) or any(n.startswith("iter_") for n in os.listdir(path))


class Embedder:
    """Mean-pooled final hidden states of the first ``max_tokens`` tokens of each text."""

    def __init__(self, model_path: str, max_tokens: int = 256, batch_size: int = 8):
        import torch

        if not os.path.isdir(model_path):
            raise ClassifierError(f"embedding model {model_path}: not a directory (give one of our checkpoint "
                                  f"directories or a local Hugging Face model directory)")
        self.max_tokens, self.batch_size = max_tokens, batch_size
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        if _is_our_checkpoint(model_path):
            from megatron_code.inference.generate import load_for_inference

            self.model, self.tokenizer = load_for_inference(model_path)
            self.kind = "megatron_code"
            self.max_tokens = min(max_tokens, self.model.cfg.max_position_embeddings) \
                if getattr(self.model, "cfg", None) is not None else max_tokens
        else:
            from transformers import AutoModel, AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
                self.model = AutoModel.from_pretrained(model_path, local_files_only=True).eval()
            except (OSError, ValueError) as exc:
                raise ClassifierError(f"{model_path}: neither one of our checkpoints nor a loadable Hugging Face "
                                      f"model directory ({exc})") from None
            self.kind = "hf"

    def _ids(self, text: str) -> list[int]:
        if self.kind == "hf":
            ids = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"]
        else:
            ids = self.tokenizer.encode(text)[:self.max_tokens]
        return ids or [0]

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                ids = [self._ids(t) for t in texts[i:i + self.batch_size]]
                width = max(map(len, ids))
                batch = torch.zeros((len(ids), width), dtype=torch.long)
                valid = torch.zeros((len(ids), width), dtype=torch.bool)
                for r, x in enumerate(ids):
                    batch[r, :len(x)] = torch.tensor(x)
                    valid[r, :len(x)] = True
                if self.kind == "hf":
                    hidden = self.model(input_ids=batch, attention_mask=valid.long()).last_hidden_state
                else:
                    # causal attention: right padding cannot change the real positions' states
                    _, hidden = self.model(batch, return_hidden=True)
                m = valid.unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * m).sum(1) / m.sum(1)).float().numpy())
        return np.concatenate(out, axis=0)


def read_labels(path: str) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                text, label = r["text"], r["label"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ClassifierError(f"{path}:{lineno}: expected a JSON object with 'text' and 'label'") from None
            if label not in (0, 1, True, False) or not isinstance(text, str):
                raise ClassifierError(f"{path}:{lineno}: label must be 0 or 1 (1 = keep) and text a string")
            texts.append(text)
            labels.append(int(label))
    if len(set(labels)) != 2:
        raise ClassifierError(f"{path}: needs examples of both labels (0 and 1), found {sorted(set(labels))}")
    return texts, np.asarray(labels)


def train(labels_path: str, model_path: str, out_path: str, test_fraction: float = 0.25, seed: int = 0,
          n_estimators: int = 200, max_tokens: int = 256) -> dict:
    """Embed, split (stratified, seeded), fit the forest, report held-out accuracy, save the bundle."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    texts, y = read_labels(labels_path)
    emb = Embedder(model_path, max_tokens=max_tokens)
    x = emb.embed(texts)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    forest = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1).fit(x_tr, y_tr)
    acc = float((forest.predict(x_te) == y_te).mean())
    joblib.dump({"forest": forest, "embedding_model": os.path.abspath(model_path), "max_tokens": emb.max_tokens},
                out_path)
    return {"train": int(len(y_tr)), "held_out": int(len(y_te)), "held_out_accuracy": acc,
            "model": os.path.abspath(out_path)}


class QualityClassifierFilter(BaseFilter):
    """Keep documents whose forest probability of label 1 is at least ``threshold`` (drop reason
    ``low_quality``); the score is kept in ``metadata["quality_score"]``."""

    name = "quality classifier"

    def __init__(self, model: str | None = None, threshold: float = 0.5, batch_size: int = 16):
        super().__init__(batch_size=batch_size)
        if not model:
            raise ClassifierError("the classifier step needs model: PATH (train one with "
                                  "tools/train_quality_classifier.py; --set classifier.model=PATH)")
        if not os.path.isfile(model):
            raise ClassifierError(f"classifier model {model}: no such file (train one with "
                                  f"tools/train_quality_classifier.py)")
        self.model_path, self.threshold = model, threshold
        self._bundle = self._embedder = None

    def filter(self, doc: Document):
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]):
        if self._bundle is None:
            import joblib

            self._bundle = joblib.load(self.model_path)
            self._embedder = Embedder(self._bundle["embedding_model"], max_tokens=self._bundle["max_tokens"])
        scores = self._bundle["forest"].predict_proba(self._embedder.embed([d.text for d in batch]))[:, 1]
        out = []
        for d, s in zip(batch, scores):
            d.metadata["quality_score"] = float(s)
            out.append(True if s >= self.threshold else (False, "low_quality"))
        return out
