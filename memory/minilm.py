"""The bundled all-MiniLM-L6-v2 computed directly: its tokenizer and BERT encoder, mean
pooling and L2 normalization, in plain torch.

Why: ``import sentence_transformers`` costs ~6 CPU-s on this machine (it pulls in the
whole of transformers, scikit-learn and ``torch._dynamo``), and every process that
touches the vector memory (``graph.run``, ``memory.query``, ``graph.steer``, a campaign)
paid it before its first embedding, often more than the work it came to do. This module
needs only ``tokenizers`` and ``safetensors`` (both already installed with
sentence-transformers) and loads in well under a second.

It computes what ``SentenceTransformer(<the bundled path>).encode(texts,
normalize_embeddings=True)`` computes, from the same files: the package's
``modules.json`` pipeline (Transformer -> mean Pooling -> Normalize), the tokenizer's
WordPiece with truncation at ``sentence_bert_config.json``'s ``max_seq_length`` (256
tokens with [CLS] and [SEP]) and padding to the batch's longest text, a post-LN BERT with
GELU (erf) and LayerNorm eps from ``config.json``. tests/test_vectors.py checks the two
against each other on short, long (truncated) and non-ASCII texts (cosine > 0.99999).
``supported(path)`` checks that the files describe exactly that pipeline; the Embedder
uses sentence-transformers for anything else.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

PIPELINE = ["sentence_transformers.models.Transformer",
            "sentence_transformers.models.Pooling",
            "sentence_transformers.models.Normalize"]


def _json(path: Path) -> dict | list:
    return json.loads(path.read_text())


def supported(path: str | Path) -> str | None:
    """None when the model at ``path`` is a BERT encoder with mean pooling and
    normalization that this module computes; otherwise why not."""
    path = Path(path)
    try:
        modules = [m["type"] for m in _json(path / "modules.json")]
        cfg = _json(path / "config.json")
        pooling = _json(path / "1_Pooling" / "config.json")
        _json(path / "sentence_bert_config.json")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable model files ({e})"
    if modules != PIPELINE:
        return f"pipeline {modules} is not Transformer -> Pooling -> Normalize"
    if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu" or \
            cfg.get("position_embedding_type", "absolute") != "absolute":
        return "not a BERT encoder with GELU and absolute positions"
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
    if modes != {"pooling_mode_mean_tokens"}:
        return f"pooling {sorted(modes)} is not mean pooling"
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        return "no model.safetensors or tokenizer.json"
    return None


class MiniLM:
    """``encode(texts)`` -> (n, hidden) float32 tensor, unit rows."""

    def __init__(self, path: str | Path):
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(path)
        cfg = _json(path / "config.json")
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.max_len = min(int(_json(path / "sentence_bert_config.json")["max_seq_length"]),
                           int(cfg["max_position_embeddings"]))
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_padding()  # to the batch's longest text (the file's: 128)
        self.tokenizer.enable_truncation(max_length=self.max_len)
        w = load_file(str(path / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.float() for k, v in w.items()}

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"],
                            self.eps)

    def _lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.bool)
        n, t = ids.shape
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:t]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        d = x.shape[-1]
        bias = torch.zeros(n, 1, 1, t).masked_fill(~mask[:, None, None, :],
                                                   torch.finfo(x.dtype).min)
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._lin(x, f"{p}.attention.self.{m}").view(
                n, t, self.heads, d // self.heads).transpose(1, 2)
                for m in ("query", "key", "value"))
            att = (q @ k.transpose(-1, -2)) * (d // self.heads) ** -0.5 + bias
            y = (att.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d)
            x = self._ln(x + self._lin(y, f"{p}.attention.output.dense"),
                         f"{p}.attention.output.LayerNorm")
            h = F.gelu(self._lin(x, f"{p}.intermediate.dense"))
            x = self._ln(x + self._lin(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        m = mask.unsqueeze(-1).float()
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=-1)
