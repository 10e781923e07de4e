"""Tiny random models that answer in the robot's action language, for fast loop tests.

A random model's text is almost never valid JSON in a real tokenizer. Here the tokenizer is a
real `tokenizers` word-level tokenizer (with a chat template, loaded through transformers) whose
vocabulary holds whole action objects as single tokens — valid ones and invalid ones — beside the
words and digits of the observations. So the tiny target's greedy continuation, decoded, is a
sequence of such pieces: the first object in it is the decision, sometimes invalid (a re-ask),
and it changes when the observation's numbers change. Every mode must then produce the same
decisions, because each must produce the target's own greedy tokens.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from edgespec.robot.actions import ACTION_FORMAT
from edgespec.robot.observation import SYSTEM_PROMPT

VALID_ACTIONS = [
    *[f'{{"action":"turn","degrees":{d}}}' for d in (-90, -60, -45, -30, -15, 15, 30, 45, 60, 90)],
    *[f'{{"action":"walk","metres":{m}}}' for m in (0.3, 0.5, 0.8, 1.0, 1.5)],
    '{"action":"stop"}',
]
INVALID_ACTIONS = [
    '{"action":"fly"}',
    '{"action":"walk","metres":9}',
    '{"action":"turn"}',
    '{"action":"turn","degrees":"left"}',
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
SAMPLE_OBSERVATION = (
    "Step 1 of 12. Last action: none yet. The robot senses: - red box: 2.7 m away, 28 degrees to your left "
    "(to face it: turn) straight ahead (to reach it: walk) - blue ball: - green cone: - wall straight ahead: "
    'right Your next action for the task "walk to the red box": turn walk stop the robot '
    "walked turned stood still (it did not finish in time) and bumped into reached the goal fell "
    "That is not a valid action: <system> <user> <assistant>"
)


def _pieces(text: str) -> list[str]:
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(text)]


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)])


@lru_cache(maxsize=None)
def action_tokenizer() -> PreTrainedTokenizerFast:
    words = sorted(set(_pieces(SYSTEM_PROMPT + " " + ACTION_FORMAT + " " + SAMPLE_OBSERVATION)) | set("0123456789+-."))
    vocab_list = ["[UNK]", "[PAD]", *VALID_ACTIONS, *INVALID_ACTIONS, *[w for w in words if w not in VALID_ACTIONS]]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = _pre_tokenizer()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def action_model(seed: int = 0, layers: int = 4, hidden: int = 64) -> Qwen2ForCausalLM:
    """A tiny random Qwen2 over the action vocabulary; the embedding of action tokens is boosted
    so greedy continuations are mostly action objects (the test then sees motions), not words."""
    tokenizer = action_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
        actions = [tokenizer.convert_tokens_to_ids(a) for a in VALID_ACTIONS + INVALID_ACTIONS]
        model.lm_head.weight[actions] *= 1.6
    return model.float().eval().requires_grad_(False)


def layer_skip(model: Qwen2ForCausalLM, keep: int) -> Qwen2ForCausalLM:
    model.model.layers = model.model.layers[:keep]
    model.config.num_hidden_layers = keep
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:keep]
    return model


def save_model_dir(model: Qwen2ForCausalLM, directory: Path) -> Path:
    """A Hugging Face model directory (config, weights, tokenizer) the CLI loads like any model."""
    model.save_pretrained(directory)
    action_tokenizer().save_pretrained(directory)
    return directory
