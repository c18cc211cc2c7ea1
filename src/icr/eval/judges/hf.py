"""`hf` judge: a local Hugging Face causal LM run in-process (batched forward, next-token
log-softmax over the verdict tokens)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from icr.core.models import LoadedModel, fingerprint
from icr.eval.judges.base import PROMPT_VERSION, VERDICTS, JudgeError, Judgement, JudgeRequest, judge_messages

log = logging.getLogger(__name__)


class HFJudge:
    """A local causal LM as judge: next-token log-softmax after the rendered prompt, batched with
    left padding (explicit position ids, so a prompt's result does not depend on its batch)."""

    def __init__(self, lm: LoadedModel, batch_size: int):
        self.lm, self.batch_size = lm, max(1, batch_size)
        tok = lm.tokenizer
        self.verdict_ids = {
            v: sorted({tok.encode(s, add_special_tokens=False)[0] for s in (v, f" {v}")}) for v in VERDICTS
        }
        if set(self.verdict_ids["A"]) & set(self.verdict_ids["B"]):
            raise JudgeError(f"{lm.spec}: the tokenizer does not tell the verdict tokens 'A' and 'B' apart")
        self.fingerprint = fingerprint(lm.path)
        self.judge_id = f"hf:{lm.spec}@{self.fingerprint}"
        self.rule = "logprobs"

    def messages(self, req: JudgeRequest) -> list[dict[str, str]]:
        return judge_messages(req)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "hf",
            "model": self.lm.spec,
            "served_model": f"{self.lm.path}@{self.fingerprint}",
            "rule": self.rule,
            "prompt_version": PROMPT_VERSION,
        }

    def preflight(self) -> str:
        log.info("judge %s (local): log-probabilities of 'A'/'B' (weighted)", self.lm.spec)
        return self.rule

    def _ids(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self.lm.tokenizer
        try:
            out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
        except Exception:  # a template without a system role: fold the system prompt into the user turn
            merged = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}]
            out = tok.apply_chat_template(merged, tokenize=True, add_generation_prompt=True, return_dict=True)
        return list(out["input_ids"])

    def judge_many(self, requests: list[JudgeRequest], on_done: Callable[[int, Judgement], None]) -> None:
        import torch

        encoded = [self._ids(judge_messages(r)) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(encoded[i]))
        pad = self.lm.tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            device = self.lm.device
            with torch.no_grad():
                logits = (
                    self.lm.model(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        position_ids=positions.to(device),
                        logits_to_keep=1,
                    )
                    .logits[:, -1]
                    .float()
                )
            logp = torch.log_softmax(logits, dim=-1)
            for row, i in enumerate(batch):
                lp = {v: torch.logsumexp(logp[row, self.verdict_ids[v]], dim=0).item() for v in VERDICTS}
                p_first = 1.0 / (1.0 + math.exp(lp["B"] - lp["A"]))
                on_done(
                    i,
                    Judgement(
                        p_first,
                        "logprobs",
                        "A" if p_first >= 0.5 else "B",
                        self.fingerprint,
                        {"prompt_tokens": len(encoded[i])},
                    ),
                )
