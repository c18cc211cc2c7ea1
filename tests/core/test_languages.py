"""Language codes and identification: known codes only, confident detection only."""

from __future__ import annotations

import pytest

from icr.core.errors import DataError
from icr.core.languages import LANGUAGE_NAMES, UnknownLanguageError, check_language, detect_language, is_in_language

SPANISH = "El perro de mi vecino ladra todas las noches y no nos deja dormir tranquilos."
GERMAN = "Der Hund meines Nachbarn bellt jede Nacht und lässt uns nicht ruhig schlafen."


def test_unknown_code_is_a_data_error_listing_the_known_codes():
    assert check_language("sw") == "sw"
    with pytest.raises(UnknownLanguageError, match="'xx'.*known ISO 639-1 codes: af, am") as err:
        check_language("xx")
    assert isinstance(err.value, DataError)  # commands report it as a clean message
    with pytest.raises(UnknownLanguageError):
        check_language("EN")  # codes are lower case


def test_every_code_has_a_name():
    assert LANGUAGE_NAMES["de"] == "German" and LANGUAGE_NAMES["zh"] == "Chinese"
    assert all(len(code) == 2 and code.islower() and name for code, name in LANGUAGE_NAMES.items())


def test_detection_of_clear_text_and_of_text_without_letters():
    assert detect_language(SPANISH)[0] == "es" and detect_language(SPANISH)[1] > 0.9
    assert detect_language(GERMAN)[0] == "de"
    assert detect_language("12 + 30 = 42 !!") == ("und", 0.0)


def test_off_language_only_when_another_language_wins_confidently():
    assert is_in_language(SPANISH, "es") and not is_in_language(GERMAN, "es")
    assert is_in_language("", "es") and is_in_language("3.14", "de")  # nothing to judge: kept
    # a confidently detected other language is kept when the bar is above its probability
    assert is_in_language(GERMAN, "es", min_confidence=1.01)
