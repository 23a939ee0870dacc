"""A seeded generator of English-like sentences for the synthetic corpus.

The vocabulary is built here, without downloads: about a thousand common English words written out
below (nouns, verbs with their past tense, adjectives, adverbs, function words), their regular
inflections (plurals, ``-ING`` forms, possessives), and proper names made from syllable
combinatorics, in all a few thousand distinct words. A small grammar (clauses of noun phrase + verb
phrase with optional prepositional phrases, joined by conjunctions, plus questions and quotations)
turns them into sentences of 4-25 words. Transcripts hold only ``A-Z``, apostrophe and single spaces,
as LibriSpeech's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

_NOUNS = """
act age air animal answer apple arm army art aunt baby back bag ball band bank bar basket bath bed bell
bird boat body bone book boot bottle box boy bread bridge brother bucket building cake camp candle cap
captain car card care carriage cart castle cat cause chain chair chance chapter child church circle city
class clock cloth cloud coat coffee cold colour company corner cottage country course court cousin cow
crowd cup curtain daughter day deal death desk dinner doctor dog door dream dress drink duty ear earth
edge egg end engine evening eye face fact family farm father fear feeling field figure finger fire fish
flag floor flower food foot forest fork friend front fruit garden gate gentleman ghost gift girl glass
glove gold government grass ground group guard guest gun hair hall hand hat head heart hill history hole
home hope horse hospital hotel hour house husband ice idea inch island journey judge key kind king
kitchen knee knife lady lake lamp land language law leaf leg letter level library light line lion lip
list lord lot love machine man map mark market master meal meeting memory message middle mind minute
mirror moment money month moon morning mother mountain mouth music name nation neck needle neighbour
nest news night noise north nose note number ocean office officer oil orange order owner page pain paint
pair paper parent park party path pen pencil people person picture piece pig pin pipe place plan plant
plate pocket poem point police pool post pot power price prince princess prison problem promise queen
question rain reason record rest river road rock roof room root rope rose rule sail salt sand school sea
season seat secret servant shadow shape sheep shelf ship shirt shoe shop shore side sign silver sister
sky sleep smile smoke snow soldier son song sound soup south space spring square stage star station step
stick stone store storm story street string student sugar summer sun supper table tail tea teacher
tear temple thing thought thread throat ticket time tongue tooth top tower town toy track train tree
trouble truth turn uncle valley village voice wall war watch water wave way weather week wheel wife wind
window wing winter woman wood word work world year youth
"""

_IRREGULAR_PLURALS = {
    "child": "children", "foot": "feet", "man": "men", "woman": "women", "tooth": "teeth",
    "mouse": "mice", "sheep": "sheep", "person": "people", "gentleman": "gentlemen", "knife": "knives",
    "leaf": "leaves", "wife": "wives", "shelf": "shelves", "people": "peoples",
}

# (present, past) pairs; transitive verbs take an object.
_TRANSITIVE = """
accept:accepted admire:admired answer:answered ask:asked bake:baked bear:bore beat:beat begin:began
bind:bound bite:bit blow:blew borrow:borrowed break:broke bring:brought build:built burn:burned
buy:bought call:called carry:carried catch:caught change:changed choose:chose clean:cleaned close:closed
cover:covered cross:crossed cut:cut defend:defended describe:described destroy:destroyed discover:discovered
draw:drew drink:drank drive:drove drop:dropped eat:ate enjoy:enjoyed enter:entered explain:explained
fear:feared feed:fed feel:felt fill:filled find:found fix:fixed follow:followed forget:forgot
forgive:forgave gather:gathered give:gave greet:greeted grow:grew guard:guarded hate:hated hear:heard
help:helped hide:hid hit:hit hold:held hunt:hunted join:joined keep:kept kill:killed kiss:kissed
know:knew lead:led leave:left lend:lent lift:lifted like:liked love:loved make:made mark:marked meet:met
mend:mended miss:missed move:moved need:needed notice:noticed open:opened order:ordered own:owned
paint:painted pass:passed pay:paid pick:picked plant:planted play:played pour:poured praise:praised
prepare:prepared promise:promised protect:protected pull:pulled push:pushed raise:raised reach:reached
read:read receive:received remember:remembered repair:repaired ride:rode ring:rang save:saved say:said
see:saw seek:sought sell:sold send:sent serve:served shake:shook share:shared shoot:shot show:showed
sing:sang steal:stole strike:struck study:studied take:took teach:taught tell:told thank:thanked
throw:threw touch:touched trust:trusted understand:understood visit:visited want:wanted wash:washed
watch:watched wear:wore win:won wish:wished write:wrote
"""

_INTRANSITIVE = """
appear:appeared arrive:arrived awake:awoke bow:bowed climb:climbed come:came cough:coughed cry:cried
dance:danced die:died dream:dreamed fall:fell fight:fought float:floated fly:flew freeze:froze
go:went hesitate:hesitated hurry:hurried jump:jumped kneel:knelt laugh:laughed lie:lay listen:listened
live:lived nod:nodded pause:paused pray:prayed rest:rested return:returned rise:rose run:ran sigh:sighed
sink:sank sit:sat sleep:slept smile:smiled speak:spoke stand:stood stay:stayed stop:stopped swim:swam
talk:talked tremble:trembled turn:turned vanish:vanished wait:waited wake:woke walk:walked wander:wandered
weep:wept whisper:whispered work:worked
"""

_ADJECTIVES = """
able afraid ancient angry anxious bad beautiful big bitter black blind blue bold brave bright brilliant
broad broken brown busy calm careful certain cheap cheerful clean clear clever close cold common cool
cruel curious dark dead dear deep different difficult dirty dry dull eager early easy empty entire
equal evil fair faithful false familiar famous far fast fat fierce fine firm flat foolish foreign free
fresh friendly full gentle glad golden good grand grateful great green grey happy hard heavy high
hollow honest hot huge humble hungry ill important innocent kind large late lazy light little lonely
long loud low lucky mad merry mighty modern narrow natural near neat new nice noble old open pale
patient perfect plain pleasant polite poor pretty proud pure quick quiet rapid rare ready real red
rich right rough round royal rude sad safe sharp short silent silly simple slow small smooth soft
solemn sorry sour splendid square steady steep stiff still strange strict strong stupid sudden sweet
swift tall tender thick thin tired tiny true ugly useful vast violent warm weak wet white whole wide
wild wise wonderful wooden worthy wrong yellow young
"""

_ADVERBS = """
again almost already also always away badly brightly calmly carefully certainly clearly closely
slowly quickly quietly loudly gently softly suddenly happily sadly easily early late often never
perhaps rather really seldom sometimes soon still together tonight truly twice usually very well
yesterday abroad afterwards ahead anxiously boldly bravely eagerly everywhere finally firmly fiercely
forward gladly here home indeed instantly kindly lately merely nearly nowhere once politely proudly
simply somewhere steadily swiftly there then today tomorrow warmly wisely
"""

_PREPOSITIONS = """
about above across after against along among around at before behind below beneath beside between
beyond by down during for from in inside into near of off on onto out outside over past through
toward towards under until up upon with within without
"""

_DETERMINERS = "the the the a a this that every some no one another each his her their our my your"
_PLURAL_DETERMINERS = "the the some many these those few several all his her their our my two three"
_PRONOUNS = "he she they we i you it nobody everyone someone"
_OBJECT_PRONOUNS = "him her them us me you it nobody everyone someone"
_CONJUNCTIONS = "and and but so because while when although until before after since or yet"
_SAY_VERBS = "said replied cried whispered answered asked shouted murmured added thought"
_CONTRACTIONS = "don't didn't couldn't wouldn't can't isn't wasn't won't i'm it's that's there's we'll you'll"
_NUMBERS = "one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred"

_ONSETS = "b br c ch cl d dr f fl g gr h j k l m n p pr r s sh st t th tr v w z".split()
_VOWELS = "a e i o u ai ea ee oo ou ar er or".split()
_CODAS = ["", "", "n", "r", "l", "s", "m", "th", "nd", "rt", "ck", "st", "x", "ll"]


def _split(text: str) -> list[str]:
    return text.upper().split()


def _pairs(text: str) -> list[tuple[str, str]]:
    return [tuple(item.upper().split(":")) for item in text.split()]  # type: ignore[misc]


def _plural(noun: str) -> str:
    low = noun.lower()
    if low in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[low].upper()
    if low.endswith(("s", "x", "ch", "sh")):
        return noun + "ES"
    if low.endswith("y") and low[-2] not in "aeiou":
        return noun[:-1] + "IES"
    return noun + "S"


def _ing(verb: str) -> str:
    low = verb.lower()
    if low.endswith("ie"):
        return verb[:-2] + "YING"
    if low.endswith("e") and not low.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ING"
    return verb + "ING"


def _names(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        syllables = rng.choice((2, 2, 2, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables - 1))
        word += rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        names.add(word.upper())
    return sorted(names)


@dataclass(frozen=True)
class Vocabulary:
    """Word classes the grammar draws from (all uppercase)."""

    nouns: tuple[str, ...]
    plurals: tuple[str, ...]
    transitive: tuple[tuple[str, str], ...]
    intransitive: tuple[tuple[str, str], ...]
    adjectives: tuple[str, ...]
    adverbs: tuple[str, ...]
    prepositions: tuple[str, ...]
    names: tuple[str, ...]
    places: tuple[str, ...]

    def words(self) -> set[str]:
        """Every distinct word the generator can emit."""
        out: set[str] = set(self.nouns) | set(self.plurals) | set(self.adjectives) | set(self.adverbs)
        for present, past in self.transitive + self.intransitive:
            out |= {present, past, _ing(present)}
        out |= set(self.prepositions) | set(self.names) | set(self.places)
        out |= {n + "'S" for n in self.names} | {n + "'S" for n in self.nouns}
        for text in (_DETERMINERS, _PLURAL_DETERMINERS, _PRONOUNS, _OBJECT_PRONOUNS, _CONJUNCTIONS, _SAY_VERBS,
                     _CONTRACTIONS, _NUMBERS):
            out |= set(_split(text))
        out |= {"WAS", "WERE", "HAD", "THAT", "WHERE", "WHY", "HOW", "WHAT", "DID", "NOT", "THE", "IN", "OF"}
        return out


@lru_cache(maxsize=1)
def build_vocabulary() -> Vocabulary:
    """The fixed vocabulary (the same for every seed; only sentences depend on the seed)."""
    rng = random.Random(20240601)
    nouns = tuple(_split(_NOUNS))
    generated = _names(rng, 1600)
    return Vocabulary(
        nouns=nouns,
        plurals=tuple(_plural(n) for n in nouns),
        transitive=tuple(_pairs(_TRANSITIVE)),
        intransitive=tuple(_pairs(_INTRANSITIVE)),
        adjectives=tuple(_split(_ADJECTIVES)),
        adverbs=tuple(_split(_ADVERBS)),
        prepositions=tuple(_split(_PREPOSITIONS)),
        names=tuple(generated[::2]),
        places=tuple(generated[1::2]),
    )


class SentenceGenerator:
    """Seeded sentences of ``min_words``-``max_words`` words from :func:`build_vocabulary`.

    Args:
        seed: the random seed; equal seeds give equal sentence streams.
        min_words: shortest sentence (default 4).
        max_words: longest sentence (default 25).
    """

    def __init__(self, seed: int, min_words: int = 4, max_words: int = 25) -> None:
        if not 1 <= min_words <= max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
        self.rng = random.Random(seed)
        self.vocab = build_vocabulary()
        self.min_words = min_words
        self.max_words = max_words

    def sentence(self) -> str:
        """One uppercase sentence without punctuation, e.g. ``"THE OLD CAPTAIN SAW HER BY THE RIVER"``."""
        rng = self.rng
        target = rng.randint(self.min_words, self.max_words)
        for _ in range(100):
            words = self._clause()
            while len(words) < target:
                words = words + [rng.choice(_split(_CONJUNCTIONS))] + self._clause()
            if len(words) > self.max_words:
                words = self._trim(words)
            if self.min_words <= len(words) <= self.max_words:
                return " ".join(words)
        raise RuntimeError("sentence generator failed to meet the length bounds")  # pragma: no cover

    def _trim(self, words: list[str]) -> list[str]:
        """Cut at the last conjunction that leaves at most ``max_words`` words."""
        conjunctions = set(_split(_CONJUNCTIONS))
        for cut in range(self.max_words, 0, -1):
            if words[cut - 1] not in conjunctions and (cut == len(words) or words[cut] in conjunctions):
                return words[:cut]
        return words[: self.max_words]

    def _clause(self) -> list[str]:
        rng = self.rng
        kind = rng.random()
        if kind < 0.08:
            said = rng.choice(_split(_SAY_VERBS))
            return [*self._subject(), said, *rng.choice(([], ["THAT"])), *self._simple_clause()]
        if kind < 0.14:
            wh = rng.choice(["WHERE", "WHY", "HOW", "WHEN", "WHAT"])
            verb, _ = rng.choice(self.vocab.transitive)
            return [wh, "DID", *self._subject(), verb, *self._object()]
        if kind < 0.2:
            c = rng.choice(_split(_CONTRACTIONS))
            return [*self._subject(), c, *self._verb_phrase(present=True)]
        return self._simple_clause()

    def _simple_clause(self) -> list[str]:
        return [*self._subject(), *self._verb_phrase()]

    def _subject(self) -> list[str]:
        r = self.rng.random()
        if r < 0.25:
            return [self.rng.choice(_split(_PRONOUNS))]
        if r < 0.4:
            return [self.rng.choice(self.vocab.names)]
        return self._noun_phrase()

    def _object(self) -> list[str]:
        r = self.rng.random()
        if r < 0.2:
            return [self.rng.choice(_split(_OBJECT_PRONOUNS))]
        if r < 0.3:
            return [self.rng.choice(self.vocab.names)]
        return self._noun_phrase()

    def _noun_phrase(self) -> list[str]:
        rng, v = self.rng, self.vocab
        adjectives = [rng.choice(v.adjectives) for _ in range(rng.choice((0, 0, 1, 1, 2)))]
        r = rng.random()
        if r < 0.3:
            return [rng.choice(_split(_PLURAL_DETERMINERS)), *adjectives, rng.choice(v.plurals)]
        if r < 0.4:
            owner = rng.choice(v.names) + "'S"
            return [owner, *adjectives, rng.choice(v.nouns)]
        if r < 0.45:
            return [rng.choice(_split(_NUMBERS)), *adjectives, rng.choice(v.plurals)]
        det = rng.choice(_split(_DETERMINERS))
        return [det, *adjectives, rng.choice(v.nouns)]

    def _verb_phrase(self, present: bool = False) -> list[str]:
        rng, v = self.rng, self.vocab
        words: list[str] = []
        if rng.random() < 0.5:
            present_form, past = rng.choice(v.transitive)
            if not present and rng.random() < 0.15:
                words += [rng.choice(["WAS", "WERE"]), _ing(present_form)]
            else:
                words.append(present_form if present else past)
            words += self._object()
        else:
            present_form, past = rng.choice(v.intransitive)
            words.append(present_form if present else past)
        if rng.random() < 0.3:
            words.append(rng.choice(v.adverbs))
        if rng.random() < 0.4:
            words += [rng.choice(v.prepositions), *self._place_or_noun()]
        return words

    def _place_or_noun(self) -> list[str]:
        if self.rng.random() < 0.2:
            return [self.rng.choice(self.vocab.places)]
        return self._noun_phrase()
