"""Zoo models for vectors and sequences: MLP, ViT-tiny (nn.MultiheadAttention), BERT-like encoder, LSTM."""
from __future__ import annotations

import torch
from torch import nn

from . import seeded_randn, seeded_tokens, zoo_model


@zoo_model("mlp", lambda: seeded_randn(4, 20), tags=("plain", "linear"))
def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 5)
    )


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViTTiny(nn.Module):
    """4x4 patch-embedding conv, a learned cls token and position embedding, two pre-norm blocks, cls head."""

    def __init__(self, image: int = 16, patch: int = 4, dim: int = 16, heads: int = 2, depth: int = 2, num_classes: int = 5):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.size(0), -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


@zoo_model("vit_tiny", lambda: seeded_randn(2, 3, 16, 16), tags=("attention", "layernorm"))
def vit_tiny() -> nn.Module:
    return ViTTiny()


class SelfAttention(nn.Module):
    """Separate q/k/v/out Linears; ``num_heads`` and ``head_dim`` are attributes so a pruner can shrink them."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def heads(self, t):
        return t.view(t.size(0), t.size(1), self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        b, t = x.size(0), x.size(1)
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        ctx = (weights @ v).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int):
        super().__init__()
        self.attention = SelfAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.ffn(x))


class TinyBert(nn.Module):
    """Token + position embeddings, post-norm encoder layers, first-token classifier. Input: LongTensor (N, T)."""

    def __init__(self, vocab: int = 50, max_len: int = 16, dim: int = 16, num_heads: int = 4, depth: int = 2, num_classes: int = 3):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.embed_norm = nn.LayerNorm(dim)
        self.layers = nn.Sequential(*[EncoderLayer(dim, num_heads, 2 * dim) for _ in range(depth)])
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, ids):
        pos = torch.arange(ids.size(1), device=ids.device).unsqueeze(0)  # traced as a call, not a constant
        h = self.layers(self.embed_norm(self.tokens(ids) + self.positions(pos)))
        return self.classifier(self.pooler(h[:, 0]))


@zoo_model("bert_like", lambda: seeded_tokens(2, 12, vocab=50), tags=("attention", "layernorm", "embedding"))
def bert_like() -> nn.Module:
    return TinyBert()


class LSTMClassifier(nn.Module):
    """nn.LSTM feature extractor (kept whole) and a prunable two-layer Linear head on the last step."""

    def __init__(self, features: int = 8, hidden: int = 16, num_classes: int = 4):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, 24), nn.ReLU(), nn.Linear(24, num_classes))

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


@zoo_model("lstm", lambda: seeded_randn(2, 10, 8), tags=("recurrent", "sequence"))
def lstm() -> nn.Module:
    return LSTMClassifier()
