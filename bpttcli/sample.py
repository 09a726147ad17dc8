"""Text generation from a trained checkpoint, streamed character by character.

The prefix goes through the run's own preprocessing and warms up the hidden state. An empty
prefix warms it up on the corpus's most frequent character (the vocabulary is ordered by
frequency: a space for prose), which is not printed, so a sample starts the way a new word does.
`<unk>` is never generated.
"""

from __future__ import annotations

import enum
import math
import sys
from pathlib import Path
from typing import Iterator, TextIO

import torch

from .config import Device, check_seed
from .corpus import preprocess
from .errors import ConfigError, shown
from .model import CharRNN
from .runtime import resolve_device
from .builders import load_trained
from .vocab import Vocab

MOST_FREQUENT = 1  # vocabulary ids follow <unk> in order of falling frequency


class Unknown(str, enum.Enum):
    """What to do with prefix characters outside the vocabulary."""

    error = "error"  # refuse the prefix
    skip = "skip"  # drop them
    unk = "unk"  # feed <unk>


class Sampler:
    """A trained model with its vocabulary and preprocessing, ready to generate."""

    def __init__(self, model: CharRNN, vocab: Vocab, mode):
        self.model, self.vocab, self.mode = model.eval(), vocab, mode

    @classmethod
    def load(cls, target: Path, last: bool = False, device: Device | str = Device.auto) -> "Sampler":
        """A run directory (its best.pt, or last.pt with `last`) or a checkpoint file, on `device`."""
        config, model, vocab, _ = load_trained(target, "last" if last else "best")
        return cls(model.to(resolve_device(device)), vocab, config.data.preprocess)

    def encode(self, prefix: str, unknown: Unknown = Unknown.error) -> torch.Tensor:
        """The prefix, preprocessed like the corpus, as token ids; characters outside the vocabulary per `unknown`."""
        text = preprocess(prefix, self.mode)
        bad = self.vocab.unknown(text)
        if bad and Unknown(unknown) is Unknown.error:
            raise ConfigError(
                f"the prefix has characters outside the model's vocabulary: {shown(bad)}; "
                f"remove them or pass --unknown skip (drop them) or --unknown unk"
            )
        if Unknown(unknown) is Unknown.skip:
            text = "".join(c for c in text if c in self.vocab.stoi)
        return self.vocab.encode(text)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, length: int, temperature: float = 1.0, top_k: int = 0,
                 greedy: bool = False, generator: torch.Generator | None = None) -> Iterator[str]:
        """Warm up on `ids` (or the most frequent character), then yield `length` sampled characters."""
        device = self.model.head.weight.device
        x = (ids if len(ids) else torch.tensor([MOST_FREQUENT])).to(device)[:, None]
        state = self.model.init_state(1)
        for _ in range(length):
            logits, state = self.model(x, state)
            token = pick(logits[-1, 0], temperature, top_k, greedy, generator)
            yield self.vocab.itos[token]
            x = torch.tensor([[token]], device=device)


def pick(logits: torch.Tensor, temperature: float, top_k: int, greedy: bool, generator: torch.Generator | None) -> int:
    """The next token: the argmax, or a draw from softmax(logits / T) over the top k (never <unk>)."""
    logits = logits.detach().float().cpu()
    logits[0] = -torch.inf
    if greedy:
        return int(logits.argmax())
    if top_k:
        kth = logits.topk(min(top_k, len(logits) - 1)).values[-1]
        logits[logits < kth] = -torch.inf
    probs = torch.softmax(logits / temperature, dim=0)
    return int(torch.multinomial(probs, 1, generator=generator))


TEMPERATURES = (1e-4, 1e4)  # beyond these, softmax(logits / T) over- or underflows in float32


def check_options(length: int, temperature: float, top_k: int, num_samples: int, seed: int | None = None) -> None:
    low, high = TEMPERATURES
    if not (math.isfinite(temperature) and low <= temperature <= high):
        raise ConfigError(f"--temperature must be a number in [{low:g}, {high:g}] (got {temperature:g}); "
                          f"for the likeliest character use --greedy")
    if seed is not None:
        check_seed(seed, "--seed")
    if top_k < 0:
        raise ConfigError(f"--top-k must be >= 0, 0 meaning no limit (got {top_k})")
    if length < 0 or num_samples < 1:
        raise ConfigError(f"--length must be >= 0 and --num-samples >= 1 (got {length} and {num_samples})")


def sample(
    target: Path, prefix: str = "", length: int = 200, temperature: float = 1.0, top_k: int = 0,
    greedy: bool = False, num_samples: int = 1, seed: int | None = None, device: Device | str = Device.auto,
    last: bool = False, unknown: Unknown = Unknown.error, out: TextIO = sys.stdout,
) -> list[str]:
    """Write `num_samples` samples to `out` as they are generated (each after its preprocessed prefix); return them."""
    check_options(length, temperature, top_k, num_samples, seed)
    sampler = Sampler.load(target, last, device)
    ids = sampler.encode(prefix, unknown)
    generator = torch.Generator()
    if seed is None:
        generator.seed()  # fresh entropy: a different sample each time
    else:
        generator.manual_seed(seed)
    texts = []
    for i in range(num_samples):
        text = sampler.vocab.decode(ids)
        out.write(("\n" if i else "") + text)
        for char in sampler.generate(ids, length, temperature, top_k, greedy, generator):
            out.write(char)
            out.flush()
            text += char
        out.write("\n")
        texts.append(text)
    return texts
