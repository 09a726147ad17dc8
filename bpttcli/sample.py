"""Text generation from a trained checkpoint, streamed character by character.

The prefix goes through the run's own preprocessing and warms up the hidden state. An empty
prefix warms it up on the corpus's most frequent character (the vocabulary is ordered by
frequency: a space for prose), which is not printed, so a sample starts the way a new word does.
`<unk>` is never generated.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterator, TextIO

import torch

from .choices import Unknown
from .config import Device, check_seed
from .corpus import preprocess, read_text
from .errors import ConfigError, shown
from .model import CharRNN
from .runtime import resolve_device
from .builders import load_trained
from .vocab import Vocab

MOST_FREQUENT = 1  # vocabulary ids follow <unk> in order of falling frequency


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
                 greedy: bool = False, generator: torch.Generator | None = None, top_p: float = 1.0) -> Iterator[str]:
        """Warm up on `ids` (or the most frequent character), then yield `length` sampled characters."""
        device = self.model.head.weight.device
        x = (ids if len(ids) else torch.tensor([MOST_FREQUENT])).to(device)[:, None]
        state = self.model.init_state(1)
        for _ in range(length):
            logits, state = self.model(x, state)
            token = pick(logits[-1, 0], temperature, top_k, greedy, generator, top_p)
            yield self.vocab.itos[token]
            x = torch.tensor([[token]], device=device)

    def complete(self, prefix: str = "", length: int = 200, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, greedy: bool = False, seed: int | None = None,
                 unknown: Unknown = Unknown.error) -> str:
        """The preprocessed prefix followed by `length` sampled characters, as one string."""
        check_options(length, temperature, top_k, 1, top_p)
        ids = self.encode(prefix, unknown)
        chars = self.generate(ids, length, temperature, top_k, greedy, seeded(seed), top_p)
        return self.vocab.decode(ids) + "".join(chars)


def pick(logits: torch.Tensor, temperature: float, top_k: int, greedy: bool, generator: torch.Generator | None,
         top_p: float = 1.0) -> int:
    """The next token: the argmax, or a draw from softmax(logits / T) over the top k characters and then the
    smallest set of them whose probabilities sum to at least `top_p` (nucleus sampling); never <unk>."""
    logits = logits.detach().float().cpu().clone()  # a copy: the caller's logits stay as they were
    logits[0] = -torch.inf
    if greedy:
        return int(logits.argmax())
    if top_k:
        kth = logits.topk(min(top_k, len(logits) - 1)).values[-1]
        logits[logits < kth] = -torch.inf
    probs = torch.softmax(logits / temperature, dim=0)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs >= top_p  # the mass before them already reaches top_p
        probs[order[outside]] = 0.0
    return int(torch.multinomial(probs, 1, generator=generator))


def seeded(seed: int | None) -> torch.Generator:
    """A generator seeded with `seed`, or with fresh entropy (a different sample each time) when None."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def read_prefix(prefix: str, prefix_file: Path | None) -> str:
    """The prefix: the text given, or the whole of a UTF-8 file (nanoGPT's FILE: start)."""
    if prefix_file is None:
        return prefix
    if prefix:
        raise ConfigError("pass --prefix or --prefix-file, not both")
    return read_text(prefix_file)


TEMPERATURES = (1e-4, 1e4)  # beyond these, softmax(logits / T) over- or underflows in float32


def check_options(length: int, temperature: float, top_k: int, num_samples: int, top_p: float = 1.0,
                  seed: int | None = None) -> None:
    low, high = TEMPERATURES
    if not (math.isfinite(temperature) and low <= temperature <= high):
        raise ConfigError(f"--temperature must be a number in [{low:g}, {high:g}] (got {temperature:g}); "
                          f"for the likeliest character use --greedy")
    if seed is not None:
        check_seed(seed, "--seed")
    if top_k < 0:
        raise ConfigError(f"--top-k must be >= 0, 0 meaning no limit (got {top_k})")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], 1 meaning no limit (got {top_p:g})")
    if length < 0 or num_samples < 1:
        raise ConfigError(f"--length must be >= 0 and --num-samples >= 1 (got {length} and {num_samples})")


def sample(
    target: Path, prefix: str = "", length: int = 200, temperature: float = 1.0, top_k: int = 0,
    greedy: bool = False, num_samples: int = 1, seed: int | None = None, device: Device | str = Device.auto,
    last: bool = False, unknown: Unknown = Unknown.error, out: TextIO = sys.stdout, top_p: float = 1.0,
    prefix_file: Path | None = None,
) -> list[str]:
    """Write `num_samples` samples to `out` as they are generated (each after its preprocessed prefix); return them."""
    check_options(length, temperature, top_k, num_samples, top_p, seed)
    prefix = read_prefix(prefix, prefix_file)
    sampler = Sampler.load(target, last, device)
    ids = sampler.encode(prefix, unknown)
    generator = seeded(seed)
    texts = []
    for i in range(num_samples):
        text = sampler.vocab.decode(ids)
        out.write(("\n" if i else "") + text)
        for char in sampler.generate(ids, length, temperature, top_k, greedy, generator, top_p):
            out.write(char)
            out.flush()
            text += char
        out.write("\n")
        texts.append(text)
    return texts
