"""Language codes, names and language identification.

Codes are ISO 639-1. Identification uses py3langid, whose model ships inside its wheel (no
download). A response counts as off-language only when another language wins *confidently*:
close pairs (es/gl, da/no, ru/uk) are often confused on short texts, and dropping a good response
on a guess costs more than keeping an uncertain one.
"""

from __future__ import annotations

from functools import lru_cache

from icr.core.errors import DataError

LANGUAGE_NAMES = {
    "af": "Afrikaans",
    "am": "Amharic",
    "ar": "Arabic",
    "az": "Azerbaijani",
    "be": "Belarusian",
    "bg": "Bulgarian",
    "bn": "Bengali",
    "ca": "Catalan",
    "cs": "Czech",
    "cy": "Welsh",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "eu": "Basque",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "ga": "Irish",
    "gl": "Galician",
    "gu": "Gujarati",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "hu": "Hungarian",
    "hy": "Armenian",
    "id": "Indonesian",
    "is": "Icelandic",
    "it": "Italian",
    "ja": "Japanese",
    "ka": "Georgian",
    "kk": "Kazakh",
    "km": "Khmer",
    "kn": "Kannada",
    "ko": "Korean",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "mk": "Macedonian",
    "ml": "Malayalam",
    "mn": "Mongolian",
    "mr": "Marathi",
    "ms": "Malay",
    "my": "Burmese",
    "ne": "Nepali",
    "nl": "Dutch",
    "no": "Norwegian",
    "pa": "Punjabi",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sq": "Albanian",
    "sr": "Serbian",
    "sv": "Swedish",
    "sw": "Swahili",
    "ta": "Tamil",
    "te": "Telugu",
    "th": "Thai",
    "tl": "Tagalog",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "ur": "Urdu",
    "uz": "Uzbek",
    "vi": "Vietnamese",
    "yo": "Yoruba",
    "zh": "Chinese",
    "zu": "Zulu",
}


class UnknownLanguageError(DataError):
    """A language code that is not ISO 639-1 (or not one we know)."""


def check_language(code: str) -> str:
    """Return `code` if it is a known ISO 639-1 code, else raise with the list of known codes."""
    if code not in LANGUAGE_NAMES:
        raise UnknownLanguageError(
            f"unknown language code {code!r}; known ISO 639-1 codes: {', '.join(sorted(LANGUAGE_NAMES))}"
        )
    return code


def language_name(code: str) -> str:
    return LANGUAGE_NAMES[check_language(code)]


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> tuple[str, float]:
    """Most likely language of `text` and its probability; ('und', 0.0) for text without letters."""
    if not any(ch.isalpha() for ch in text):
        return "und", 0.0
    lang, prob = _identifier().classify(text)
    return lang, float(prob)


def is_in_language(text: str, lang: str, min_confidence: float = 0.5) -> bool:
    """False only if some other language wins with probability >= min_confidence."""
    detected, prob = detect_language(text)
    return detected == lang or detected == "und" or prob < min_confidence
