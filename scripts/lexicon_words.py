"""The word lists that the curated groups of ``lexicon_table.py`` use as context conditions.

Data only, each list with the reason it exists (the example that a missing word would get wrong).
"""

from __future__ import annotations

# After these a word is a verb in its base form ("to help", "can help"), never a noun ("the help").
VERB_SLOT = ["to", "can", "will", "may", "might", "could", "would", "should", "must", "also", "and", "or",
             "please", "not", "cannot", "don't", "won't", "can't"]

# Words after which "a day" / "per day" is a rate ("twice a day", "8 hours a day").
QUANTITIES = ["times", "twice", "once", "thrice", "hours", "minutes", "seconds", "dollars", "cents", "miles",
              "kilometers", "km", "pages", "cups", "pounds", "calories", "eggs", "euros", "days", "weeks"]
UNITS = ["day", "week", "month", "year", "hour", "minute", "night", "person", "pound", "piece", "dozen", "mile",
         "box", "pack", "kilogram", "gallon", "ticket", "page", "cup", "slice", "bag", "lesson", "shift", "visit",
         "game", "book", "shirt", "unit", "share", "meal", "serving", "glass", "bottle", "student", "child",
         "item", "egg", "apple", "ounce", "orange", "adult", "episode", "class", "session"]
VOWEL_SOUND = {"hour", "honor", "heir"}  # silent h
CONSONANT_SOUND = {"unit", "university", "use", "user", "euro", "one"}  # "yoo-", "wun-"
# Words directly before a worked-arithmetic step ("First find the total", "to find how many").
# Not "can"/"and"/"should": "you can find the price online" means "look up", not "calculate".
STEP_SLOT = ["to", "first", "then", "now", "next", "we"]
# What such a step computes: with these objects "find" means "work out", never "come across" / "look up"
# ("the price of" / "the cost of" are left out: "to find the price of a flight" is a search; so is "the
# remaining": "to find the remaining pieces").
STEP_OBJECTS = ["the total", "the number of", "the amount of", "the area of",
                "the average", "the perimeter", "the sum of", "the percentage", "the volume"]
STEP_VERBS = ["find", "calculate", "determine", "compute", "figure out"]
STEP_REASON = ("'work out by calculation': WordNet links find~determine and calculate~compute~work out but keeps "
               "the 'discover' and 'reckon' senses apart; a step word before and an arithmetic object after "
               "select the shared sense")
DETERMINERS = ["the", "this", "that", "these", "those", "its", "their", "his", "her", "our", "my", "your"]
CLAUSE_SUBJECTS = ["i", "we", "they", "he", "she", "there", "it", "you"]

# After sentence-initial "Let us" / "Let's" these verbs make it the imperative "let's" (working through
# something together), never "allow us to" ("Let us know", "Let us help you" are left out).
# Verbs that commonly take "you" after "Let us" ("Let us call you back", "Let us take care of it for you",
# "Let us walk you through it", "Let us find you a plan") are left out too: there "Let's" changes who acts.
LET_VERBS = ["break", "start", "begin", "calculate", "compute", "consider", "look", "assume", "denote",
             "define", "think", "try", "write", "analyze", "analyse", "solve", "examine", "explore",
             "discuss", "summarize", "review", "imagine", "add", "simplify", "recall", "first", "now",
             "dive", "use", "implement", "determine", "compare", "say"]

# Words that follow "each" meaning "apiece" ("$2 each for adults"), never the determiner "each"/"every".
EACH_APIECE_NEXT = ["for", "at", "on", "with", "from", "by", "into", "per", "after", "before", "during", "until",
                    "because", "since", "while", "if", "but", "then", "than", "as", "when", "who", "that", "plus",
                    "minus", "times", "the", "a", "an", "this", "these", "those", "his", "her", "their", "my",
                    "your", "our", "its", "he", "she", "they", "we", "i", "it", "you", "them", "him", "us",
                    "giving", "making", "earning", "bringing", "leaving", "totaling", "totalling", "costing"]

# Words after "each" that make it a pronoun before a verb ("they each sent", "(each appending a line)"): "every"
# cannot stand alone. Irregular past tenses and common present-tense verbs (regular "-ed" words are refused by
# ``next_not_participle``, "-ing" words by EACH_NOT_SUFFIX except the nouns in EACH_ING_NOUNS).
EACH_VERB_NEXT = ["sent", "went", "wrote", "told", "said", "found", "brought", "built", "became", "began", "chose",
                  "drew", "fell", "felt", "held", "kept", "knew", "led", "left", "lost", "met", "ran", "saw", "sat",
                  "spoke", "stood", "taught", "thought", "threw", "won", "wore", "grew", "put", "brings", "sends",
                  "goes", "says", "tells", "writes", "runs", "plays", "provides", "represents", "requires",
                  "includes", "consists", "belongs", "shows", "looks", "seems", "becomes", "starts", "begins",
                  "ends", "follows", "produces", "creates", "returns", "works", "lives", "reads", "describes",
                  "corresponds", "contributes", "performs", "handles", "sees", "knows", "thinks", "tries", "keeps",
                  "carries", "offers", "adds", "calls", "finds", "helps", "leads", "lets", "means",
                  "moves", "pulls", "puts", "sits", "stands", "turns", "wins", "owes", "deserves", "counts",
                  "matters", "depends", "serves", "stores", "points", "maps", "refers", "acts"]
EACH_NOT_SUFFIX = ["ing"]
EACH_ING_NOUNS = ["thing", "morning", "evening", "building", "meeting", "string", "setting", "spring", "king",
                  "ring", "wedding", "painting", "drawing", "recording", "opening", "beginning", "ending",
                  "offering", "ceiling", "listing", "posting", "booking", "rating", "ranking", "warning",
                  "heading", "finding", "feeling", "being", "serving", "sibling", "wing", "swing", "gathering",
                  "crossing", "filing", "mapping", "binding", "saying", "pudding", "darling", "duckling",
                  "seedling", "earring", "lightning", "outing", "helping", "clipping",
                  "dumpling", "shilling", "stocking", "landing", "ping", "lining", "coating",
                  "fitting", "reading", "hearing", "weighting", "embedding", "training", "holding", "spending"]
# After a preposition "each" is a determiner, so an "-ing" word is an adjective there ("for each matching
# file", "with each passing day"), never the pronoun's verb.
EACH_ING_AFTER = ["for", "with", "of", "about", "after", "before", "in", "on", "from", "to", "behind", "into",
                  "through", "during", "under", "over", "across", "between", "within", "without", "against"]

# Words after which "half" is a noun (a part), not the predeterminer of "half (of) the".
HALF_NOUN_BEFORE = ["each", "either", "every", "which", "whose", "what", "no", "any", "latter", "last", "bottom",
                    "top", "upper", "lower", "left", "right", "front", "back", "rear", "remaining", "final",
                    "whole", "next", "previous", "middle", "inner", "outer", "northern", "southern", "eastern",
                    "western", "better", "bigger", "larger", "smaller", "greater", "lesser", "early", "earlier",
                    "later", "late", "third", "opening", "closing"]

# Words after which "because" cannot become "since": a predicate ("This is because", "That's because") or a
# focusing adverb ("only because", "not because", "partly because"); "ever since", "long since" are temporal.
BECAUSE_PREV_NOT = ["is", "was", "are", "were", "be", "been", "being", "it's", "that's", "this's", "there's",
                    "here's", "what's", "isn't", "wasn't", "aren't", "weren't", "it", "that", "this", "not", "only",
                    "just", "partly", "mainly", "mostly", "largely", "simply", "precisely", "exactly", "merely",
                    "solely", "primarily", "probably", "perhaps", "maybe", "especially", "particularly", "all",
                    "ever", "long", "because", "since"]
# Words that, right before "N x M", make the "x" a multiplication sign: a reason or a result being computed.
PRODUCT_PREV = ["because", "since", "so", "thus", "therefore", "hence", "then", "means", "meaning", "gives",
                "giving", "equals"]
# What must follow the number after "because"/"since" and "N x": an operator or a relation, so that the number is a
# term of a calculation ("because 4 x 5 = 20", "since 5 > 3", "so 4 x 5 = 20"). Anything else is too often a
# point in time ("since 3.6", "since 5 pm", "since 9 o'clock", "since 5 May", "since 3 people got sick") or a
# dimension ("so 3 x 3 filters", "so 1920 x 1080 looks blurry"). No dash: "since 9 - 5" is a range.
RELATIONS = ["=", "+", "*", "/", "<", ">", "x", "×", "÷", "−", "≈", "≠", "≤", "≥", "times", "plus", "minus",
             "equals", "is"]
NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twenty", "thirty",
                "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred", "thousand", "million",
                "billion", "dozen"]

# Words that, when they follow a contraction candidate, make it unsafe or change its reading.
SUBJECTS = ["i", "you", "we", "they", "he", "she", "it", "there", "that", "this", "these", "those"]
PARTICIPLE_HINTS = ["been", "got", "gotten", "had", "done", "gone", "seen", "made", "taken", "given", "become",
                    "come", "known", "shown", "written", "found", "heard", "left", "put", "set", "begun"]

# Adverbs that sit between "had"/"has" and a participle ("I'd never seen", "she's already left"): only one word
# ahead is read, so after 'd / 's (when it may be "has") they end the slot. 's keeps the adverbs that mostly
# mean "is" there ("it's also", "it's just"); 'd, rarely followed by an adverb, drops them all.
HAS_ADVERBS = ["never", "already", "ever", "recently", "previously"]
# Adverbs after 's that usually mean "is" ("it's also", "he's just"), but "has" when a participle follows ("he's
# just left", "that's always been true", "it's also become clear"): the slot reads one more word and is refused
# when that word is a participle (or another such adverb, which may precede one). Regular "-ed" words count as
# participles ("it's also used" is refused with "he's also used it") except the few in ADVERB_ADJECTIVES.
HAS_LOOKAHEAD_ADVERBS = ["just", "always", "also", "still", "since", "only", "even", "finally", "actually", "really",
                         "certainly", "definitely", "probably", "now", "often", "usually", "long", "all", "once",
                         "then", "clearly", "simply", "largely", "mostly", "generally", "suddenly", "quickly",
                         "slowly", "gradually", "increasingly", "originally", "apparently", "obviously", "newly",
                         "far", "nearly", "almost", "barely", "hardly", "rarely", "seldom", "sometimes", "truly",
                         *HAS_ADVERBS]
# Adverbs that mark "has" when they follow such an adverb ("it's also never worked", "that's just always
# been"): they refuse the slot too. Only these: "it's really just paper", "it's almost always PCP" are "is", and
# the first-word classes of the list are read as well (those of "also" hold "so", "to", "in").
ADVERB_CHAIN = [*HAS_ADVERBS, "always", "since"]
# Irregular participles looked for after such an adverb (besides PARTICIPLE_HINTS and regular "-ed" words).
LOOKAHEAD_PARTICIPLES = ["run", "grown", "brought", "thought", "told", "said", "kept", "won", "lost", "built",
                         "sent", "spent", "paid", "bought", "taught", "caught", "fallen", "risen", "driven",
                         "chosen", "broken", "spoken", "eaten", "drawn", "thrown", "flown", "worn", "held", "led",
                         "felt", "meant", "met", "sold", "stood", "understood", "read", "hit", "cut", "let",
                         "proven", "forgotten", "hidden", "ridden", "stolen", "sung", "swum", "woken", "beaten",
                         "bitten", "blown", "frozen", "sunk", "struck", "spun", "overcome", "undergone", "arisen",
                         "withdrawn", "forgiven", "mistaken"]
# "-ed" words that after "is" + adverb are adjectives, hardly ever "has" + participle ("he's just tired").
ADVERB_ADJECTIVES = ["tired", "based", "supposed", "located", "interested", "excited", "bored", "scared",
                     "ashamed", "naked", "sacred", "wicked", "beloved"]

HAD_ADVERBS = [*HAS_ADVERBS, "just", "always", "also", "still", "only", "since", "once", "long", "probably", "then",
               "finally", "even", "nearly", "almost", "barely", "hardly", "really", "actually", "certainly",
               "definitely", "often", "sometimes", "usually", "rarely", "seldom", "first", "all", "both", "so",
               "now"]
