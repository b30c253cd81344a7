"""The one language table: Whisper's languages, their ISO 639 codes and English names.

Every stage that reads or writes a language goes through it: config hints, the
audio stream a container tags `slk` or `slo` for `audio_language: sk`, the tag
in a sidecar's name, a sidecar's name read back, the name in a notification.
Whisper's own table (`whisper.tokenizer.LANGUAGES`) is copied here so that
nothing that only reads a language imports torch; tests/test_languages.py
asserts the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["LANGUAGES", "WHISPER_CODES", "Language", "from_any", "name_of"]


@dataclass(frozen=True)
class Language:
    """One Whisper language.

    `tag` is what a sidecar named by ISO 639-1 carries ("en"); `iso2b` the ISO
    639-2/B code that Plex and Jellyfin both read ("ger"), `iso2t` the 639-2/T
    one ("deu"); `names` are English names in lower case, Whisper's first.
    """

    code: str  # Whisper's code
    tag: str
    iso2b: str
    iso2t: str
    names: tuple[str, ...]

    @property
    def name(self) -> str:
        """Return the English name to show: "English", "Haitian Creole"."""
        return self.names[0].title()


# Whisper's code, the ISO 639-1 tag, ISO 639-2/B, ISO 639-2/T, English names (Whisper's first;
# "_" stands for a space). Three codes need a choice:
#   jw  -> jv / jav: Whisper's "jw" is an old non-standard code for Javanese.
#   haw -> haw: Hawaiian has no 639-1 code; Plex and Jellyfin read the 3-letter one.
#   yue -> zh / chi: ISO 639-2 has no code for Cantonese (it is under the Chinese
#          macrolanguage); "yue" alone shows as an unknown language.
_ROWS = """
en en eng eng english | zh zh chi zho chinese,mandarin | de de ger deu german
es es spa spa spanish,castilian | ru ru rus rus russian | ko ko kor kor korean
fr fr fre fra french | ja ja jpn jpn japanese | pt pt por por portuguese
tr tr tur tur turkish | pl pl pol pol polish | ca ca cat cat catalan,valencian
nl nl dut nld dutch,flemish | ar ar ara ara arabic | sv sv swe swe swedish
it it ita ita italian | id id ind ind indonesian | hi hi hin hin hindi
fi fi fin fin finnish | vi vi vie vie vietnamese | he he heb heb hebrew
uk uk ukr ukr ukrainian | el el gre ell greek | ms ms may msa malay
cs cs cze ces czech | ro ro rum ron romanian,moldavian,moldovan | da da dan dan danish
hu hu hun hun hungarian | ta ta tam tam tamil | no no nor nor norwegian
th th tha tha thai | ur ur urd urd urdu | hr hr hrv hrv croatian
bg bg bul bul bulgarian | lt lt lit lit lithuanian | la la lat lat latin
mi mi mao mri maori | ml ml mal mal malayalam | cy cy wel cym welsh
sk sk slo slk slovak | te te tel tel telugu | fa fa per fas persian,farsi
lv lv lav lav latvian | bn bn ben ben bengali | sr sr srp srp serbian
az az aze aze azerbaijani | sl sl slv slv slovenian | kn kn kan kan kannada
et et est est estonian | mk mk mac mkd macedonian | br br bre bre breton
eu eu baq eus basque | is is ice isl icelandic | hy hy arm hye armenian
ne ne nep nep nepali | mn mn mon mon mongolian | bs bs bos bos bosnian
kk kk kaz kaz kazakh | sq sq alb sqi albanian | sw sw swa swa swahili
gl gl glg glg galician | mr mr mar mar marathi | pa pa pan pan punjabi,panjabi
si si sin sin sinhala,sinhalese | km km khm khm khmer | sn sn sna sna shona
yo yo yor yor yoruba | so so som som somali | af af afr afr afrikaans
oc oc oci oci occitan | ka ka geo kat georgian | be be bel bel belarusian
tg tg tgk tgk tajik | sd sd snd snd sindhi | gu gu guj guj gujarati
am am amh amh amharic | yi yi yid yid yiddish | lo lo lao lao lao
uz uz uzb uzb uzbek | fo fo fao fao faroese | ht ht hat hat haitian_creole,haitian
ps ps pus pus pashto,pushto | tk tk tuk tuk turkmen | nn nn nno nno nynorsk
mt mt mlt mlt maltese | sa sa san san sanskrit | lb lb ltz ltz luxembourgish,letzeburgesch
my my bur mya myanmar,burmese | bo bo tib bod tibetan | tl tl tgl tgl tagalog
mg mg mlg mlg malagasy | as as asm asm assamese | tt tt tat tat tatar
haw haw haw haw hawaiian | ln ln lin lin lingala | ha ha hau hau hausa
ba ba bak bak bashkir | jw jv jav jav javanese | su su sun sun sundanese
yue zh chi zho cantonese
"""

# Other spellings seen in file names and container tags, mapped to the Whisper code.
_EXTRA_ALIASES = {"nb": "no", "nob": "no", "bokmal": "no", "fil": "tl", "filipino": "tl", "iw": "he",
                  "scc": "sr", "pob": "pt"}


def _parse(rows: str) -> dict[str, Language]:
    table: dict[str, Language] = {}
    for row in rows.replace("\n", "|").split("|"):
        if row.strip():
            code, tag, iso2b, iso2t, names = row.split()
            spelled = tuple(name.replace("_", " ") for name in names.split(","))
            table[code] = Language(code, tag, iso2b, iso2t, spelled)
    return table


LANGUAGES: Mapping[str, Language] = MappingProxyType(_parse(_ROWS))
WHISPER_CODES = frozenset(LANGUAGES)


def _alias_table() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for lang in LANGUAGES.values():
        # Cantonese shares zh/chi/zho with Chinese for naming; those spellings mean Chinese.
        spellings = (lang.code, *lang.names) if lang.code == "yue" else (
            lang.code, lang.tag, lang.iso2b, lang.iso2t, *lang.names)
        for spelling in spellings:
            aliases.setdefault(spelling, lang.code)
    return {**aliases, **_EXTRA_ALIASES}


_ALIASES = MappingProxyType(_alias_table())


def from_any(tag: str) -> str | None:
    """Given a language as anyone writes it, return Whisper's code for it, or None if unknown.

    Accepts Whisper's codes, ISO 639-1, ISO 639-2/T and /B ("sk", "slk", "slo"),
    English names ("Slovak") and a few other spellings, in any case; a region or
    script after "-" or "_" is ignored ("pt-BR", "en_US", "zh-Hant").
    """
    key = tag.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    return _ALIASES.get(re.split(r"[-_]", key, maxsplit=1)[0])


def name_of(code: str) -> str | None:
    """Given a language (any spelling `from_any` reads), return its English name, or None if unknown."""
    found = from_any(code)
    return None if found is None else LANGUAGES[found].name
