"""The curated group list of the lexical watermark's substitution table, with the reason for every condition.

Data only: ``scripts/build_lexicon.py`` checks each content-word group against WordNet and writes
``watermark/data/lexicon.json``. Group ids are derived from the variants (and the sentence-start flag): changing a
group's variants changes its id, and texts watermarked with the old id lose that slot's evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lexicon_words import (
    BECAUSE_PREV_NOT,
    BIG_TERM_NEXT,
    BUT_NOT_YET_NEXT,
    CLAUSE_SUBJECTS,
    CONSONANT_SOUND,
    COPULAS,
    DETERMINERS,
    EACH_APIECE_NEXT,
    EACH_ING_AFTER,
    EACH_ING_NOUNS,
    EACH_NOT_SUFFIX,
    EACH_OF_TWO,
    EACH_VERB_NEXT,
    EVERY_ONLY_PREV,
    FEW_PRONOUN_NEXT,
    HAD_ADVERBS,
    HALF_NOUN_BEFORE,
    HAS_ADVERBS,
    HELP_SAFE_NEXT,
    IMMEDIATELY_PLACE_NEXT,
    IT_OBJECT_PREV,
    LET_VERBS,
    LIKE_COMPARISON_NEXT,
    MANY_PRONOUN_VERBS,
    MAY_OPTATIVE_NEXT,
    NEED_NOUN_PREV,
    NO_ONE_NOUN_NEXT,
    NORMALLY_MANNER_PREV,
    NUMBER_WORDS,
    ORDINALS,
    PARTICIPLE_HINTS,
    POSSESSIVES,
    PRODUCT_PREV,
    RELATIONS,
    SHOW_OBJECT_NEXT,
    SO_DISCOURSE_NEXT,
    SO_NARRATIVE_NEXT,
    SPECIFIC_PRED_NEXT,
    START_OBJECT_NEXT,
    STEP_OBJECTS,
    STEP_REASON,
    STEP_SLOT,
    STEP_VERBS,
    SUBJECTS,
    THEN_STEP_VERBS,
    THERE_PLACE_PREV,
    ULTIMATELY_BASIC_NEXT,
    UNITS,
    VERB_SLOT,
    VOWEL_SOUND,
)


@dataclass
class Group:
    variants: list[str]
    pos: str = ""  # WordNet part of speech for checking ("n", "v", "a", "r"); "" = grammar rule
    need_next_word: bool = False  # not at the end of a clause / line
    comma_after: bool = False  # only when directly followed by a comma ("Furthermore, ...")
    next_not: list[str] = field(default_factory=list)
    next_in: list[str] = field(default_factory=list)
    prev_not: list[str] = field(default_factory=list)
    next_not_participle: bool = False  # not before "been", "-ed" words, ... ("it's been" is "it has been")
    level: int = 1  # 1: every response; 2: only the "strong" strength (suspicious tiers)
    prev_in: list[str] = field(default_factory=list)  # only right after one of these words (verb contexts)
    after_comma: bool = False  # only right after a comma (", but" -> ", yet")
    next_number: bool = False  # only right before a number ("about 5" -> "around 5")
    next_word_only: bool = False  # only before a plain word, never a number or symbol ("every 6 hours", "$4 each =")
    sentence_start: bool | None = None  # True: only starting a sentence; False: only inside one
    after_quantity: bool = False  # only after a number or a QUANTITY word ("$5 a day" <-> "$5 per day")
    quantities: list[str] | None = None  # the words that count as a quantity (None: QUANTITIES; []: numbers only)
    before_punct: bool = False  # only at the end of a clause: directly followed by . ; : ! or ?
    after_break: bool = False  # only after a clause break: , ; or a dash, or "and"/"but"/"or"/"yet"
    lemmas: list[str] = field(default_factory=list)  # WordNet lemmas to check when variants are inflected
    # Strong-tier (level 2) groups may skip the WordNet check when WordNet splits the senses finer than the
    # context conditions do; the reason is recorded in the table.
    curated: str = ""
    # Level-1 content-word groups whose shared sense is fixed by their context conditions (a step word before,
    # an arithmetic object after) rather than by one WordNet synset; the reason is recorded in the table.
    context: str = ""
    # 's groups: after an adverb in HAS_LOOKAHEAD_ADVERBS read one more word; a participle there means "has"
    adverb_lookahead: bool = False
    next_not_suffix: list[str] = field(default_factory=list)  # not before a word with one of these endings
    suffix_nouns: list[str] = field(default_factory=list)  # ... except these (nouns: "every morning")
    suffix_prev_ok: list[str] = field(default_factory=list)  # ... or right after one of these words
    next_not_date: bool = False  # never before a year or a clock time ("since 1958", "since 9:30")
    # the table revision that adds the group: the table is append-only, and verification scores a text over
    # each revision's groups too, so text served before an extension keeps its power (1: the first revision)
    since: int = 1
    # non-empty: the group is retired (the reason): it stays in the table, so ids and revisions stay as they
    # were, but it is never a choice point again (a review found its substitutions unsafe too often)
    retired: str = ""
    # non-empty: the number after the phrase (``next_number``) must be followed by one of these chunks, in the
    # same sentence
    next_relation: list[str] = field(default_factory=list)
    # before one of these words, a slot only when the paragraph holds a number before it: an inference drawn from
    # a calculation ("So he pays 400*2=$800"), never narrative ("So he took this kid to the park"; review 3)
    next_needs_number: list[str] = field(default_factory=list)
    # never within two words of another occurrence of the group's words: anaphora ("Every smile, every laugh")
    # must keep its repeated word, and each slot sees only its own context (review 3)
    parallel: bool = False


def _article(noun: str) -> str:
    """"a" or "an" by sound, not spelling: "an hour", "a unit"."""
    if noun in VOWEL_SOUND:
        return "an"
    if noun in CONSONANT_SOUND:
        return "a"
    return "an" if noun[0] in "aeiou" else "a"


def _neg(full: str, short: str) -> Group:
    # "Don't you think" must not become "Do not you think": no subject right after a negation.
    return Group([full, short], next_not=SUBJECTS)


def _pos(full: str, short: str, participle: bool = False) -> Group:
    return Group([full, short], need_next_word=True, next_not=["not", *(HAS_ADVERBS if participle else [])],
                 next_not_participle=participle, adverb_lookahead=participle)


def _would(full: str, short: str) -> Group:
    # "'d" is "would" or "had": never before a participle ("he'd gone"), nor before "better" ("you'd better go"
    # is "you had better go"; "you would better go" is wrong), nor an adverb that may precede one
    return Group([full, short], need_next_word=True, next_not=["not", "better", *HAD_ADVERBS],
                 next_not_participle=True)


CURATED: list[Group] = [
    # --- negative contractions (grammar) ---
    _neg("do not", "don't"), _neg("does not", "doesn't"), _neg("did not", "didn't"),
    _neg("is not", "isn't"), _neg("are not", "aren't"), _neg("was not", "wasn't"),
    _neg("were not", "weren't"), _neg("has not", "hasn't"), _neg("have not", "haven't"),
    _neg("had not", "hadn't"), _neg("will not", "won't"), _neg("would not", "wouldn't"),
    _neg("could not", "couldn't"), _neg("should not", "shouldn't"), _neg("cannot", "can't"),
    # --- pronoun + auxiliary contractions (grammar). 's and 've stop before participles (is/has ambiguity).
    _pos("it is", "it's", True), _pos("that is", "that's", True), _pos("there is", "there's", True),
    Group(["here is", "here's"], need_next_word=True, next_not=["not"], next_not_participle=True,
          adverb_lookahead=True,
          sentence_start=False),
    # presenting what follows at the start of a sentence ("Here's a script:" / "Below is a script:"); not the
    # idioms "Here's to ...", "Here's hoping", nor "Here is where ...", which "Below is" cannot say
    Group(["Here is", "Here's", "Below is"], need_next_word=True, next_not_participle=True, sentence_start=True,
          adverb_lookahead=True,
          next_not=["not", "to", "hoping", "where", "when", "why"]),
    Group(["Here are", "Below are"], need_next_word=True, sentence_start=True,
          next_not=["not", "to", "where", "when"]),
    _pos("what is", "what's", True), _pos("who is", "who's", True),
    _pos("he is", "he's", True), _pos("she is", "she's", True),
    Group(["I am", "I'm"], need_next_word=True), _pos("you are", "you're"), _pos("we are", "we're"),
    _pos("they are", "they're"), _pos("I will", "I'll"), _pos("you will", "you'll"),
    _pos("we will", "we'll"), _pos("they will", "they'll"), _pos("it will", "it'll"),
    _pos("he will", "he'll"), _pos("she will", "she'll"),
    _pos("where is", "where's", True), _pos("how is", "how's", True),
    _would("I would", "I'd"), _would("you would", "you'd"), _would("we would", "we'd"),
    _would("they would", "they'd"), _would("he would", "he'd"), _would("she would", "she'd"),
    # "has been" after a pronoun: "'s been" is unambiguous (never "is been"), so only this pair contracts
    *[Group([f"{w} has been", f"{w}'s been"]) for w in ["it", "that", "there", "he", "she"]],
    # imperative "Let us" at the start of a sentence, only before verbs of working through something together:
    # never "Let us know" / "Let us help you" (a request to allow us), never "let us" inside a sentence
    Group(["Let us", "Let's"], sentence_start=True, next_in=LET_VERBS),
    Group(["I have", "I've"], need_next_word=True, next_in=PARTICIPLE_HINTS),
    Group(["you have", "you've"], need_next_word=True, next_in=PARTICIPLE_HINTS),
    Group(["we have", "we've"], need_next_word=True, next_in=PARTICIPLE_HINTS),
    Group(["they have", "they've"], need_next_word=True, next_in=PARTICIPLE_HINTS),
    # --- connectives at the start of a clause, followed by a comma (grammar) ---
    # adding a point at the start of a sentence: five interchangeable openers ("Additionally, the API ...");
    # inside a sentence ("...; moreover, it ...") only the three that read as parentheticals
    Group(["Furthermore", "Moreover", "In addition", "Additionally", "Also"], comma_after=True, sentence_start=True),
    # ... and only after a clause break ("; moreover,", "and, in addition,"): "skilled in addition, subtraction
    # and division" is arithmetic, where "skilled moreover, subtraction" would be nonsense
    Group(["furthermore", "moreover", "in addition"], comma_after=True, sentence_start=False, after_break=True),
    # not after a copula, where "also" means "too" ("that is also fine", "This is also the number of points"), nor in
    # "not only ... but also" ("but additionally the work of understanding a child"; review)
    Group(["also", "additionally"], next_not=["known", "called", "referred", "termed", "named"],
          sentence_start=False, prev_not=[*COPULAS, "but"]),
    # retired: after every guard, about a third of the changes read in the tune split still changed the meaning
    # ("not just with drills, but with heart" -> "yet with heart": "yet" adds a concession "but" does not have)
    Group(["but", "yet"], after_comma=True, next_not=["also", "not", "rather", "only", "then", *BUT_NOT_YET_NEXT],
          retired="'yet' adds a concession that 'but' lacks in about a third of real uses (2026-11 review)"),
    Group(["However", "Nevertheless", "Nonetheless"], comma_after=True),
    Group(["In conclusion", "In summary", "To sum up", "To summarize"], comma_after=True),
    Group(["Similarly", "Likewise"], comma_after=True),
    Group(["As a result", "As a consequence"], comma_after=True),
    Group(["Finally", "Lastly"], comma_after=True),
    Group(["Fortunately", "Luckily"], comma_after=True),
    Group(["Overall", "All in all"], comma_after=True),
    Group(["In short", "In brief"], comma_after=True),
    # sentence-initial assent or concession ("Sure, here is..." / "Of course, it depends..."); never mid-sentence,
    # where "of course," is a parenthetical ("This is, of course, ...") that "sure" cannot replace
    Group(["Sure", "Certainly", "Of course"], comma_after=True, sentence_start=True),
    # a sum at the start of a sentence ("In total, she spent $30"); mid-sentence "altogether," can mean
    # "completely" ("stopped altogether, ..."), so only sentence-initial
    Group(["In total", "Altogether", "In all"], comma_after=True, sentence_start=True),
    # --- WordNet-checked alternations ---
    Group(["for example", "for instance"], "r"),
    Group(["often", "frequently"], "r"),
    Group(["perhaps", "maybe", "possibly"], "r",
          prev_not=["not", "cannot", "can't", "could", "couldn't", "can", "might", "may", "quite", "very", "most"]),
    Group(["almost", "nearly"], "r", prev_not=["very"]),
    # indefinite / reciprocal pronouns: function words WordNet does not list (grammar)
    Group(["anyone", "anybody"]), Group(["someone", "somebody"]),
    Group(["everyone", "everybody"]), Group(["no one", "nobody"], next_not=NO_ONE_NOUN_NEXT),
    Group(["each other", "one another"]),
    Group(["kind of", "sort of"], "r"),
    Group(["completely", "entirely", "totally"], "r"),
    Group(["especially", "particularly"], "r"),
    Group(["mainly", "primarily", "chiefly", "mostly"], "r"),
    Group(["slightly", "somewhat", "a bit"], next_not=["of"], need_next_word=True),
    Group(["probably", "most likely", "likely"],
          prev_not=[*DETERMINERS, "a", "an", "is", "are", "was", "were", "be", "more", "less", "very", "highly",
                    "quite", "so", "most", "not", "seems", "seem", "look", "looks", "become", "becomes"],
          next_not=["to", "that", "than"], need_next_word=True),
    # "each" is also a pronoun ("they each have", "each has"): never after a pronoun, never before a verb
    # (a list of common verbs plus any -ed word) -- "every" can only be a determiner.
    # An adverb or an auxiliary right before it marks the pronoun too ("they also each sent", "will each get").
    Group(["each", "every"], prev_not=["they", "we", "you", "them", "us", "these", "those", "both", "and", "one",
                                       "cost", "costs", "paid", "at", "also", "all", "still",
                                       "just", "have", "had", "has", "will", "would", "can", "could", "should",
                                       "must", "may", "might", "did", "do", "does", "are", "were", *POSSESSIVES,
                                       *EVERY_ONLY_PREV],
          next_not=["of", "other", "one", "single", "now", "so", "bit", "and", "or", "way", "in", "to", "is", "are",
                    "was", "were", "has", "have", "had", "can", "will", "would", "should", "could", "may", "might",
                    "must", "does", "did", "do", "costs", "cost", "takes", "took", "gets", "got", "needs", "need",
                    "contains", "comes", "came", "makes", "made", "weighs", "receives", "earns", "pays", "paid",
                    "sold", "sells", "bought", "buys", "ate", "eats", "gave", "gives", "wants", "holds", "uses",
                    "used", "received", "earned", "spent", "spends", "own", "owns", "get", "make", "take", "gets",
                    # a count or a frequency: "each few minutes", "each two weeks", "each last bite", "each once
                    # in a while" are wrong; "a for each loop" is the programming construct
                    "few", "couple", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                    "twelve", "hundred", "thousand", "dozen", "last", "once", "which", "loop", "loops", "second",
                    "third", "fourth",
                    # "each" as "apiece" after a quantity ("$2 each for adults", "5 hours each because ..."): a
                    # determiner is never followed by a preposition, a conjunction, a pronoun or an article
                    *EACH_APIECE_NEXT, *EACH_VERB_NEXT, *EACH_OF_TWO],
          next_not_participle=True, need_next_word=True, next_word_only=True, next_not_suffix=EACH_NOT_SUFFIX,
          suffix_nouns=EACH_ING_NOUNS, suffix_prev_ok=EACH_ING_AFTER, parallel=True),
    Group(["really", "truly"], prev_not=["not", "you", "i"], need_next_word=True, level=2),
    # attributive only: "be more specific," / "be specific about" mean "precise", where "particular" means "fussy"
    Group(["specific", "particular"], "a", prev_not=["in", "very", "no"],
          next_not=["heat", "gravity", *SPECIFIC_PRED_NEXT], need_next_word=True),
    Group(["necessary", "required"], "a", next_not=["to", "by", "for", "that", "fields", "field"]),
    # not the C++ directive "using namespace std;" (code set off without a fence; review)
    Group(["using", "utilizing", "employing"], "v", lemmas=["use", "utilize", "employ"], next_not=["up", "namespace"]),
    Group(["created", "generated"], "v", prev_not=["newly"], level=2, curated="past tense and participle alike"),
    # "help" takes a bare infinitive ("helps prevent", "helped avert"), "assist" does not: only "with"/"in" after it
    Group(["helps", "assists"], "v", lemmas=["help", "assist"], next_not=["to"], next_in=HELP_SAFE_NEXT),
    Group(["helped", "assisted"], "v", lemmas=["help", "assist"], next_not=["to"], next_in=HELP_SAFE_NEXT),
    Group(["helping", "assisting"], "v", lemmas=["help", "assist"], next_not=["hand", "to"],
          next_in=HELP_SAFE_NEXT),
    # "start" with an object is "launch" or "found" ("starts the engine"): no object after it
    Group(["begins", "starts"], "v", lemmas=["begin", "start"],
          next_not=["up", "off", "out", "over", *START_OBJECT_NEXT]),
    Group(["began", "started"], "v", lemmas=["begin", "start"],
          prev_not=["has", "have", "had", "i've", "you've", "we've", "they've", "he's", "she's", "it's",
                    "was", "were", "is", "are", "be", "been", "being", "get", "gets", "got", "getting", "am",
                    "i'm", "you're", "we're", "they're", "hasn't", "haven't", "hadn't"],
          next_not=["up", "off", "out", "over", *START_OBJECT_NEXT]),
    Group(["talk", "speak"], "v", prev_in=VERB_SLOT, next_in=["to", "with", "about"]),
    Group(["look for", "search for"], prev_in=VERB_SLOT),
    Group(["all of the", "all the"], next_not=["way", "same", "more", "better", "less", "best", "worse", "rage",
                                              "while", "most"]),
    Group(["all of these", "all these"]),
    Group(["all of those", "all those"]),
    Group(["in general", "generally"], comma_after=True),
    # never a manner adverb after a verb ("function normally, like most people": "function usually" is wrong)
    Group(["usually", "normally", "commonly", "typically"], "r", prev_not=NORMALLY_MANNER_PREV,
          need_next_word=True),
    Group(["about", "around", "approximately", "roughly"], "r", next_number=True),
    Group(["exactly", "precisely"], "r", prev_not=["not"]),
    Group(["quite", "fairly"], "r", prev_not=["not"], next_not=["a", "an", "the", "some", "few", "so", "as"]),
    Group(["basically", "essentially", "fundamentally"], "r"),
    Group(["rarely", "seldom"], "r"),
    Group(["initially", "at first"], "r", next_not=["glance", "sight", "blush"]),
    Group(["apparently", "seemingly"], "r"),
    Group(["incredibly", "remarkably", "exceptionally"], "r", level=2),
    Group(["many", "numerous"], "a", prev_not=["how", "so", "too", "as", "very", "not", "a", "great", "good",
                                              "the", "these", "those", "his", "her", "their", "our", "my", "your",
                                              "its", "many", "in"],
          next_not=["of", "more", "times", "others", "a", "such", "thanks", "years", "ways", *FEW_PRONOUN_NEXT,
                    *MANY_PRONOUN_VERBS]),
    Group(["several", "a few", "a number of"], prev_not=["quite", "only", "just", "very", "every", "a", "the",
                                                        "these", "those", "his", "her", "their", "our", "my",
                                                        "your", "its", "such"],
          need_next_word=True, next_not=["of", "more", "times", "others", *FEW_PRONOUN_NEXT]),
    # optional complementiser "that" after verbs that take a clause but no noun object, before a subject
    # pronoun ("I think you are" / "I think that you are"); "recommend", "believe", "know" take objects: excluded.
    *[Group([v, f"{v} that"], next_in=CLAUSE_SUBJECTS)
      for v in ["think", "thinks", "hope", "hopes", "ensures", "means", "seems", "realize",
                "realizes", "assume", "assuming", "guess", "noticed", "note", "mean", "figured"]],
    # also before a noun phrase ("make sure the code runs" / "ensure the code runs"); never before "that"/"this",
    # where "make sure that button ..." would become "ensure that that button ..."
    Group(["make sure", "make sure that", "ensure", "ensure that"],
          next_in=[*CLAUSE_SUBJECTS, "the", "your", "these", "those", "its", "their", "all", "each", "every",
                   "everything", "everyone", "any", "no", "nothing"]),
    # worked arithmetic: "First find the total" / "calculate" / "determine" / "compute" / "figure out"; only with
    # an object that makes "find" mean "work out" and right after a step word (never "I find the total cost
    # too high"). One group per object, so each object is its own scored tuple.
    *[Group([f"{v} {obj}" for v in STEP_VERBS], "v", prev_in=STEP_SLOT, context=STEP_REASON)
      for obj in STEP_OBJECTS],
    Group([f"{v} how" for v in STEP_VERBS], "v", prev_in=STEP_SLOT, next_in=["many", "much", "long", "far", "old"],
          context=STEP_REASON),
    # ", which means he ..." / ", meaning he ..." (participle of "mean", never the noun: a clause must follow)
    Group(["which means", "meaning"], after_comma=True,
          next_in=[*CLAUSE_SUBJECTS, "that", "the", "his", "her", "their", "each", "a", "an"]),
    # not before a recipient ("provides you with tools" / "offers you with tools" is wrong) nor "to" ("offers to
    # help" / "provides to help"); "provides a library with ..." stays (the "with" belongs to the noun)
    Group(["provides", "offers"], "v", lemmas=["provide", "offer"],
          prev_not=[*DETERMINERS, "job", "special", "best", "many", "several", "multiple", "such", "other", "no",
                    "any", "some", "great", "two", "three"],
          next_not=["for", "that", "to", "the", "you", "them", "us", "him", "her", "me", "users", "customers",
                    "developers", "people", "everyone", "readers", "students", "clients", "employees", "visitors",
                    "members"]),
    Group(["allows", "enables"], "v", lemmas=["allow", "enable"], next_not=["for"]),
    # never the noun ("the constant need to tell oneself", "there is a need to": "a have to"; review)
    Group(["need to", "have to"], prev_not=[*DETERMINERS, "urgent", "growing", "without", "there's", "no",
                                            *NEED_NOUN_PREV],
          next_not=["do", "say"]),
    Group(["needs to", "has to"], prev_not=[*DETERMINERS, "urgent", "growing", "without", "no"],
          next_not=["do", "say"]),
    Group(["want to", "wish to"], prev_not=DETERMINERS, next_not=["be"]),
    Group(["try to", "attempt to"], prev_not=[*DETERMINERS, "an", "any", "every", "first", "no", "each",
                                              "failed", "one", "last", "second", "final", "another"]),
    Group(["in order to", "so as to"]),
    Group(["because of", "due to"], next_in=[*DETERMINERS, "a", "an", "some", "many", "lack", "poor", "high", "low"]),
    Group(["a lot of", "lots of"], prev_not=["quite", "such", "what", "a", "the", "whole"]),
    Group(["although", "though", "even though"], prev_not=["even", "as"], need_next_word=True),
    # not the optative ("and may wisdom guide you") nor the second half of "may or may not"
    Group(["may", "might"], prev_not=[*DETERMINERS, "all", "with", "in", "of", "early", "late", "mid", "since",
                                      "until", "by", "from", "last", "next", "every", "or"],
          next_not=["i", "we", "you", "he", "she", "they", "it", "god", "the", "and", "or", *MAY_OPTATIVE_NEXT],
          need_next_word=True),
    # not in a list of ordinals ("its first, second, third, and fifth terms": "thirdly" is wrong; review)
    Group(["first", "firstly"], comma_after=True, prev_not=ORDINALS),
    Group(["second", "secondly"], comma_after=True, prev_not=ORDINALS),
    Group(["third", "thirdly"], comma_after=True, prev_not=ORDINALS),
    Group(["recommend", "suggest"], prev_in=["i", "we", "i'd", "we'd", "would", "also", "strongly", "i'll"]),
    Group(["such as", "like"], after_comma=True, level=2,
          next_not=["i", "you", "we", "they", "he", "she", "it", "this", "that", "so", "when", "if", "how", "what",
                    "before", "always", "usual", "crazy", "said", "mine", "yours", *LIKE_COMPARISON_NEXT]),
    Group(["whole", "entire"], "a", prev_in=["the", "this", "your", "my", "our", "their", "his", "her", "its"],
          next_not=["of", "lot", "number", "new", "grain", "wheat", "milk", "foods", "food", "numbers"]),
    Group(["help", "assist", "aid"], "v", prev_in=VERB_SLOT,
          next_not=["but", "desk", "center", "centre", "yourself", "to"], next_in=HELP_SAFE_NEXT),
    # never before a number: "will use 30 gallons of water" is "consume", which "employ" cannot say
    Group(["use", "utilize", "employ"], "v", prev_in=VERB_SLOT, next_not=["up", "case", "cases"],
          next_word_only=True),
    Group(["start", "begin"], "v", prev_in=VERB_SLOT, next_not=["up", "off", "out", "over", *START_OBJECT_NEXT]),
    Group(["choose", "select", "pick"], "v", prev_in=VERB_SLOT, next_not=["up", "out", "on", "off", "at", "apart"]),
    Group(["buy", "purchase"], "v", prev_in=VERB_SLOT, next_not=["into", "time", "up", "out", "off"]),
    Group(["allow", "permit"], "v", prev_in=VERB_SLOT, next_not=["for", "me"]),
    Group(["important", "crucial"], "a", prev_not=["self", "all"], level=2),
    # --- strong tier only: near-synonyms in guarded positions (a little more visible, denser watermark) ---
    Group(["create", "generate"], "v", prev_in=VERB_SLOT, level=2, curated="verb position only"),
    Group(["creates", "generates"], "v", level=2, curated="third-person verb forms only"),
    Group(["creating", "generating"], "v", level=2, curated="gerund of create/generate"),
    Group(["check", "verify"], "v", prev_in=VERB_SLOT, level=2, curated="verb position, no particle",
          next_not=["out", "in", "on", "for", "with", "up", "off", "back", "into", "over", "mark"]),
    Group(["show", "display"], "v", prev_in=VERB_SLOT, level=2, curated="verb position, no personal object",
          next_not=["me", "you", "him", "her", "us", "them", "that", "how", "up", "off", "what", "why",
                    *SHOW_OBJECT_NEXT]),
    Group(["very", "extremely"], "r", level=2, curated="intensifier before an adjective or adverb",
          prev_not=["the", "this", "that", "these", "those", "its", "their", "his", "her", "our", "my", "your",
                    "very", "whose", "which"],
          next_not=["much", "many", "few", "little", "own", "same", "first", "last", "best", "end", "beginning",
                    "moment", "least", "most", "well", "next", "top", "bottom", "idea", "thing", "nature", "day"],
          need_next_word=True),
    Group(["sometimes", "occasionally"], "r", level=2, curated="frequency adverbs"),
    Group(["eventually", "ultimately"], "r", level=2, curated="'in the end' sense",
          next_not=ULTIMATELY_BASIC_NEXT),
    Group(["reduce", "decrease"], "v", prev_in=VERB_SLOT, level=2, curated="verb position only"),
    Group(["people", "individuals"], "n", level=2, curated="plural of 'person'",
          prev_not=["the", "a", "an", "indigenous", "native", "chosen", "jewish", "whose"]),
    # not the variable names "lo"/"mid"/"hi" ("from mid to hi, respectively")
    Group(["hi", "hello"], next_not=["world"],
          prev_not=["to", "from", "lo", "mid", "low", "and", "or", "the", "a", "of", "in", "at", "by", "with", "set",
                    "than", "between"]),
    Group(["thanks", "thank you"], prev_not=["many", "no", "special", "big", "a", "thousand", "the", "with",
                                            "my", "our", "warm", "heartfelt", "sincere", "give", "gives"],
          next_not=["to", "giving", "again"], need_next_word=False),
    Group(["quickly", "rapidly", "speedily"], "r"),
    # only the sentence adverb ("Significantly, the study ..." / "Importantly, ..."): the degree adverb ("vary
    # significantly", "significantly less") is no "importantly"; a comma after it and the scanner's rule for
    # connectives before a comma (a clause start) leave only that reading
    Group(["significantly", "importantly"], "r", level=2, comma_after=True),
    Group(["therefore", "thus", "hence", "consequently"], "r", next_not=["far"], sentence_start=False),
    # at the start of a sentence "So" joins them ("So the total is ..."); not "So far", "So is she", "So that"
    Group(["So", "Therefore", "Thus", "Hence"], sentence_start=True,
          next_not=["far", "much", "many", "long", "that", "is", "are", "do", "does", "did", "am", "was", "were",
                    "can", "will", "have", "has", "had", "to", "what", "yes", "no", "good", "sorry", "nice",
                    *SO_DISCOURSE_NEXT],
          next_needs_number=SO_NARRATIVE_NEXT),
    # only before the imperative of a worked step ("Then find the total"): "Then" is a consequence too ("Let λ = 3.
    # Then D_KL = ...", "Suppose b0 > b'. Then, we can find ε"), which "Next" misreads
    Group(["Then", "Next"], sentence_start=True,
          next_not=["week", "month", "year", "time", "day", "step", "steps", "to", "door", "morning", "is", "was"],
          next_in=THEN_STEP_VERBS),
    # an age after a number closing a clause ("he is 5 years old." / "5 years of age."); never before a noun
    # ("my 3 year old brother", "the 10,000 year old, unspeakable horror"), never after a word ("many years
    # old"); a hyphenated "5-year-old" is one protected chunk
    Group(["years old", "years of age"], after_quantity=True, quantities=[], before_punct=True),
    Group(["year old", "year of age"], after_quantity=True, quantities=[], before_punct=True),
    # a sum closing a clause right after a quantity ("she spent $30 in total." / "in all." / "altogether.");
    # after a number "altogether" can only mean "in total" (never "completely": "stopped altogether")
    # but a number reached ("fell to 0 altogether", "from 10 to 0", "stopped at 5") is no total: there
    # "altogether" means "completely" and "in total" would change the meaning
    Group(["in total", "in all", "altogether"], after_quantity=True, before_punct=True, sentence_start=False,
          prev_not=["to", "from", "at", "below", "under", "until", "till", "toward", "towards"]),
    # "half of the cake" / "half the cake" before a noun phrase; not after "a"/"and"/"one" ("one and a half the
    # ..." is no phrase), not "these"/"those", which are often pronouns ("Half of these will go" / "Half these
    # will go" is wrong), never at the end of a clause ("half of his.")
    # "half" is a noun after a determiner or a positional adjective ("the bottom half of the page", "my half of
    # the bill"): "the bottom half the page" is wrong, so those words never come right before it
    *[Group([f"half of {d}", f"half {d}"], prev_not=["a", "and", "one", "the", "first", "second", "other",
                                                    "in", "into", *DETERMINERS, *HALF_NOUN_BEFORE],
            need_next_word=True)
      for d in ["the", "his", "her", "their", "my", "your", "its", "our"]],
    # a rate: "$5 a day" / "$5 per day", only after a number or a quantity word (never "in a day")
    *[Group([f"per {u}", f"{_article(u)} {u}"], after_quantity=True) for u in UNITS],
    Group(["immediately", "instantly", "straightaway"], "r", level=2, next_not=IMMEDIATELY_PLACE_NEXT),
    Group(["huge", "enormous", "immense"], "a"),
    # not in terms and idioms ("large language model", "big data", "the big picture", "a big fan"; review)
    Group(["large", "big"], "a", prev_not=["by", "at"], next_not=["deal", *BIG_TERM_NEXT]),
    Group(["happy", "glad"], "a", next_in=["to", "that"]),
    Group(["keep in mind", "bear in mind"]),  # idiom, not in WordNet (grammar)
    Group(["anyway", "anyhow"], "r"),
    Group(["nowadays", "today"], "r", level=2),  # "today" is a noun too: dropped by the WordNet check
    Group(["afterwards", "afterward"], "r"),
    Group(["toward", "towards"]),  # preposition: both spellings are standard in US and UK text
    Group(["purchased", "bought"], "v", lemmas=["purchase", "buy"]),  # both past tense and participle
    Group(["purchasing", "buying"], "v", lemmas=["purchase", "buy"]),
    Group(["selects", "chooses"], "v", lemmas=["select", "choose"]),
    Group(["obtained", "acquired"], "v", lemmas=["obtain", "acquire"], level=2),
    Group(["attempting", "trying"], "v", lemmas=["attempt", "try"], next_in=["to"], level=2),
    # --- table revision 2: dense choices in worked solutions (appended: the groups above keep their ids) ---
    # a reason given by an equation ("because 4 x 5 = 20" / "since 4 x 5 = 20"): only before a number followed by
    # an operator or a relation (``RELATIONS``), since before any other number "since" is too often temporal
    # ("since 3.6", "since 5 pm", "since 3 people got sick"); never before a year or a clock time ("since 1958 +
    # ..."), which ``next_not_date`` refuses; never where only "because" can stand ("This is because", "not because",
    # "only because", "ever since", "long since"); never opening a sentence, where "Since 1 foot is 12 inches,
    # then ..." is idiomatic but "Because ..., then ..." is not
    Group(["because", "since"], next_number=True, next_not_date=True, prev_not=BECAUSE_PREV_NOT,
          sentence_start=False, since=2, next_relation=RELATIONS),
    # a multiple ("twice as many" / "two times as many", "twice the price"); never a count of occasions ("the two
    # times I went", "one or two times a day", "thirty two times the", "the next two times a customer calls"),
    # so not after a determiner, a number word, an adjective of order or a conjunction of a range; nor in the
    # idiom "think twice" ("think two times the next time")
    Group(["twice", "two times"], next_in=["as", "the", "that", "what", "a", "his", "her", "their", "its", "my",
                                           "your", "our"],
          prev_not=[*DETERMINERS, *NUMBER_WORDS, "a", "an", "all", "both", "first", "last", "other", "only",
                    "between", "every", "few", "or", "and", "to", "of", "next", "past", "previous", "same",
                    "final", "latest", "recent", "think", "thinks", "thinking", "thought"], since=2),
    # an equation before a number ("3 x 4 equals 12" / "is equal to 12"); not after a word that starts a
    # contraction ("it is", "that is", ... are slots of their own: "it equals 5" would read back as "it is" +
    # "equal to"), nor after an adverb ("also equals 5": "also is equal to" is the wrong order)
    Group(["equals", "is equal to"], next_number=True,
          prev_not=["it", "that", "there", "here", "what", "who", "he", "she", "where", "how", "not", "also", "still",
                    "then", "now", "always", "never", "thus", "therefore", "hence", "just", "exactly", "only",
                    "again", "roughly", "approximately", "almost", "nearly", "about", "around", "clearly",
                    "obviously", "simply", "actually", "indeed", "certainly", "precisely", "essentially",
                    "basically", "effectively", "usually", "often", "generally", "typically", "sometimes",
                    "as", "among"],  # "treated as equals", "first among equals": the noun
          since=2),
    # a product in a worked step ("because 4 x 5 = 20" / "because 4 times 5 = 20"): between two numbers and only
    # when the word before the first number introduces a calculation; never a dimension or a resolution ("the 2 x
    # 4s", "a 10 x 12 room", "Full HD (1920 x 1080)", "so 3 x 3 filters"), where "x" reads "by": so the second
    # number must be followed by an operator or a relation too ("so 4 x 5 = 20")
    Group(["x", "times"], after_quantity=True, quantities=[], next_number=True, prev_in=PRODUCT_PREV, since=2,
          next_relation=RELATIONS),
    # --- table revision 3: negated copulas and more contractions (appended: the groups above keep their ids) ---
    # "it's not" / "it isn't" / "it is not": three spellings of one negated copula. "'s not" was no slot before
    # (the "it is" group stops before "not"); "it is not" / "it isn't" were "is not|isn't" slots, which these
    # three-way groups take over (1.6 bits instead of 1). 's may be "has": never before a participle ("he's not
    # been", "she's not got") nor an adverb that may precede one ("it's not always been easy"). Not "what's not
    # to like", "here's not", "who's not": idioms or rare.
    *[Group([f"{w}'s not", f"{w} isn't", f"{w} is not"], next_not=HAS_ADVERBS, next_not_participle=True,
            adverb_lookahead=True, prev_not=THERE_PLACE_PREV if w == "there" else [], since=3)
      for w in ["it", "that", "there", "he", "she"]],
    # "you're not" / "you aren't" / "you are not": 're is always "are"
    *[Group([f"{w}'re not", f"{w} aren't", f"{w} are not"], since=3) for w in ["you", "we", "they"]],
    # "it would" / "it'd" like "he would" / "he'd" (never "had": no participle, "better" or adverb after it); not
    # after a preposition, where "it" closes a noun phrase that is the subject ("the cost of it would be $40": "the
    # cost of it'd be" is wrong). No "that'd": as a relative pronoun ("policies that'd improve") it is too casual
    # for expository text (review)
    Group(["it would", "it'd"], need_next_word=True, next_not=["not", "better", *HAD_ADVERBS],
          next_not_participle=True, prev_not=IT_OBJECT_PREV, since=3),
    # a comparison ("faster compared to C" / "compared with C"); not the passive "is compared to a rose", where
    # "compared to" likens and "compared with" contrasts
    Group(["compared to", "compared with"], prev_not=[*COPULAS, "be", "been", "being", "get", "gets", "got"],
          since=3),
]

# Alternations WordNet confirms but that fail in common contexts, with the counter-example that rules them out.
REJECTED: dict[str, str] = {
    "today": "'today' is also a noun ('today's date')",
}
