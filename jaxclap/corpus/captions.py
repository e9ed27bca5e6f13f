"""English captions for a speech clip, written from its metadata by templates.

SLAP trains on several alternative descriptions per speaker and samples one per step;
CLSP adds fine-grained captions that narrate what changes inside a clip. This module
writes both for the embedded espeak-ng corpus (``speech_corpus``):

  global_captions(meta, rng)  4 atemporal descriptions in different styles: a flowing
                              sentence, a few short sentences, a tag list, and a short
                              phrase naming a subset of the attributes.
  fine_captions(meta, rng)    2 narrations: of the change (slow -> fast ...), or, for a
                              clip without one, of its steady delivery.

Every phrase states an attribute's value; nothing is negated ("not male" embeds close to
"male"), and an attribute whose value is unknown (None) or changes inside the clip
("varies") is left out of global captions. ``PHRASES`` lists, for each (key, value),
word patterns used only for that value, so a test can check captions against metadata.
"""

from __future__ import annotations

import random
import re

# (metadata key, value) -> regexes that appear in a global caption only for that value.
PHRASES = {
    ("gender", "male"): [r"\bman\b", r"\bmale\b", r"\bhe\b", r"\bhis\b"],
    ("gender", "female"): [r"\bwoman\b", r"\bfemale\b", r"\bshe\b", r"\bher\b"],
    ("age_group", "child"): [r"\bchild\b", r"\bkid\b"],
    ("age_group", "young adult"): [r"\byoung (man|woman|adult)\b", r"\badult\b"],
    ("age_group", "elderly"): [r"\belderly\b", r"\bold\b", r"\bolder\b"],
    ("pitch_level", "high"): [r"high-pitched", r"high pitch", r"high voice"],
    ("pitch_level", "low"): [r"low-pitched", r"low pitch", r"\bdeep\b"],
    ("pitch_level", "mid"): [r"medium-pitched", r"medium pitch", r"average pitch"],
    ("rate_level", "fast"): [r"\bfast\b", r"quickly", r"rapid", r"brisk"],
    ("rate_level", "slow"): [r"\bslow", r"unhurried", r"leisurely"],
    ("rate_level", "normal"): [r"(moderate|normal|average) (pace|speed|speaking rate)"],
    ("loudness_level", "loud"): [r"\bloud", r"high volume"],
    ("loudness_level", "quiet"): [r"\bquiet", r"\bsoft", r"low volume"],
    ("loudness_level", "normal"): [r"(normal|moderate|conversational) volume"],
    ("quality", "whispered"): [r"whisper"],
    ("quality", "creaky"): [r"creaky", r"croaky"],
    ("quality", "shaky"): [r"shaky", r"trembl", r"tremulous"],
    ("quality", "modal"): [r"clear voice", r"\bsmooth\b"],
    ("english_accent", "native"): [r"native English"],
    ("english_accent", "foreign"): [r"foreign accent", r"foreign-accented"],
}

_WHO = {
    ("male", "young adult"): ["a man", "a male speaker", "a young man", "an adult male speaker"],
    ("female", "young adult"): ["a woman", "a female speaker", "a young woman",
                                "an adult female speaker"],
    ("male", "elderly"): ["an elderly man", "an old man", "an older male speaker"],
    ("female", "elderly"): ["an elderly woman", "an old woman", "an older female speaker"],
    (None, "child"): ["a child", "a young child", "a kid"],
}
_PRONOUN = {"male": ("he", "his"), "female": ("she", "her"), None: ("the speaker", "the")}

_PITCH_ADJ = {"high": ["high-pitched"], "low": ["low-pitched", "deep"], "mid": ["medium-pitched"]}
_PITCH_PP = {"high": ["with a high-pitched voice", "in a high voice", "at a high pitch"],
             "low": ["with a low-pitched voice", "in a deep voice", "at a low pitch"],
             "mid": ["with a medium-pitched voice", "at an average pitch", "at a medium pitch"]}
_RATE_ADV = {"fast": ["quickly", "rapidly", "at a fast pace", "at a brisk pace", "fast"],
             "slow": ["slowly", "at a slow pace", "at an unhurried pace", "at a leisurely pace"],
             "normal": ["at a moderate pace", "at a normal pace", "at an average speaking rate",
                        "at a moderate speed"]}
_LOUD_ADV = {"loud": ["loudly", "at a high volume", "in a loud voice"],
             "quiet": ["quietly", "softly", "at a low volume", "in a quiet voice"],
             "normal": ["at a normal volume", "at a moderate volume", "at a conversational volume"]}
_LOUD_ADJ = {"loud": ["loud"], "quiet": ["quiet", "soft"], "normal": []}
_QUALITY_PP = {"whispered": ["in a whisper", "in a whispered voice", "in a breathy whisper"],
               "creaky": ["in a creaky voice", "with a croaky, rough voice",
                          "with a creaky voice quality"],
               "shaky": ["in a shaky voice", "with a trembling voice", "in a tremulous voice"],
               "modal": ["in a clear voice", "with a smooth voice", "in a clear voice"]}
_QUALITY_SENTENCES = {"whispered": ["{S} is whispering.", "{S} speaks in a whisper."],
                      "creaky": ["{V} sounds creaky.", "{V} is croaky and rough."],
                      "shaky": ["{V} sounds shaky.", "{V} is trembling."],
                      "modal": ["{V} is clear.", "{V} sounds smooth."]}
_QUALITY_ADJ = {"whispered": ["whispered", "whispering"], "creaky": ["creaky", "croaky"],
                "shaky": ["shaky", "trembling"], "modal": ["clear", "smooth"]}


def _a(word: str) -> str:
  return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _cap(s: str) -> str:
  return s[0].upper() + s[1:]


def _language_pp(meta, rng: random.Random) -> str | None:
  """An apposition naming the language or accent: 'speaking German', 'a native English
  speaker with a Scottish accent', 'speaking English with a foreign accent, a German accent'."""
  lang, accent, kind = meta.get("language"), meta.get("accent"), meta.get("english_accent")
  if lang is None:
    return None
  if lang != "English":
    return rng.choice([f"speaking {lang}", f"speaking in {lang}", f"talking in {lang}",
                       f"speaking {lang}, a foreign language"])
  if kind == "foreign":
    return rng.choice([f"speaking English with a foreign accent, {_a(accent)} accent",
                       f"speaking English with {_a(accent)} accent, a foreign accent",
                       f"speaking foreign-accented English with {_a(accent)} accent",
                       f"speaking {accent}-accented English with a foreign accent"])
  return rng.choice([f"speaking English with {_a(accent)} accent",
                     f"a native English speaker with {_a(accent)} accent",
                     f"with {_a(accent)} accent, a native English speaker"])


def _known(meta, key):
  value = meta.get(key)
  return None if value in (None, "varies") else value


def _join(parts: list[str]) -> str:
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _sentence_style(meta, rng):
  """'A young woman, speaking German, talking quickly, at a low volume and in a deep voice.'"""
  text = rng.choice(_WHO[(meta["gender"], meta["age_group"])])
  lang = _language_pp(meta, rng)
  if lang:
    text += f", {lang},"
  parts = []
  for key, table in (("rate_level", _RATE_ADV), ("loudness_level", _LOUD_ADV),
                     ("pitch_level", _PITCH_PP), ("quality", _QUALITY_PP)):
    value = _known(meta, key)
    if value is not None:
      parts.append(rng.choice(table[value]))
  rng.shuffle(parts)
  if parts:
    text += f" {rng.choice(['speaking', 'talking'])} {_join(parts)}"
  return _cap(text.rstrip(",")) + "."


def _sentences_style(meta, rng):
  """'This is an old man with a Scottish accent. His voice is deep. He speaks slowly.'"""
  gender = meta["gender"]
  subj, poss = _PRONOUN[gender]
  who = rng.choice(_WHO[(gender, meta["age_group"])])
  lang = _language_pp(meta, rng)
  first = rng.choice(["This is {w}", "The speaker is {w}", "Here {w} is talking",
                      "A recording of {w}"]).format(w=who)
  out = [first + (f", {lang}" if lang else "") + "."]
  voice = "the voice" if poss == "the" else f"{poss} voice"
  pitch, rate = _known(meta, "pitch_level"), _known(meta, "rate_level")
  loud, quality = _known(meta, "loudness_level"), _known(meta, "quality")
  more = []
  if pitch:
    adj = rng.choice(_PITCH_ADJ[pitch])
    more.append(rng.choice([f"{_cap(voice)} is {adj}.", f"{_cap(subj)} has {_a(adj)} voice."]))
  if rate:
    adv = rng.choice(_RATE_ADV[rate])
    more.append(rng.choice([f"{_cap(subj)} speaks {adv}.", f"{_cap(subj)} talks {adv}."]))
  if loud:
    adv = rng.choice(_LOUD_ADV[loud])
    more.append(f"{_cap(subj)} {rng.choice(['speaks', 'talks'])} {adv}.")
  if quality:
    more.append(rng.choice(_QUALITY_SENTENCES[quality]).format(S=_cap(subj), V=_cap(voice)))
  rng.shuffle(more)
  return " ".join(out + more)


def _tags_style(meta, rng):
  """'female, young adult, German accent, English, high-pitched, fast, quiet'."""
  tags = []
  if meta["gender"]:
    tags.append(rng.choice([meta["gender"], f"{meta['gender']} voice", f"{meta['gender']} speaker"]))
  tags.append({"child": "child", "elderly": rng.choice(["elderly", "old"]),
               "young adult": rng.choice(["young adult", "adult"])}[meta["age_group"]])
  if meta["language"] != "English":
    tags.append(rng.choice([meta["language"], f"{meta['language']} language"]))
  elif meta["english_accent"] == "foreign":
    tags += [f"{meta['accent']} accent", rng.choice(["foreign accent", "foreign-accented English"])]
  else:
    tags += [f"{meta['accent']} accent", "native English"]
  for key, table in (("pitch_level", {"high": ["high-pitched", "high pitch"],
                                      "low": ["low-pitched", "low pitch", "deep voice"],
                                      "mid": ["medium pitch", "average pitch"]}),
                     ("rate_level", {"fast": ["fast", "fast speech", "rapid speech"],
                                     "slow": ["slow", "slow speech"],
                                     "normal": ["moderate pace", "normal pace"]}),
                     ("loudness_level", {"loud": ["loud"], "quiet": ["quiet", "soft"],
                                         "normal": ["normal volume", "moderate volume"]}),
                     ("quality", {"whispered": ["whispered", "whispering"],
                                  "creaky": ["creaky voice", "croaky"],
                                  "shaky": ["shaky voice", "trembling voice"],
                                  "modal": ["clear voice", "smooth"]})):
    value = _known(meta, key)
    if value is not None:
      tags.append(rng.choice(table[value]))
  rng.shuffle(tags)
  return ", ".join(tags)


def _short_style(meta, rng):
  """'A loud, high-pitched female voice speaking quickly.' (a subset of the attributes)."""
  adjs = []
  for key, table in (("loudness_level", _LOUD_ADJ), ("pitch_level", _PITCH_ADJ),
                     ("quality", _QUALITY_ADJ)):
    value = _known(meta, key)
    if value is not None and table.get(value) and rng.random() < 0.6:
      adjs.append(rng.choice(table[value]))
  noun = {"male": "male voice", "female": "female voice", None: "child's voice"}[meta["gender"]]
  if meta["age_group"] == "elderly":
    noun = "elderly " + noun
  text = _a(" ".join(filter(None, [", ".join(adjs), noun])))
  rate = _known(meta, "rate_level")
  if rate and (rng.random() < 0.6 or not adjs):
    text += " speaking " + rng.choice(_RATE_ADV[rate])
  return _cap(text) + "."


def global_captions(meta, rng: random.Random) -> list[str]:
  """Four different true descriptions of the clip as a whole (SLAP-style alternatives)."""
  return [_sentence_style(meta, rng), _sentences_style(meta, rng), _tags_style(meta, rng),
          _short_style(meta, rng)]


_CHANGE = {
    "speeds_up": ["starts slowly and then speeds up",
                  "begins at an unhurried pace and ends up talking fast",
                  "speaks slowly at first, then much more quickly"],
    "slows_down": ["starts fast and then slows down",
                   "begins rapidly and ends at a slow, leisurely pace",
                   "speaks quickly at first, then much more slowly"],
    "pitch_rises": ["starts in a low-pitched voice and then rises to a high pitch",
                    "begins with a deep voice and ends high-pitched",
                    "speaks at a low pitch first, then switches to a high pitch"],
    "pitch_falls": ["starts in a high-pitched voice and then drops to a low pitch",
                    "begins high-pitched and ends with a deep voice",
                    "speaks at a high pitch first, then switches to a low pitch"],
    "gets_louder": ["starts quietly and then gets loud",
                    "begins softly and ends up speaking loudly",
                    "speaks at a low volume first, then raises the voice to a high volume"],
    "gets_quieter": ["starts loudly and then gets quiet",
                     "begins at a high volume and ends up speaking softly",
                     "speaks loudly first, then lowers the voice to a quiet murmur"],
}
_CHANGED_KEY = {"speeds_up": "rate_level", "slows_down": "rate_level",
                "pitch_rises": "pitch_level", "pitch_falls": "pitch_level",
                "gets_louder": "loudness_level", "gets_quieter": "loudness_level"}


def fine_captions(meta, rng: random.Random) -> list[str]:
  """Two narrations of the clip over time (CLSP's fine-grained captions)."""
  gender = meta["gender"]
  out = []
  whos = rng.sample(_WHO[(gender, meta["age_group"])], 2)
  change = meta.get("change")
  for i, who in enumerate(whos):
    lang = _language_pp(meta, rng) if i == 0 else None
    subject = _cap(who) + (f", {lang}," if lang else "")
    if change:
      steady = [k for k in ("rate_level", "pitch_level", "loudness_level")
                if k != _CHANGED_KEY[change] and _known(meta, k)]
      text = f"{subject} {rng.choice(_CHANGE[change])}"
      if steady:
        key = rng.choice(steady)
        table = {"rate_level": _RATE_ADV, "pitch_level": _PITCH_PP,
                 "loudness_level": _LOUD_ADV}[key]
        text += f", speaking {rng.choice(table[meta[key]])} throughout"
      out.append(text + ".")
    else:
      bits = [f"speaks {rng.choice(_RATE_ADV[r])}" for r in [_known(meta, "rate_level")] if r]
      loud, pitch = _known(meta, "loudness_level"), _known(meta, "pitch_level")
      keep = [x for x in (loud and f"{rng.choice(_LOUD_ADV[loud])}",
                          pitch and rng.choice(_PITCH_PP[pitch])) if x]
      rng.shuffle(keep)
      text = f"{subject} " + (bits[0] if bits else "speaks")
      text += rng.choice([" from start to finish", " all the way through", " the whole time"])
      if keep:
        text += ", " + " and ".join(keep) + ", " + rng.choice(
            ["with an unchanging delivery", "keeping the same delivery throughout",
             "in an even, steady delivery"])
      out.append(text + ".")
  return [re.sub(r"\s+", " ", c) for c in out]
