"""Character vocabulary: frequency-ordered, with `<unk>` at index 0."""

from __future__ import annotations

from collections import Counter

UNK = "<unk>"


class Vocab:
    """Maps characters to ids and back; id 0 is `<unk>`, then characters by falling frequency."""

    def __init__(self, chars: list[str]):
        self.itos = [UNK] + [c for c in chars if c != UNK]
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def build(cls, text: str) -> "Vocab":
        counts = Counter(text)
        return cls(sorted(counts, key=lambda c: (-counts[c], c)))

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` that are not in the vocabulary, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.stoi))

    def encode(self, text: str):
        """Token ids of a short text (a prefix, a test string) as an int64 tensor; corpora go through tokencache.py."""
        import torch  # here, not at the top: the token cache (tokencache.py) needs vocabularies but not torch

        return torch.tensor([self.stoi.get(c, 0) for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] if int(i) else "\ufffd" for i in ids)

    def to_list(self) -> list[str]:
        """Serialisable form (what checkpoints store)."""
        return list(self.itos[1:])

    @classmethod
    def from_list(cls, chars: list[str]) -> "Vocab":
        return cls(list(chars))
