"""The demo LM's tokenizer: bytes. Token ``b`` is byte ``b`` (0-255); then BOS and EOS. Nothing to train."""
from __future__ import annotations

import torch

BOS, EOS = 256, 257
VOCAB_SIZE = 258


class ByteTokenizer:
    """UTF-8 bytes as token ids, with a BOS/EOS pair; ``decode`` drops specials and repairs broken UTF-8."""

    vocab_size = VOCAB_SIZE
    bos_token_id = BOS
    eos_token_id = EOS

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def __call__(self, text: str, *, bos: bool = True) -> torch.Tensor:
        """``(1, T)`` input ids for a model call."""
        return torch.tensor([self.encode(text, bos=bos)], dtype=torch.long)

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={VOCAB_SIZE})"


tokenizer = ByteTokenizer()
