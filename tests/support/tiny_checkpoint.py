"""A tiny model saved as a Hugging Face directory (weights + a word-level tokenizer), so the real
`edgespec serve --target DIR` command can load it in a child process."""

from __future__ import annotations

from pathlib import Path

from tests.support.tiny_models import VOCAB, tiny_model


def save_tiny_checkpoint(directory: Path, family: str = "qwen2", seed: int = 0) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tiny_model(family, seed=seed).save_pretrained(directory)
    words = Tokenizer(WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0").save_pretrained(directory)
    return directory
