"""Property-based tests (hypothesis) over hostile inputs: prompt files, configs, reward records and
JSON Lines. Each input is either handled exactly (nothing dropped or altered) or refused with the
project's own error naming where the problem is; no other exception type ever escapes."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from helpers import select_json
from icr.config import ConfigError, PairsConfig, RunConfig, dump_config, iter_fields, load_config
from icr.core.errors import DataError
from icr.core.io import JsonlAppender, read_json, read_jsonl, write_jsonl_atomic
from icr.core.prompts import load_prompt_set
from icr.pipeline import run_stage

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- prompt files

GOOD_TEXTS = [
    "x" * 20_000,
    "Hello мир 世界 नमस्ते",
    "مرحبا بالعالم",
    "שלום עולם",
    "\u202eevil\u202c",
    "😀👍🏽🇪🇸",
    "line1\nline2\r\n",
    "\ufeffBOM",
    "e\u0301",
    "\u200b",
    "\u2028x\x85",
    ' "quoted" \\ ',
]
BAD_TEXTS = ["", " ", "\t\n", "\u3000", "\x1c", "a\x00b", "\x00"]
good_texts = st.one_of(st.sampled_from(GOOD_TEXTS), st.text(min_size=1).filter(lambda t: t.strip() and "\x00" not in t))
any_texts = st.one_of(good_texts, st.sampled_from(BAD_TEXTS), st.text(max_size=40))
MISSING = object()
any_ids = st.one_of(st.integers(0, 5), st.integers(0, 5).map(str), st.sampled_from([MISSING, None, True, [1], 1.0]))


def retyped(pid):
    """The same id as the other JSON type: 7 <-> "7"."""
    if type(pid) is int:
        return str(pid)
    return int(pid) if type(pid) is str and pid.isascii() and pid.isdigit() else pid


@st.composite
def prompt_sets(draw):
    """(English rows, other rows, other language): valid, or with hostile ids, texts and codes mixed in."""
    hostile = draw(st.booleans())
    n = draw(st.integers(0 if hostile else 1, 5))
    en_ids = [draw(st.sampled_from([100 + i, str(100 + i)])) for i in range(n)]  # unique
    if hostile:
        en_ids = [draw(st.one_of(st.just(pid), any_ids)) for pid in en_ids]
    en = [(pid, draw(any_texts if hostile else good_texts)) for pid in en_ids]
    order = draw(st.permutations(range(n)))[: draw(st.integers(0 if hostile else 1, n))] if n else []
    # the other language: some English ids in any order, 1 and "1" being the same id
    other = [(retyped(en_ids[j]) if draw(st.booleans()) else en_ids[j], draw(good_texts)) for j in order]
    if hostile:
        other = [(draw(st.one_of(st.just(pid), any_ids)), draw(any_texts)) for pid, _ in other]
    lang = draw(st.sampled_from(["es", "ar", "he", "en"] + (["zz", "EN"] if hostile else [])))
    return en, other, lang


def write_language(folder: Path, lang: str, rows, as_list: bool, ascii_: bool, blank_lines: bool):
    """Write the file; return its path and each record's location as the loader names it."""
    records = [{"instruction": text, **({} if pid is MISSING else {"id": pid})} for pid, text in rows]
    path = folder / f"{lang}.json{'' if as_list else 'l'}"
    if as_list:
        path.write_text(json.dumps(records, ensure_ascii=ascii_), encoding="utf-8")
        return path, [f"item {1 + i}" for i in range(len(rows))]
    sep = "\n\n" if blank_lines else "\n"
    path.write_text("".join(json.dumps(r, ensure_ascii=ascii_) + sep for r in records), encoding="utf-8")
    return path, [f"line {1 + len(sep) * i}" for i in range(len(rows))]


def first_problem(rows, where: list[str], english_ids: set[str] | None) -> str | None:
    """Independent oracle: where the loader must refuse the file ('line 3', 'item 3', or the file
    itself), None if every record is valid."""
    if not rows or rows[0][0] is MISSING:
        return "file"  # empty file / no id field in the first record (the id field is picked from it)
    seen = set()
    for (pid, text), loc in zip(rows, where):
        if (
            pid is MISSING
            or pid is None
            or isinstance(pid, (bool, list))
            or not text.strip()
            or "\x00" in text
            or any(0xD800 <= ord(c) <= 0xDFFF for c in text)
            or str(pid) in seen
        ):
            return loc
        seen.add(str(pid))
    orphans = [loc for (pid, _), loc in zip(rows, where) if english_ids is not None and str(pid) not in english_ids]
    return orphans[0] if orphans else None


@settings(SETTINGS, max_examples=150)
@given(
    case=prompt_sets(),
    as_list=st.booleans(),
    ascii_=st.booleans(),
    blank_lines=st.booleans(),
    lone_surrogate=st.integers(0, 4).map(lambda k: k == 0),
)
def test_prompt_files_load_exactly_or_are_refused_naming_file_and_line(
    case, as_list, ascii_, blank_lines, lone_surrogate
):
    en, other, lang = case
    if lone_surrogate and en:  # only as a \udXXX escape can one get into a file
        en = [(en[0][0], en[0][1] + "\ud800")] + en[1:]
        ascii_ = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {"en": write_language(folder, "en", en, as_list, ascii_, blank_lines)}
        if lang != "en":
            files[lang] = write_language(folder, lang, other, as_list, ascii_, blank_lines)
        expected = (None, repr(lang)) if lang in ("zz", "EN") else None  # (file, location) of the first refusal
        if expected is None and (loc := first_problem(en, files["en"][1], None)) is not None:
            expected = (files["en"][0], loc)
        elif expected is None and lang != "en":
            loc = first_problem(other, files[lang][1], {str(pid) for pid, _ in en})
            expected = (files[lang][0], loc) if loc is not None else None
        try:
            loaded = load_prompt_set(str(folder), ["en", lang] if lang != "en" else ["en"])
        except DataError as err:
            message, _ = str(err), event("refused")
            assert expected is not None, f"valid input refused: {message}"
            path, loc = expected
            if path is None or loc == "file":  # an unknown language code; an empty file or one without ids
                assert loc in message if path is None else message.startswith(f"{path}:"), message
            else:
                assert message.startswith(f"{path}:{loc}:") and (" id " in message or "id field" in message), message
            return
        assert expected is None, f"should have been refused: {expected}"
        event(f"loaded {len(loaded)} prompts")
        want = {"en": [(str(pid), text) for pid, text in en]}
        if lang != "en":
            rank = {str(pid): i for i, (pid, _) in enumerate(en)}
            want[lang] = sorted(((str(pid), text) for pid, text in other), key=lambda p: rank[p[0]])
        got = {code: [(p.id, p.text) for p in prompts] for code, prompts in loaded.by_lang.items()}
        assert got == want  # every prompt, in English order, text byte for byte
        assert loaded.english == dict(want["en"])


# ---------------------------------------------------------------- configs

LEAVES = sorted(d for d, _, _ in iter_fields(RunConfig))
KEYS = st.sampled_from(
    LEAVES + ["generate", "train.lora", "models", "nope", "generate.bogus", "generate.n.x", "data.languages.0"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 20),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["en", "es", "..", "/abs", "a\x00b", "hf", "tokens", "1e3"]),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.lists(st.sampled_from(["en", "es", "de", "xx"]), max_size=4),
    st.dictionaries(st.sampled_from(["n", "r", "x", "enabled"]), SCALARS, max_size=2),
)


def fields_named(message: str) -> list[str]:
    return [line[2:].split(":", 1)[0] for line in message.splitlines() if line.startswith("  ")]


def check_roundtrip(cfg, tmp: Path) -> None:
    (tmp / "dumped.yaml").write_text(text := dump_config(cfg), encoding="utf-8")
    again = load_config(tmp / "dumped.yaml")
    assert again.model_dump(mode="json") == cfg.model_dump(mode="json")
    assert dump_config(again) == text
    sections = ("seed", "models", "data", "generate", "reward", "pairs", "train")
    assert again.section_hash(*sections) == cfg.section_hash(*sections)
    assert cfg.run_dir.parent == Path(cfg.output_dir) and cfg.run_dir.name == cfg.name  # never outside output_dir
    json.dumps(cfg.model_dump(), allow_nan=False)  # raises on a NaN/inf value: those must be refused


@settings(SETTINGS, max_examples=150)
@example(overrides={"pairs.alpha_max": math.inf})  # would make fit_alpha build an endless grid
@example(overrides={"pairs.max_chosen_score": math.nan, "reward.beta": math.inf})
@given(overrides=st.dictionaries(KEYS, VALUES, min_size=1, max_size=3))
def test_config_overrides_load_and_roundtrip_or_name_the_field(overrides):
    try:
        cfg = load_config(overrides=overrides)
    except ConfigError as err:
        message = str(err)
        named = fields_named(message)
        if not named:  # set_dotted's refusal: "<dotted>: <key> is not a section"
            assert any(message.startswith(f"{k}:") for k in overrides), message
        for field in named:
            assert (
                field == "<root>"
                and any(k in message for k in overrides)
                or any(field.startswith(k) or k.startswith(field) for k in overrides)
            ), message
        return
    with tempfile.TemporaryDirectory() as tmp:
        check_roundtrip(cfg, Path(tmp))


YAML_TREES = st.recursive(
    SCALARS,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.one_of(KEYS, st.text(max_size=5)), c, max_size=3),
    max_leaves=8,
)
RAW_YAML = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "a: [",
            "generate: {n: 3",
            "\t- x",
            "name: !!python/object/apply:os.system ['echo hi']",
            "? [a]\n: 1",
            "&a [*a]",
            "generate:\n  n: 3\n generate: 4",
            "%YAML 9.9\n---\nname: x",
            "name: x\nname: y",
        ]
    ),
)


@settings(SETTINGS, max_examples=150)
@given(
    content=st.one_of(
        YAML_TREES.map(lambda t: yaml.safe_dump(t, allow_unicode=True)),
        RAW_YAML,
        st.binary(max_size=30).map(lambda b: b"name: " + b),
    )
)
def test_any_yaml_file_loads_or_raises_config_error_naming_the_file(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        try:
            cfg = load_config(path)
        except ConfigError as err:
            assert str(path) in str(err) or fields_named(str(err)), str(err)
            return
        check_roundtrip(cfg, Path(tmp))


@SETTINGS
@given(tree=st.dictionaries(st.one_of(KEYS, st.text(max_size=5)), SCALARS, min_size=1, max_size=3), value=SCALARS)
def test_a_key_given_twice_in_a_yaml_file_is_refused_not_overwritten(tree, value):
    key = next(iter(tree))
    text = yaml.safe_dump(tree, allow_unicode=True) + yaml.safe_dump({key: value}, allow_unicode=True)
    with tempfile.TemporaryDirectory() as tmp:
        (path := Path(tmp) / "run.yaml").write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match="duplicate key") as err:
            load_config(path)
        assert str(err.value).startswith(f"{path}:")


# ---------------------------------------------------------------- pair selection

REWARDS = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 0.5]), st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf])
)
RESPONSES = st.one_of(
    st.sampled_from(["", " ", "Hola", "Hola ", "Hola, ¿qué tal?", "مرحبا", "😀"]), st.text(max_size=30)
)


@st.composite
def reward_records(draw):
    records = []
    for k in range(draw(st.integers(0, 6))):
        n = draw(st.integers(0, 5))
        log_ratios = draw(st.lists(REWARDS, min_size=n, max_size=n))
        record = {
            "id": str(k),
            "lang": "es",
            "prompt": f"p{k}",
            "prompt_en": f"q{k}",
            "responses": draw(st.lists(RESPONSES, min_size=n, max_size=n)),
            "logp_policy": log_ratios,
            "logp_ref": [0.0] * n,
            "reward": [0.1 * x for x in log_ratios],
            "n_tokens": draw(st.lists(st.integers(0, 50), min_size=n, max_size=n)),
        }
        if draw(st.integers(0, 9)) == 0:
            record.update(
                responses=[], reward=[], logp_policy=[], logp_ref=[], n_tokens=[], skipped="prompt has 99 tokens > 64"
            )
        records.append(record)
    return records


pairs_configs = st.builds(
    PairsConfig,
    length_control=st.booleans(),
    length_unit=st.sampled_from(["chars", "tokens"]),
    min_margin=st.sampled_from([0.0, 0.5]),
    drop_identical=st.booleans(),
    language_filter=st.sampled_from(["off", "chosen", "all"]),
    max_chosen_score=st.sampled_from([None, 0.0, 10.0]),
)


@SETTINGS
@example(
    records=[
        {
            "id": "0",
            "lang": "es",
            "prompt": "p",
            "prompt_en": "q",
            "responses": ["Hola", "Adiós"],
            "logp_policy": [1.0, 1.0],
            "logp_ref": [0.0, 0.0],
            "reward": [0.1, 0.1],
            "n_tokens": [1, 1],
        }
    ],
    config=PairsConfig(length_control=False, language_filter="off"),
)  # a tie of different texts: not 'identical'
@given(records=reward_records(), config=pairs_configs)
def test_select_pairs_chooses_extremes_and_accounts_for_every_prompt(records, config):
    from icr.core.languages import is_in_language

    pairs, stats = select_json(records, config)
    assert stats["prompts"] == len(records) and stats["pairs"] == len(pairs)
    assert len(pairs) + sum(stats["dropped"].values()) == len(records)  # every prompt is a pair or a counted drop
    assert stats["responses"] == sum(len(r["responses"]) for r in records if not r.get("skipped"))
    assert stats["dropped"].get("skipped_prompt", 0) == sum(1 for r in records if r.get("skipped"))
    assert len({p["id"] for p in pairs}) == len(pairs)
    by_id = {r["id"]: r for r in records}
    for p in pairs:
        rec, alpha = by_id[p["id"]], p["alpha"]
        numbers = [v for k, v in p.items() if k.startswith(("reward_", "score_", "len_"))] + [alpha]
        assert all(math.isfinite(v) for v in numbers), p
        in_lang = [is_in_language(t, "es", config.language_min_confidence) for t in rec["responses"]]
        valid = [
            i
            for i, lr in enumerate(rec["logp_policy"])
            if math.isfinite(lr) and (config.language_filter != "all" or in_lang[i])
        ]
        choosable = [i for i in valid if config.language_filter == "off" or in_lang[i]]
        lengths = rec["n_tokens"] if config.length_unit == "tokens" else [len(t) for t in rec["responses"]]
        scores = {i: rec["logp_policy"][i] - alpha * lengths[i] for i in valid}  # log π_ref = 0 here
        assert p["score_chosen"] == pytest.approx(max(scores[i] for i in choosable), rel=1e-9, abs=1e-9)
        assert p["score_rejected"] == pytest.approx(min(scores.values()), rel=1e-9, abs=1e-9)
        chosen = [
            i
            for i in choosable
            if rec["responses"][i] == p["chosen"][0]["content"]
            and rec["reward"][i] == p["reward_chosen"]
            and lengths[i] == p["len_chosen"]
        ]
        rejected = [
            i
            for i in valid
            if rec["responses"][i] == p["rejected"][0]["content"]
            and rec["reward"][i] == p["reward_rejected"]
            and lengths[i] == p["len_rejected"]
        ]
        assert chosen and rejected, p  # both are valid responses of this prompt, with their own reward and length
        assert p["score_chosen"] > p["score_rejected"]  # so chosen and rejected are different responses
        assert p["score_chosen"] - p["score_rejected"] >= config.min_margin
        if config.drop_identical:
            assert p["chosen"][0]["content"].strip() != p["rejected"][0]["content"].strip()
        if config.max_chosen_score is not None:
            assert p["score_chosen"] <= config.max_chosen_score
        assert (alpha == 0.0 or config.length_control) and p["prompt"] == [{"role": "user", "content": rec["prompt"]}]
    assert set(stats["dropped"]) <= {
        "skipped_prompt",
        "fewer_than_2_in_language",
        "fewer_than_2_finite_rewards",
        "identical",
        "above_max_chosen_score",
        "margin_too_small",
        "no_in_language_response_to_choose",
    }
    broken = [r for r in records if not all(map(math.isfinite, r["logp_policy"]))]
    assert stats["dropped"].get("fewer_than_2_finite_rewards", 0) <= len(broken)
    paired = {p["id"] for p in pairs}
    with_twins = [
        r
        for r in records
        if r["id"] not in paired
        and not r.get("skipped")
        and len({t.strip() for t in r["responses"]}) < len(r["responses"])
    ]
    assert stats["dropped"].get("identical", 0) <= len(with_twins)  # 'identical' means two responses, same text


# ---------------------------------------------------------------- JSON Lines

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(),
        st.sampled_from(["مرحبا", "שלום", "😀", "\x00", "\u2028", "\x85", "\r\n", "\ufeff", "\\u0000"]),
    ),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=10,
)
JSON_RECORDS = st.lists(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4), max_size=5)


@SETTINGS
@given(records=JSON_RECORDS, more=JSON_RECORDS)
def test_jsonl_writers_and_reader_roundtrip_any_unicode(records, more):
    with tempfile.TemporaryDirectory() as tmp:
        atomic, appended = Path(tmp) / "a.jsonl", Path(tmp) / "b.jsonl"
        write_jsonl_atomic(atomic, records)
        with JsonlAppender(appended) as out:
            for r in records + more:
                out.write(r)
        assert read_jsonl(atomic) == records
        assert read_jsonl(appended, repair=True) == records + more
        assert atomic.read_bytes() == appended.read_bytes()[: len(atomic.read_bytes())]


@SETTINGS
@given(records=JSON_RECORDS, prefix=st.text(max_size=5), suffix=st.text(max_size=5))
def test_a_lone_surrogate_is_refused_without_touching_the_file(records, prefix, suffix):
    """JSON can escape a lone surrogate, UTF-8 cannot encode it: writers raise, files stay intact."""
    bad = {"id": "x", "text": prefix + "\udc80" + suffix}
    with tempfile.TemporaryDirectory() as tmp:
        atomic, appended = Path(tmp) / "a.jsonl", Path(tmp) / "b.jsonl"
        write_jsonl_atomic(atomic, records)
        before = atomic.read_bytes()
        with pytest.raises(UnicodeEncodeError):
            write_jsonl_atomic(atomic, records + [bad])
        assert atomic.read_bytes() == before and sorted(p.name for p in Path(tmp).iterdir()) == ["a.jsonl"]
        with JsonlAppender(appended) as out:
            for r in records:
                out.write(r)
            with pytest.raises(UnicodeEncodeError):
                out.write(bad)
        assert appended.read_bytes() == before and read_jsonl(appended) == records


# ---------------------------------------------------------------- prompts over data.max_prompt_tokens


def test_long_prompt_is_carried_through_every_stage_as_skipped(tiny_dir, tiny_ref_dir, tmp_path):
    """Never truncated and never silently lost: a skipped record in generations and rewards, and a
    counted `skipped_prompt` drop in the pair statistics."""
    folder = tmp_path / "prompts"
    folder.mkdir()
    texts = {
        "en": ["Name a colour.", "Write a poem about the sea.", "Count to three."],
        "es": ["Nombra un color.", "palabra " * 300, "Cuenta hasta tres."],
    }
    for lang, rows in texts.items():
        (folder / f"{lang}.jsonl").write_text(
            "".join(json.dumps({"id": i, "instruction": t}) + "\n" for i, t in enumerate(rows)), encoding="utf-8"
        )
    cfg = load_config(
        overrides={
            "name": "long",
            "output_dir": str(tmp_path / "runs"),
            "iterations": 1,
            "models.policy": str(tiny_dir),
            "models.reference": str(tiny_ref_dir),
            "models.device": "cpu",
            "models.dtype": "float32",
            "data.prompts": str(folder),
            "data.languages": ["en", "es"],
            "data.max_prompt_tokens": 100,
            "generate.n": 2,
            "generate.max_new_tokens": 4,
            "generate.batch_prompts": 2,
            "pairs.language_filter": "off",
            "pairs.drop_identical": False,
        }
    )
    for stage in ("generate", "reward", "pairs"):
        run = run_stage(cfg, stage)
    it = run.root / "iter_0"
    for lang in ("en", "es"):
        gens = read_jsonl(it / "generations" / f"{lang}.jsonl")
        rewards = read_jsonl(it / "rewards" / f"{lang}.jsonl")
        assert [r["id"] for r in gens] == [r["id"] for r in rewards] == ["0", "1", "2"]
        for gen, rew in zip(gens, rewards):
            long = lang == "es" and gen["id"] == "1"
            assert gen["prompt"] == rew["prompt"] == texts[lang][int(gen["id"])]  # not truncated
            assert ("skipped" in gen) == ("skipped" in rew) == long
            assert len(gen["responses"]) == (0 if long else 2) and len(rew.get("reward", [])) == (0 if long else 2)
        if lang == "es":
            assert "data.max_prompt_tokens=100" in gens[1]["skipped"] and rewards[1]["skipped"] == gens[1]["skipped"]
    stats = read_json(it / "pairs_stats.json")
    assert stats["es"]["prompts"] == 3 and stats["es"]["dropped"].get("skipped_prompt") == 1
    assert stats["en"]["prompts"] == 3 and "skipped_prompt" not in stats["en"]["dropped"]
    assert stats["es"]["responses"] == 4 and stats["es"]["pairs"] + sum(stats["es"]["dropped"].values()) == 3
    assert "1" not in {p["id"] for p in read_jsonl(it / "pairs.jsonl") if p["lang"] == "es"}
