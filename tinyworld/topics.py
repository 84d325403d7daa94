"""The synthetic world behind prefloop's tiny, offline demo.

Everything the demo's models learn comes from here, in pure Python and deterministic given a seed:

- ``TOPICS``: 45 topics, each a name (``"bees"``) and a small vocabulary (``honey``, ``hive``, ...). No word
  belongs to two topics, so "which topic is this word about" has one answer.
- ``FORMS``: instruction forms (explain, list, describe, write a note about, compare, ...), which turn topics
  into prompts; ``write_prompt_files`` writes the shipped train / held-out prompt sets.
- ``make_answer``: answers in the style the tiny policy is pre-trained on. Each sentence is about the
  prompt's topic or drifts to another one ("By the way, ..."), and answers run from one to four sentences,
  so a policy trained on them samples answers that vary on exactly what the judges care about.
  ``repeat_answer``: the same answer with one sentence said twice, what an over-optimised policy writes.

The gold preference over these answers (stay on topic, cover several topic words, do not repeat a sentence,
keep a moderate length) is ``prefloop.tinyworld.gold.gold_score``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

# name -> vocabulary. Names and words are all distinct, and none is a filler word of the templates below.
TOPICS: dict[str, tuple[str, ...]] = {
    "bees": ("honey", "hive", "queen", "pollen", "nectar", "wings", "swarm", "beekeeper"),
    "volcanoes": ("lava", "magma", "crater", "ash", "eruption", "summit", "basalt", "vent"),
    "gardening": ("soil", "seeds", "compost", "weeds", "shovel", "sprouts", "mulch", "watering"),
    "astronomy": ("telescope", "planets", "galaxy", "comet", "orbit", "nebula", "stars", "moon"),
    "cooking": ("recipe", "oven", "spices", "skillet", "simmer", "dough", "flavor", "kitchen"),
    "chess": ("knight", "bishop", "checkmate", "pawn", "rook", "opening", "endgame", "board"),
    "oceans": ("waves", "tides", "coral", "salt", "reef", "currents", "whales", "shore"),
    "trains": ("rails", "station", "locomotive", "carriage", "timetable", "platform", "conductor", "tracks"),
    "music": ("melody", "rhythm", "chords", "guitar", "piano", "tempo", "harmony", "song"),
    "weather": ("clouds", "rain", "thunder", "forecast", "wind", "humidity", "storm", "sunshine"),
    "coffee": ("beans", "espresso", "roast", "grinder", "caffeine", "brew", "mug", "barista"),
    "cycling": ("bicycle", "pedals", "helmet", "gears", "saddle", "tires", "chain", "ride"),
    "forests": ("trees", "moss", "canopy", "leaves", "bark", "ferns", "roots", "woodland"),
    "photography": ("camera", "lens", "shutter", "aperture", "portrait", "exposure", "tripod", "flash"),
    "painting": ("canvas", "brush", "palette", "pigment", "easel", "watercolor", "sketch", "gallery"),
    "running": ("marathon", "sneakers", "pace", "stride", "sprint", "stamina", "finish", "jog"),
    "libraries": ("books", "shelves", "librarian", "catalog", "reading", "borrowing", "archive", "novels"),
    "robots": ("sensors", "motors", "circuits", "servo", "automation", "gripper", "battery", "controller"),
    "birds": ("feathers", "nest", "beak", "eggs", "flight", "migration", "songbird", "perch"),
    "bread": ("flour", "yeast", "crust", "loaf", "knead", "baking", "rye", "crumb"),
    "mountains": ("peak", "ridge", "glacier", "slope", "climbers", "altitude", "valley", "trail"),
    "cats": ("whiskers", "purr", "kitten", "paws", "claws", "litter", "tabby", "meow"),
    "dogs": ("puppy", "leash", "fetch", "kennel", "collar", "breed", "tail", "bone"),
    "rivers": ("stream", "delta", "rapids", "estuary", "canoe", "bridge", "flow", "waterfall"),
    "deserts": ("sand", "dunes", "cactus", "oasis", "camel", "heat", "drought", "mirage"),
    "tea": ("kettle", "matcha", "steep", "cup", "herbal", "oolong", "teabag", "chai"),
    "computers": ("keyboard", "processor", "memory", "software", "screen", "mouse", "laptop", "code"),
    "soccer": ("goal", "striker", "referee", "pitch", "ball", "penalty", "goalkeeper", "league"),
    "cheese": ("cheddar", "milk", "aged", "brie", "wedge", "dairy", "rind", "curd"),
    "history": ("empire", "kings", "ancient", "century", "battle", "ruins", "dynasty", "chronicle"),
    "medicine": ("doctor", "vaccine", "nurse", "clinic", "patient", "dose", "therapy", "symptoms"),
    "languages": ("grammar", "verbs", "accent", "dictionary", "fluent", "syntax", "translation", "idiom"),
    "mathematics": ("numbers", "equation", "algebra", "proof", "geometry", "fraction", "theorem", "calculus"),
    "sleep": ("dreams", "pillow", "bedtime", "nap", "rest", "blanket", "snoring", "insomnia"),
    "swimming": ("pool", "strokes", "goggles", "lanes", "diving", "freestyle", "lifeguard", "splash"),
    "winter": ("snow", "frost", "ice", "sledding", "mittens", "scarf", "snowman", "chilly"),
    "butterflies": ("caterpillar", "cocoon", "monarch", "larva", "meadow", "colorful", "antennae", "flutter"),
    "money": ("savings", "budget", "coins", "bank", "interest", "wallet", "spending", "cash"),
    "dinosaurs": ("fossils", "raptor", "jurassic", "extinct", "tyrannosaurus", "skeleton", "asteroid", "herbivore"),
    "camping": ("tent", "campfire", "lantern", "backpack", "hike", "marshmallows", "wilderness", "compass"),
    "pizza": ("mozzarella", "slice", "toppings", "tomato", "pepperoni", "basil", "delivery", "pizzeria"),
    "recycling": ("plastic", "bins", "glass", "paper", "waste", "reuse", "sorting", "landfill"),
    "electricity": ("voltage", "wires", "outlet", "power", "switch", "resistor", "amps", "generator"),
    "knitting": ("yarn", "needles", "wool", "stitches", "sweater", "pattern", "loops", "knit"),
    "airplanes": ("pilot", "runway", "cockpit", "jet", "airport", "takeoff", "landing", "cabin"),
}
TOPIC_NAMES: tuple[str, ...] = tuple(TOPICS)

# word -> the topic it belongs to (a topic's name counts as one of its words).
WORD_TOPIC: dict[str, str] = {w: name for name, words in TOPICS.items() for w in (name, *words)}

# Instruction forms. ``{t}`` and ``{u}`` are topic names; forms with ``{u}`` compare two topics.
FORMS: tuple[str, ...] = (
    "Explain {t}.",
    "Tell me about {t}.",
    "Write a short note about {t}.",
    "List a few facts about {t}.",
    "Describe {t} in simple words.",
    "What should a beginner know about {t}?",
    "Give me a quick tip about {t}.",
    "Why do people like {t}?",
    "Summarize the basics of {t}.",
    "Teach me something about {t}.",
    "What is interesting about {t}?",
    "How would you introduce {t} to a friend?",
    "Share a fun fact about {t}.",
    "Write two sentences about {t}.",
    "Compare {t} and {u}.",
    "How are {t} and {u} different?",
    "What do {t} and {u} have in common?",
)

# Sentence shapes; {a} {b} {c} are words of the sentence's topic. No shape starts with a topic word, so
# topic words are never capitalised: fewer word forms, which the ~1000-token BPE then keeps whole.
SENTENCES: tuple[str, ...] = (
    "Think of {a} and {b} together.",
    "Most people think of {a} and {b}.",
    "The {a} matters more than the {b}.",
    "It starts with {a} and ends with {b}.",
    "You often see {a} near {b}.",
    "A good {a} needs some {b}.",
    "Learn about {a}, {b} and {c}.",
    "There is a lot of {a} in it.",
    "Watch the {a} closely.",
    "The {a} can change the {b}.",
    "Try to keep the {a} simple.",
    "Many guides mention {a} first.",
)
OPENERS: tuple[str, ...] = ("Sure.", "Here is a short answer.", "Good question.", "Of course.")
# A sentence that leaves the prompt's topic announces it, as digressions in real answers often do. This is
# what lets judges as tiny as the demo's see drift at all: recognising "is this word about the prompt's
# topic" from pairwise labels alone takes a 2-layer judge far longer than the demo's build budget.
DIGRESSIONS: tuple[str, ...] = ("By the way,", "On another note,", "Unrelated, but", "Speaking of something else,")

# The on-topic share of an answer, drawn uniformly from these: mostly on topic (mean 0.71), as a pre-trained
# assistant is, so its greedy answer opens on topic and the rounds improve a fair answer rather than fix a
# broken one (with the share uniform over 0..1, greedy decoding opened with a digression on most prompts).
ON_TOPIC_SHARES = (1.0, 1.0, 0.75, 0.75, 0.5, 0.25)
# Sentences per answer, drawn uniformly from these: one-sentence answers are rare, so greedy decoding does not
# stop after the first sentence (with 1..4 uniform, end-of-answer was the likeliest token there, and greedy
# answers were one short sentence that preference pairs, whose losers are long drifting answers, never grew).
N_SENTENCES = (1, 2, 2, 3, 3, 4, 4, 4)
_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    """Lower-case alphabetic words: the unit the preference counts in."""
    return _WORD.findall(text.lower())


# Every word this world writes: topic names and vocabularies, and the words of the prompt and answer templates.
LEXICON: frozenset[str] = frozenset(WORD_TOPIC) | frozenset(
    w for text in SENTENCES + OPENERS + DIGRESSIONS + FORMS for w in words_of(re.sub(r"\{\w\}", "", text)))
_SPLICE = tuple(sorted(LEXICON))


def prompt_topics(prompt: str) -> set[str]:
    """The topics a prompt names (by topic name; a word of the vocabulary does not count)."""
    return {w for w in words_of(prompt) if w in TOPICS}


def make_prompt(rng: random.Random, form: str | None = None, topic: str | None = None) -> tuple[str, list[str]]:
    """One prompt and the topics it names."""
    form = form or rng.choice(FORMS)
    t = topic or rng.choice(TOPIC_NAMES)
    if "{u}" not in form:
        return form.format(t=t), [t]
    u = rng.choice([n for n in TOPIC_NAMES if n != t])
    return form.format(t=t, u=u), [t, u]


def make_sentence(rng: random.Random, topic: str) -> str:
    """One sentence about ``topic``; the name itself is one of the words it may use."""
    a, b, c = rng.sample((topic, *TOPICS[topic]), 3)
    return rng.choice(SENTENCES).format(a=a, b=b, c=c)


def _garble(rng: random.Random, word: str) -> str:
    """A non-word spliced from two words ("blanketoms"), as a tiny policy writes when it loses the thread."""
    other = rng.choice(_SPLICE)
    return word[: rng.randint(1, max(1, len(word) - 1))] + other[rng.randint(1, max(1, len(other) - 1)):]


def _corrupt(rng: random.Random, text: str) -> str:
    """Slips of the kind a tiny model's samples show: a dropped word, a repeat, a cut-off end, non-words."""
    ws = text.split()
    kind = rng.randrange(4)
    if kind == 0 and len(ws) > 3:
        del ws[rng.randrange(len(ws))]
    elif kind == 1:
        i = rng.randrange(len(ws))
        ws.insert(i, ws[i])
    elif kind == 2 and len(ws) > 4:
        ws = ws[: rng.randrange(len(ws) // 2, len(ws))]
    else:
        return garble(rng, text, rng.uniform(0.1, 0.6))
    return " ".join(ws)


def garble(rng: random.Random, text: str, share: float) -> str:
    """``text`` with about ``share`` of its words replaced by spliced non-words (punctuation kept)."""
    out = []
    for w in text.split():
        core = w.rstrip(".,")
        out.append(_garble(rng, core) + w[len(core):] if core and rng.random() < share else w)
    return " ".join(out)


def make_answer(rng: random.Random, topics: list[str], on_topic: float | None = None,
                n_sentences: int | None = None, noise: float = 0.0, marked: float = 1.0) -> str:
    """An answer to a prompt about ``topics``.

    Each sentence is about one of ``topics`` with probability ``on_topic`` (drawn per answer from
    ``ON_TOPIC_SHARES`` when not given), else about one "drift" topic picked for this answer, and then
    opens with a digression marker ("By the way, ...") with probability ``marked``. So answers range from
    fully on topic to fully off.
    ``n_sentences`` is drawn from ``N_SENTENCES`` when not given; ``noise`` is the chance of a small slip (see
    ``_corrupt``), used to make the judges robust to a tiny policy's samples.
    """
    p = rng.choice(ON_TOPIC_SHARES) if on_topic is None else on_topic
    n = rng.choice(N_SENTENCES) if n_sentences is None else n_sentences
    drift = rng.choice([t for t in TOPIC_NAMES if t not in topics])
    parts = [rng.choice(OPENERS)] if rng.random() < 0.25 else []
    for _ in range(n):
        if rng.random() < p:
            parts.append(make_sentence(rng, rng.choice(topics)))
        else:
            sentence = make_sentence(rng, drift)
            if rng.random() < marked:
                sentence = f"{rng.choice(DIGRESSIONS)} {sentence[0].lower()}{sentence[1:]}"
            parts.append(sentence)
    text = " ".join(parts)
    return _corrupt(rng, text) if rng.random() < noise else text


def repeat_answer(rng: random.Random, answer: str) -> str:
    """``answer`` with one of its sentences said again, right after itself or at the end."""
    parts = [p for p in re.split(r"(?<=[.!?])\s+", answer.strip()) if p]
    i = rng.randrange(len(parts))
    at = i + 1 if rng.random() < 0.5 else len(parts)
    return " ".join(parts[:at] + [parts[i]] + parts[at:])


# ---- the shipped prompt files ----

DATA_DIR = Path(__file__).resolve().parent / "data"
PROMPTS_FILE = DATA_DIR / "prompts.jsonl"
HELDOUT_FILE = DATA_DIR / "heldout.jsonl"


def prompt_splits(seed: int = 0, n_train: int = 340, n_heldout: int = 64) -> tuple[list[dict], list[dict]]:
    """Train and held-out prompt records, disjoint by text, covering every form and every topic.

    Every (form, first topic) pair is a candidate; compare forms get a random second topic. The candidates
    are shuffled with ``seed`` and split, so both splits mix forms and topics.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    records: list[tuple[str, list[str]]] = []
    for form in FORMS:
        for topic in TOPIC_NAMES:
            text, topics = make_prompt(rng, form, topic)
            if text not in seen:
                seen.add(text)
                records.append((text, topics))
    rng.shuffle(records)
    if n_train + n_heldout > len(records):
        raise ValueError(f"only {len(records)} distinct prompts, asked for {n_train} + {n_heldout}")

    def rows(chunk: list[tuple[str, list[str]]], prefix: str) -> list[dict]:
        return [{"prompt_id": f"{prefix}-{i:04d}", "prompt": text, "topics": topics}
                for i, (text, topics) in enumerate(chunk)]

    return rows(records[:n_train], "train"), rows(records[n_train:n_train + n_heldout], "heldout")


def write_prompt_files(directory: Path | str = DATA_DIR, seed: int = 0) -> tuple[Path, Path]:
    """Write ``prompts.jsonl`` (train) and ``heldout.jsonl`` into ``directory``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train, heldout = prompt_splits(seed)
    paths = (directory / "prompts.jsonl", directory / "heldout.jsonl")
    for path, rows in zip(paths, (train, heldout)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


if __name__ == "__main__":  # regenerate the shipped files: python -m prefloop.tinyworld.topics
    for p in write_prompt_files():
        print(p)
