"""`make bench`: speed of scoring, generation and one training step against the reference approach.

Workload (the paper's shape, scaled to a 2-core CPU): real UltraFeedback prompts from
../shared/data/ultrafeedback-multilingual, N = 10 responses per prompt sampled from SmolLM2-135M,
scored under the same model. Each part runs in its own process so its peak RSS is its own.
Writes benchmarks/results/latest.json and latest.md. Every figure is measured here, never copied.

Baselines (the reference code's approach, same process, same data):
  scoring     right-padded batches of 3, full-vocabulary log-softmax over every position, the prompt
              recomputed for every response;
  generation  one response per `generate` call;
  training    the same epoch of DPO steps in TRL's default random order (ours groups pairs by
              length); each is also compared with its arithmetic bound (one forward+backward of the
              policy plus one forward of the reference over a step's real tokens, at the measured
              matmul rate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
UF = ROOT.parent / "shared" / "data" / "ultrafeedback-multilingual" / "random_100"
UF_ALL_LANGUAGES = UF.parent / "random_1000"  # bn de en es fr ru sw th zh
XAE_REFERENCE = ROOT.parent / "shared" / "data" / "x-alpacaeval" / "reference" / "gpt-4-turbo-2024-04-09"
MODEL = "embedded:smollm2-135m-instruct"
SCORE_BUDGET = 4096  # tokens per scoring forward pass (reward.token_budget: auto on a CPU)
WORKLOAD_N = 10  # responses sampled per prompt once; smaller N use the first N of them


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def load_prompts(n_prompts: int, langs=("en", "es")) -> list[tuple[str, str]]:
    from icr.core.prompts import load_prompt_set

    prompts = load_prompt_set(str(UF), list(langs), limit=n_prompts)
    out = []
    for k in range(n_prompts):
        lang = langs[k % len(langs)]
        out.append((lang, prompts.by_lang[lang][k].text))
    return out


def sampled_workload(lm, n_prompts: int, n: int, max_new_tokens: int, cache: Path) -> list[dict]:
    """Real prompts with n responses each, sampled once and cached so every part scores the same."""
    if cache.exists():
        return json.loads(cache.read_text())
    from icr.config import GenerateConfig
    from icr.engines.sampling.hf import HFGenerator

    gen = HFGenerator(lm, GenerateConfig(n=n, max_new_tokens=max_new_tokens, batch_prompts=n_prompts))
    prompts = load_prompts(n_prompts)
    samples = gen.sample_batch([p for _, p in prompts], n, list(range(len(prompts))))
    work = [
        {"lang": lang, "prompt": p, "responses": [s.text for s in rows]} for (lang, p), rows in zip(prompts, samples)
    ]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(work, ensure_ascii=False))
    return work


def workload_file(args) -> Path:
    """The sampled workload's cache, keyed by its shape."""
    return RESULTS / f"workload-p{args.prompts}-t{args.max_new_tokens}.json"


def chat_pair(prompt: str, chosen: str, rejected: str) -> dict:
    """A preference pair in TRL's conversational format."""
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- parts


def part_scoring(args) -> dict:
    from icr.core.chat import tokenize_exchange
    from icr.core.models import load_model
    from icr.engines.scoring.responses import score_responses
    from icr.engines.scoring.scorer import Scorer

    lm = load_model(MODEL, device="cpu")
    scorer = Scorer.of(lm, SCORE_BUDGET)
    work = sampled_workload(lm, args.prompts, WORKLOAD_N, args.max_new_tokens, workload_file(args))
    work = [{**w, "responses": w["responses"][: args.n]} for w in work]
    exchanges = [[tokenize_exchange(lm.tokenizer, w["prompt"], r) for r in w["responses"]] for w in work]
    response_tokens = sum(len(c) for ex in exchanges for _, c in ex)
    seqs = [(p, c) for ex in exchanges for p, c in ex]

    def score_ours(items):  # as the reward stage does: the prompts of a chunk scored together
        score_responses(scorer, [(w["prompt"], w["responses"]) for w, _ in items])

    @torch.no_grad()
    def score_baseline(batches):
        for batch in batches:  # right-padded batches of 3, full log-softmax everywhere
            width = max(len(p) + len(c) for p, c in batch)
            ids = torch.tensor([p + c + [0] * (width - len(p) - len(c)) for p, c in batch])
            mask = torch.tensor([[1] * (len(p) + len(c)) + [0] * (width - len(p) - len(c)) for p, c in batch])
            logps = torch.log_softmax(lm.model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            for row, (p, c) in enumerate(batch):
                tgt = ids[row, len(p) : len(p) + len(c)]
                logps[row, len(p) - 1 : len(p) + len(c) - 1].gather(1, tgt[:, None]).sum()

    items, batches = list(zip(work, exchanges)), [seqs[k : k + 3] for k in range(0, len(seqs), 3)]
    if args.impl == "ours":
        score, work_items = score_ours, items
        computed = sum(len(ex[0][0]) + sum(len(c) - 1 for _, c in ex) for ex in exchanges)
    else:
        score, work_items = score_baseline, batches
        computed = sum(len(b) * max(len(p) + len(c) for p, c in b) for b in batches)
    score(work_items[:1])  # warm-up (untimed): the first forward pass pays one-time allocations
    run_once = lambda: score(work_items)  # noqa: E731
    flops = 2 * n_params(lm.model) * computed
    timed = bracketed(run_once, flops, args.repeats)
    per_prompt = []
    if args.impl == "ours":  # cost against prompt length: each prompt alone, after the timed runs
        for w, ex in zip(work, exchanges):
            t0 = time.perf_counter()
            score_ours([(w, ex)])
            per_prompt.append(
                {
                    "lang": w["lang"],
                    "prompt_tokens": len(ex[0][0]),
                    "response_tokens": sum(len(c) for _, c in ex),
                    "seconds": time.perf_counter() - t0,
                }
            )
    return {
        **timed,
        "response_tokens": response_tokens,
        "tokens_per_s": response_tokens / timed["seconds"],
        "tokens_computed": computed,
        "peak_rss_mb": peak_rss_mb(),
        "per_prompt": per_prompt,
    }


def bracketed(run_once, flops: float, repeats: int) -> dict:
    """Time `run_once` `repeats` times, each between two measurements of the matmul rate (the shared
    host drifts by ±30% within minutes); report the median run and the median share of the peak."""
    runs = []
    for _ in range(repeats):
        before = matmul_gflops()
        start = time.perf_counter()
        run_once()
        seconds = time.perf_counter() - start
        rates = [before, matmul_gflops()]
        runs.append(
            {
                "seconds": seconds,
                "matmul_gflops_before_after": rates,
                "peak_flops_share": flops / seconds / 1e9 / (sum(rates) / 2),
            }
        )
    median = sorted(runs, key=lambda r: r["seconds"])[(repeats - 1) // 2]
    return {
        "seconds": median["seconds"],
        "matmul_gflops": sum(median["matmul_gflops_before_after"]) / 2,
        "matmul_gflops_before_after": median["matmul_gflops_before_after"],
        "peak_flops_share": statistics.median(r["peak_flops_share"] for r in runs),
        "achieved_gflops": flops / median["seconds"] / 1e9,
        "runs": runs,
    }


@torch.no_grad()
def part_plain_forward(args, tokens: int = 960) -> dict:
    """The share of the matmul peak a plain forward of the model reaches on this machine: one
    sequence of `tokens` real workload tokens, logits at every position (what the model's own
    arithmetic allows here, before any scorer overhead)."""
    from icr.core.chat import tokenize_exchange
    from icr.core.models import load_model

    lm = load_model(MODEL, device="cpu")
    work = sampled_workload(lm, args.prompts, WORKLOAD_N, args.max_new_tokens, workload_file(args))
    text = [
        t
        for w in work
        for r in w["responses"]
        for part in tokenize_exchange(lm.tokenizer, w["prompt"], r)
        for t in part
    ]
    ids = torch.tensor([text[:tokens]])
    lm.model(input_ids=ids)  # warm-up
    return bracketed(lambda: lm.model(input_ids=ids), 2 * n_params(lm.model) * ids.shape[1], args.repeats)


def part_generation(args) -> dict:
    from icr.config import GenerateConfig
    from icr.core.chat import end_of_turn_ids, prompt_ids
    from icr.core.models import load_model
    from icr.engines.sampling.hf import HFGenerator

    lm = load_model(MODEL, device="cpu")
    prompts = [p for _, p in load_prompts(args.prompts)]
    if args.impl == "ours":
        gen = HFGenerator(lm, GenerateConfig(n=args.n, max_new_tokens=args.max_new_tokens, batch_prompts=len(prompts)))
        start = time.perf_counter()
        rows = gen.sample_batch(prompts, args.n, list(range(len(prompts))))
        seconds = time.perf_counter() - start
        tokens = sum(s.response_tokens for r in rows for s in r)
    else:  # one response per generate() call, on the first prompt, args.baseline_calls times
        stops = end_of_turn_ids(lm.tokenizer, lm.model)
        ids = torch.tensor([prompt_ids(lm.tokenizer, prompts[0])])
        tokens, start = 0, time.perf_counter()
        for k in range(args.baseline_calls):
            torch.manual_seed(k)
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=0.9,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                eos_token_id=stops,
                pad_token_id=lm.tokenizer.pad_token_id,
            )
            new = out[0, ids.shape[1] :].tolist()
            tokens += next((i for i, t in enumerate(new) if t in stops), len(new))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "peak_rss_mb": peak_rss_mb()}


def part_training(args) -> dict:
    """One epoch of DPO steps (`args.pairs` pairs a step) over the workload's pairs, batched as
    `icr train` batches them: grouped by length (ours) or in TRL's default random order (baseline)."""
    from icr.config import TrainConfig
    from icr.core.models import load_model
    from icr.training.reference_logps import pair_logps
    from icr.training.trainer import dpo_trainer, preference_dataset

    lm = load_model(MODEL, device="cpu")
    work = json.loads(workload_file(args).read_text())
    pairs = [
        chat_pair(w["prompt"], w["responses"][k], w["responses"][k + 1])
        for w in work
        for k in range(0, len(w["responses"]) - 1, 2)
    ]
    config = TrainConfig(
        batch_size=args.pairs, grad_accum=1, max_length=256, learning_rate=1e-6, group_by_length=args.impl == "ours"
    )
    ref = pair_logps(lm, pairs, config.max_length, SCORE_BUDGET)
    dataset = preference_dataset(lm.tokenizer, pairs, ref, config)
    trainer = dpo_trainer(lm, dataset, config, str(RESULTS / "trainer"))
    batches = list(trainer.get_train_dataloader())
    lm.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which we bypass to time each step
    optimizer = trainer.create_optimizer()

    def step(batch) -> float:  # one optimiser step: TRL's forward+backward, then AdamW
        start = time.perf_counter()
        trainer.training_step(lm.model, batch)
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    step(min(batches, key=lambda b: b["input_ids"].numel()))  # warm-up, untimed (allocations, optimiser state)
    peak_before = matmul_gflops()
    steps = [
        {
            "seconds": step(b),
            "real_tokens": int(b["attention_mask"].sum()),
            "token_slots": int(b["attention_mask"].numel()),
        }
        for b in batches
    ]
    rates = [peak_before, matmul_gflops()]
    return {
        "step_s": sum(s["seconds"] for s in steps) / len(steps),
        "steps": steps,
        "matmul_gflops": sum(rates) / 2,
        "matmul_gflops_before_after": rates,
        "pairs": len(pairs),
        "pairs_per_step": args.pairs,
        "real_tokens": sum(s["real_tokens"] for s in steps),
        "token_slots": sum(s["token_slots"] for s in steps),
        "params": n_params(lm.model),
        "peak_rss_mb": peak_rss_mb(),
    }


def part_padding(args) -> dict:
    """Token slots an epoch of DPO batches pads to, grouped by length vs TRL's random order, on
    pairs with real lengths: X-AlpacaEval instructions (en, es) with gpt-4-turbo's answers to that
    instruction (chosen) and to the next one (rejected). Collation only, no training."""
    from icr.config import TrainConfig
    from icr.core.models import load_model
    from icr.training.losses import PairLogps
    from icr.training.trainer import dpo_trainer, preference_dataset

    lm = load_model(MODEL, device="cpu")
    pairs = []
    for lang in ("en", "es"):
        rows = json.loads((XAE_REFERENCE / f"{lang}.json").read_text(encoding="utf-8"))
        pairs += [chat_pair(a["instruction"], a["output"], b["output"]) for a, b in zip(rows, rows[1:])]
    config = TrainConfig(batch_size=args.pairs, grad_accum=1)
    ref = [PairLogps(0.0, 0.0)] * len(pairs)  # unused: no step is taken
    trainer = dpo_trainer(lm, preference_dataset(lm.tokenizer, pairs, ref, config), config, str(RESULTS / "trainer"))
    out = {"pairs": len(pairs), "pairs_per_step": args.pairs, "max_length": config.max_length}
    for strategy in ("group_by_length", "random"):
        trainer.args.train_sampling_strategy = strategy
        batches = list(trainer.get_train_dataloader())
        out["real_tokens"] = sum(int(b["attention_mask"].sum()) for b in batches)
        out[f"slots_{strategy}"] = sum(int(b["attention_mask"].numel()) for b in batches)
    return out


def part_languages(args) -> dict:
    """Generate and score `args.per_language` prompts in each of `args.langs`, one language after
    another as the pipeline does; the same UltraFeedback ids in every language."""
    from icr.config import GenerateConfig
    from icr.core.chat import prompt_ids
    from icr.core.models import load_model
    from icr.core.prompts import load_prompt_set
    from icr.engines.sampling.hf import HFGenerator
    from icr.engines.scoring.responses import score_responses
    from icr.engines.scoring.scorer import Scorer

    langs = args.langs.split(",")
    lm = load_model(MODEL, device="cpu")
    scorer = Scorer.of(lm, SCORE_BUDGET)
    prompt_set = load_prompt_set(str(UF_ALL_LANGUAGES), langs, limit=args.per_language)
    gen = HFGenerator(lm, GenerateConfig(n=args.n, max_new_tokens=args.max_new_tokens, batch_prompts=args.per_language))
    score_responses(scorer, [("Warm-up.", ["Yes."])])
    rows = []
    for lang in langs:
        texts = [p.text for p in prompt_set.by_lang[lang]]
        start = time.perf_counter()
        samples = gen.sample_batch(texts, args.n, list(range(len(texts))))
        gen_s = time.perf_counter() - start
        start = time.perf_counter()
        score_responses(scorer, [(text, [s.text for s in group]) for text, group in zip(texts, samples)])
        rows.append(
            {
                "lang": lang,
                "generate_s": gen_s,
                "score_s": time.perf_counter() - start,
                "prompt_tokens": sum(len(prompt_ids(lm.tokenizer, t)) for t in texts),
                "response_tokens": sum(s.response_tokens for group in samples for s in group),
            }
        )
    return {"langs": langs, "per_language": rows}


PARTS = {
    "scoring": part_scoring,
    "generation": part_generation,
    "training": part_training,
    "languages": part_languages,
    "padding": part_padding,
    "plain_forward": part_plain_forward,
}


def run_part(name: str, impl: str, args) -> dict:
    """Run one part in a fresh process (its own peak RSS), return its JSON."""
    cmd = [
        sys.executable,
        __file__,
        "--part",
        name,
        "--impl",
        impl,
        "--prompts",
        str(args.prompts),
        "--n",
        str(args.n),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--pairs",
        str(args.pairs),
        "--repeats",
        str(args.repeats),
        "--baseline-calls",
        str(args.baseline_calls),
        "--langs",
        args.langs,
        "--per-language",
        str(args.per_language),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=list(PARTS))
    parser.add_argument("--impl", default="ours", choices=["ours", "baseline"])
    parser.add_argument("--prompts", type=int, default=4, help="real prompts (en/es alternating)")
    parser.add_argument("--n", type=int, default=10, help="responses per prompt (paper: 10)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed scoring runs per implementation (the median is reported)"
    )
    parser.add_argument("--pairs", type=int, default=8, help="pairs per training step")
    parser.add_argument("--baseline-calls", type=int, default=6, help="generate() calls timed for the baseline")
    parser.add_argument("--sizes", default="2,5,10", help="N values for the scaling table")
    parser.add_argument("--langs", default="en", help="languages of the `languages` part (comma-separated)")
    parser.add_argument(
        "--language-sizes",
        default="en;en,es;en,es,de,ru",
        help="language sets of the languages scaling table, separated by ';'",
    )
    parser.add_argument("--per-language", type=int, default=2, help="prompts per language in the languages table")
    args = parser.parse_args()
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    from icr.core.models import resolve_model_path

    resolve_model_path(MODEL)  # dequantize once, outside the timings
    gflops = matmul_gflops()
    scoring = {impl: run_part("scoring", impl, args) for impl in ("ours", "baseline")}
    scoring["plain_forward"] = run_part("plain_forward", "ours", args)
    generation = {impl: run_part("generation", impl, args) for impl in ("ours", "baseline")}
    training = {impl: run_part("training", impl, args) for impl in ("ours", "baseline")}
    for part in training.values():
        # forward ≈ 2·P FLOPs a token, backward ≈ 4·P: policy forward+backward (6·P) + reference forward
        # (2·P), over the real tokens of an average step, at the matmul rate measured around the part
        part["flop_bound_s"] = (
            (6 + 2) * part["params"] * part["real_tokens"] / len(part["steps"]) / (part["matmul_gflops"] * 1e9)
        )
    result = {
        "machine": {
            "matmul_gflops": gflops,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        },
        "workload": {
            "prompts": args.prompts,
            "n": args.n,
            "max_new_tokens": args.max_new_tokens,
            "per_language": args.per_language,
            "source": str(UF.relative_to(ROOT.parent)),
        },
        "scoring": {
            "tokens_per_s": scoring["ours"]["tokens_per_s"],
            "baseline_tokens_per_s": scoring["baseline"]["tokens_per_s"],
            "speedup": scoring["ours"]["tokens_per_s"] / scoring["baseline"]["tokens_per_s"],
            "peak_flops_share": scoring["ours"]["peak_flops_share"],
            "baseline_peak_flops_share": scoring["baseline"]["peak_flops_share"],
            "plain_forward_flops_share": scoring["plain_forward"]["peak_flops_share"],
            "peak_rss_mb": scoring["ours"]["peak_rss_mb"],
            "baseline_peak_rss_mb": scoring["baseline"]["peak_rss_mb"],
            "detail": scoring,
        },
        "generation": {
            "tokens_per_s": generation["ours"]["tokens_per_s"],
            "baseline_tokens_per_s": generation["baseline"]["tokens_per_s"],
            "speedup": generation["ours"]["tokens_per_s"] / generation["baseline"]["tokens_per_s"],
            "detail": generation,
        },
        "training": {
            "step_s": training["ours"]["step_s"],
            "flop_bound_s": training["ours"]["flop_bound_s"],
            "ratio": training["ours"]["step_s"] / training["ours"]["flop_bound_s"],
            "baseline_step_s": training["baseline"]["step_s"],
            "baseline_ratio": training["baseline"]["step_s"] / training["baseline"]["flop_bound_s"],
            "detail": training,
        },
    }
    result["training"]["padding_at_scale"] = run_part("padding", "ours", args)
    scaling = []
    for n in [int(x) for x in args.sizes.split(",")]:
        sub = argparse.Namespace(**{**vars(args), "n": n})
        ours = run_part("scoring", "ours", sub)
        scaling.append(
            {
                "n": n,
                "seconds": ours["seconds"],
                "response_tokens": ours["response_tokens"],
                "tokens_computed": ours["tokens_computed"],
                "tokens_per_s": ours["tokens_per_s"],
            }
        )
    result["scoring_scaling_n"] = scaling
    result["scaling_languages"] = []
    for langs in args.language_sizes.split(";"):
        rows = run_part("languages", "ours", argparse.Namespace(**{**vars(args), "langs": langs}))["per_language"]
        result["scaling_languages"].append(
            {
                "langs": langs.split(","),
                "prompts": args.per_language * len(rows),
                **{
                    key: sum(row[key] for row in rows)
                    for key in ("generate_s", "score_s", "prompt_tokens", "response_tokens")
                },
                "per_language": rows,
            }
        )
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    s, g, t = r["scoring"], r["generation"], r["training"]
    rates = [
        r["machine"]["matmul_gflops"],
        *(x for impl in ("ours", "baseline") for x in t["detail"][impl]["matmul_gflops_before_after"]),
        *(
            x
            for impl in ("ours", "baseline")
            for run in s["detail"][impl]["runs"]
            for x in run["matmul_gflops_before_after"]
        ),
    ]
    lines = [
        f"Machine: {r['machine']['cpu_count']} cores, {r['machine']['device']}, matmul "
        f"{r['machine']['matmul_gflops']:.1f} GFLOP/s (fp32 1024², measured; shares and the training bound use "
        f"the mean rate measured just before and after each part, as this shared host drifts: "
        f"{min(rates):.0f}–{max(rates):.0f} GFLOP/s in this run), torch {r['machine']['torch']}.",
        f"Workload: {r['workload']['prompts']} UltraFeedback prompts (en/es) × N = {r['workload']['n']} sampled "
        f"responses (≤ {r['workload']['max_new_tokens']} tokens), SmolLM2-135M-Instruct, fp32.",
        "",
        "| part | icr | baseline | speedup | notes |",
        "|---|---|---|---|---|",
        f"| scoring (response tokens/s) | {s['tokens_per_s']:.1f} | {s['baseline_tokens_per_s']:.1f} | "
        f"{s['speedup']:.2f}× | {100 * s['peak_flops_share']:.0f}% of matmul peak "
        f"(baseline {100 * s['baseline_peak_flops_share']:.0f}%; a plain forward of the model over 960 tokens "
        f"{100 * s['plain_forward_flops_share']:.0f}%), median of {len(s['detail']['ours']['runs'])} runs; "
        f"peak RSS {s['peak_rss_mb']:.0f} MB "
        f"(baseline {s['baseline_peak_rss_mb']:.0f} MB) |",
        f"| generation (tokens/s) | {g['tokens_per_s']:.1f} | {g['baseline_tokens_per_s']:.1f} | "
        f"{g['speedup']:.2f}× | one batched call per prompt chunk vs one response per call |",
        f"| training step (s) | {t['step_s']:.1f} | {t['baseline_step_s']:.1f} | "
        f"{t['baseline_step_s'] / t['step_s']:.2f}× | {t['ratio']:.2f}× its FLOP bound of {t['flop_bound_s']:.1f} s "
        f"(baseline {t['baseline_ratio']:.2f}×); {t['detail']['ours']['pairs_per_step']} pairs a step, an epoch "
        f"of {t['detail']['ours']['pairs']} pairs: {t['detail']['ours']['real_tokens']} real tokens in "
        f"{t['detail']['ours']['token_slots']} slots (baseline {t['detail']['baseline']['token_slots']}) |",
        "",
        "Scoring cost against N (responses per prompt, same prompts):",
        "",
        "| N | seconds | response tokens | tokens computed | response tokens/s |",
        "|---|---|---|---|---|",
    ]
    for row in r["scoring_scaling_n"]:
        lines.append(
            f"| {row['n']} | {row['seconds']:.1f} | {row['response_tokens']} | {row['tokens_computed']} | "
            f"{row['tokens_per_s']:.1f} |"
        )
    lines += [
        "",
        f"Scoring cost against prompt length and language (one prompt each, N = {r['workload']['n']}):",
        "",
        "| lang | prompt tokens | response tokens | seconds |",
        "|---|---|---|---|",
    ]
    for row in sorted(s["detail"]["ours"]["per_prompt"], key=lambda x: x["prompt_tokens"]):
        lines.append(f"| {row['lang']} | {row['prompt_tokens']} | {row['response_tokens']} | {row['seconds']:.2f} |")
    pad = t["padding_at_scale"]
    lines += [
        "",
        f"Padding at dataset scale ({pad['pairs']} X-AlpacaEval pairs with gpt-4-turbo's answers, "
        f"{pad['pairs_per_step']} pairs a step, max_length {pad['max_length']}; collation only): "
        f"{pad['real_tokens']} real tokens in {pad['slots_group_by_length']} slots grouped by length "
        f"({100 * pad['real_tokens'] / pad['slots_group_by_length']:.0f}% real) vs {pad['slots_random']} "
        f"in random order ({100 * pad['real_tokens'] / pad['slots_random']:.0f}% real).",
    ]
    lines += [
        "",
        f"Cost against the number of languages ({r['workload']['per_language']} prompts per language, "
        f"N = {r['workload']['n']}, languages run one after another as in the pipeline):",
        "",
        "| languages | prompts | prompt tokens | response tokens | generate s | score s | total s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["scaling_languages"]:
        lines.append(
            f"| {' '.join(row['langs'])} | {row['prompts']} | {row['prompt_tokens']} | "
            f"{row['response_tokens']} "
            f"| {row['generate_s']:.1f} | {row['score_s']:.1f} | {row['generate_s'] + row['score_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
