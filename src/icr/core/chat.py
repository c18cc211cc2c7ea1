"""Rendering prompts and exchanges with the tokenizer's own chat template.

Prompts are always rendered by the tokenizer's chat template. A tokenizer without one gets
`PLAIN_CHAT_TEMPLATE`, set on the tokenizer so that training (TRL), generation and scoring all see
the same text.
"""

from __future__ import annotations

import logging

from icr.core.records import pair_messages

log = logging.getLogger(__name__)

PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer) -> None:
    """Give a template-less tokenizer the documented plain template; make sure it can pad."""
    if not getattr(tokenizer, "chat_template", None):
        log.warning("tokenizer has no chat template: using the plain '### Instruction/### Response' template")
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def user_messages(instruction: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": instruction}]


def _chat_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return list(out["input_ids"])


def prompt_ids(tokenizer, instruction: str) -> list[int]:
    return _chat_ids(tokenizer, user_messages(instruction), add_generation_prompt=True)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_conversation(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) exactly as TRL's DPOTrainer tokenizes one side of a
    conversational pair: the rendered prompt + completion minus its common prefix with the rendered
    prompt (generation prompt added), so the completion includes the template's end-of-turn token(s)."""
    p_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full = _chat_ids(tokenizer, prompt + completion, add_generation_prompt=False)
    cut = common_prefix_length(p_ids, full)
    return p_ids[:cut], full[cut:]


def tokenize_exchange(tokenizer, instruction: str, response: str) -> tuple[list[int], list[int]]:
    """`tokenize_conversation` of one user turn and one assistant turn. Scoring (`reward.score_tokens:
    all`) and training use it, so the implicit reward is computed on exactly what DPO optimises."""
    return tokenize_conversation(tokenizer, user_messages(instruction), [{"role": "assistant", "content": response}])


def pair_tokens(tokenizer, pair: dict, max_length: int):
    """The one tokenization of a preference pair (TRL conversational row: prompt, chosen, rejected as
    messages or strings), used for training, reference log-probs and length grouping:
    (shared prompt ids, chosen ids, rejected ids, (chosen start, rejected start)), as TRL builds
    them, after its keep_start truncation to `max_length`. The starts count the prompt tokens that
    merged into a side's completion (`tokenize_conversation`), which TRL's completion mask covers."""
    prompt, chosen, rejected = pair_messages(pair)
    p_c, chosen_ids = tokenize_conversation(tokenizer, prompt, chosen)
    p_r, rejected_ids = tokenize_conversation(tokenizer, prompt, rejected)
    shared = min(len(p_c), len(p_r))
    room = max_length - shared
    return (
        p_c[:shared],
        (p_c[shared:] + chosen_ids)[:room],
        (p_r[shared:] + rejected_ids)[:room],
        (len(p_c) - shared, len(p_r) - shared),
    )


def end_of_turn_text(tokenizer, instruction: str, response: str) -> str:
    """The special token the chat template writes right after an assistant response (ChatML's
    `<|im_end|>`, Llama-3's `<|eot_id|>`); the tokenizer's EOS token if the template writes none."""
    messages = user_messages(instruction) + [{"role": "assistant", "content": response}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    after = rendered[rendered.rfind(response) + len(response) :]
    specials = sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len, reverse=True)
    return next((t for t in specials if t and after.startswith(t)), tokenizer.eos_token or "")


def released_exchange(tokenizer, instruction: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) as the released scorer cuts them (utils/compute_reward_score.py,
    prepare_data): the rendered prompt + response + end-of-turn token tokenized as ONE string, cut at
    the position where the prompt alone ends. The completion ends with the end-of-turn token:
    nothing the template writes after it (ChatML's newline) is there."""
    prompt_text = tokenizer.apply_chat_template(user_messages(instruction), tokenize=False, add_generation_prompt=True)
    eot = end_of_turn_text(tokenizer, instruction, response)
    full = tokenizer(prompt_text + response + eot, add_special_tokens=False)["input_ids"]
    cut = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    return list(full[:cut]), list(full[cut:])


def end_of_turn_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an assistant turn: the generation config's EOS ids plus the tokenizer's."""
    ids: list[int] = []
    if model is not None and getattr(model, "generation_config", None) is not None:
        eos = model.generation_config.eos_token_id
        ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))
