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

# --- meaning review of the tune split (2026-11-26, tests/watermark/test_review_meaning.py) ---
# Sentence-initial "So" is a discourse marker in conversation before these ("So let me know", "So maybe you're
# saying", "So if I were you", "So, I do sometimes", "So why did"), where "Therefore"/"Hence" would assert a
# consequence the text never drew.
SO_DISCOURSE_NEXT = ["let", "maybe", "if", "i", "you", "why", "how", "who", "where", "when", "which", "please", "just",
                     "now", "here", "anyway", "basically", "again", "yeah", "okay", "ok", "well", "um", "uh"]
# Sentence-initial "Then" is a consequence ("Suppose b0 > b'. Then, we can find ε", "Let λ = 3. Then D_KL = ...")
# as often as a next step; "Next" reads only as a step. Only before an imperative verb of a worked step ("Then
# find the total", "Then multiply ...") is it a step for sure.
THEN_STEP_VERBS = ["find", "add", "multiply", "divide", "subtract", "figure", "calculate", "compute", "determine",
                   "convert", "double", "triple", "halve", "run", "create", "update", "go", "repeat", "express",
                   "pull", "open", "start", "navigate", "rebuild", "use", "set", "click", "select", "choose", "remove",
                   "install", "enter", "type", "press", "check", "combine", "sum", "count", "plug", "substitute",
                   "solve", "simplify", "take", "put", "place", "mix", "stir", "bake", "heat", "pour", "cut", "save",
                   "call", "write", "apply", "restart", "define", "import", "initialize", "iterate", "return",
                   "print", "move", "drag", "fold", "insert", "replace", "round", "compare", "copy", "paste",
                   "delete", "make", "get", "do", "rinse", "wait", "turn", "log", "scroll"]
# Nouns for one of a pair: "every" implies three or more ("subtract 80 from every side of the equation", "a contact
# for every eye", "as every parent received an equal amount" are wrong where "each" stands).
EACH_OF_TWO = ["side", "half", "end", "eye", "ear", "hand", "arm", "leg", "foot", "parent", "twin", "spouse",
               "partner", "cheek", "shoulder", "knee", "elbow", "wrist", "ankle", "hip", "lung", "kidney", "wing",
               "bank", "pole", "hemisphere", "sex", "gender", "team"]
# "each"/"every" after a possessive: "her every word" is idiomatic, "her each word" is not.
POSSESSIVES = ["his", "her", "its", "their", "my", "your", "our", "whose"]
# "may" with a subject after it is the optative ("and may wisdom guide you", "may your days be bright"), which
# "might" cannot express; the pronoun subjects are refused already.
MAY_OPTATIVE_NEXT = ["your", "his", "her", "their", "our", "my", "its", "this", "these", "those", "all", "peace",
                     "wisdom", "love", "luck", "fortune", "heaven", "everyone", "each", "both", "a", "an", "no"]
# After a copula "also" means "too"/"likewise" ("that is also fine", "the posterior is also normal", "This is also
# the number of points"); "additionally" adds a new fact and reads wrong there. Both readings of the contraction
# slots before it are listed ("it is" -> "is", "it's").
COPULAS = ["is", "are", "was", "were", "am", "be", "been", "being", "it's", "that's", "he's", "she's", "there's",
           "here's", "what's", "who's", "where's", "how's", "i'm", "you're", "we're", "they're", "isn't", "aren't",
           "wasn't", "weren't"]
# "a few" is also a pronoun ("but a few might have side effects", "a few were lost"): "a number of might" is wrong.
# A determiner is never followed by a modal, an auxiliary, a relative pronoun, a preposition or a conjunction.
FEW_PRONOUN_NEXT = ["might", "may", "will", "would", "can", "could", "should", "must", "are", "were", "is", "was",
                    "have", "had", "has", "do", "did", "who", "which", "that", "to", "in", "at", "on", "for", "with",
                    "from", "and", "or", "but", "seem", "seemed", "said", "say", "think", "believe", "feel", "got",
                    "went", "left", "remain", "remained", "still", "even", "also", "here", "there"]
# "help" takes a bare infinitive ("help you understand", "help prevent", "help the model learn"); "assist" and "aid"
# do not ("assist you understand", "aid improve" are wrong). One word of lookahead cannot see past the object, so
# only "help with" stays a slot ("in" would bring its whole first-word class, "to" included: "aid to reduce").
HELP_SAFE_NEXT = ["with"]
# "specific" after a copula means "precise" ("If you can be more specific, I ..."), where "particular" means "fussy";
# before these words it is predicative ("specific to", "specific about", "specific enough").
SPECIFIC_PRED_NEXT = ["about", "to", "with", "as", "in", "on", "for", "enough", "and", "or", "than", "when", "if",
                      "so", "but", "because", "while", "regarding"]
# After a verb "normally" is a manner adverb ("function normally", "the app works normally"), never "usually".
NORMALLY_MANNER_PREV = ["function", "functions", "functioning", "work", "works", "working", "worked", "behave",
                        "behaves", "behaving", "behaved", "breathe", "breathes", "breathing", "operate", "operates",
                        "operating", "operated", "run", "runs", "running", "act", "acts", "acting", "proceed",
                        "proceeds", "continue", "continues", "respond", "responds", "eat", "eats", "eating",
                        "sleep", "sleeps", "sleeping", "walk", "walks", "walking", "live", "lives", "living", "heal",
                        "heals", "healing", "grow", "grows", "growing", "develop", "develops", "developing",
                        "speak", "speaks", "talk", "talks", "move", "moves", "feel", "feels", "look", "looks",
                        "react", "reacts", "perform", "performs", "boot", "boots", "load", "loads", "start",
                        "starts", "open", "opens", "close", "closes", "flow", "flows", "beat", "beats"]
# "start" with an object means "launch", "found", "switch on" ("start the Visual LISP Editor", "he started the
# Festival Theatre", "start a fire"): "begin the editor" is wrong. Only "start with", "start to", "start by", ...
# keep the slot.
START_OBJECT_NEXT = ["the", "this", "that", "these", "those", "its", "their", "his", "her", "our", "my", "your", "a",
                     "an", "it", "them", "him", "me", "us", "you", "another", "one", "some", "any", "each", "every",
                     "new", "all", "both", "no"]
# "no one" before a noun is "not a single" ("There is no one answer", "no one size fits all"), never "nobody".
NO_ONE_NOUN_NEXT = ["answer", "way", "size", "thing", "person", "reason", "solution", "method", "approach", "one",
                    "single", "particular", "specific", "right", "best", "true", "correct", "perfect", "other",
                    "more", "less", "place", "man", "woman", "group", "country", "type", "kind", "factor", "cause",
                    "rule", "option", "strategy", "formula", "definition", "word", "time", "day", "source", "model",
                    "theory", "diet", "treatment", "cure", "test", "path", "response", "set", "side", "book",
                    "food", "product", "tool", "language", "number"]
# "immediately" before a word of place or order means "directly" ("the gap immediately after the platform",
# "Insert Song X Immediately After the Current Song"), not "instantly".
IMMEDIATELY_PLACE_NEXT = ["after", "before", "following", "preceding", "adjacent", "next", "above", "below", "behind",
                          "prior", "beside", "beneath", "under", "over", "to", "from", "afterwards", "afterward",
                          "upon", "around", "outside", "inside", "downstream", "upstream", "north", "south", "east",
                          "west", "left", "right"]
# "ultimately" meaning "fundamentally" ("it ultimately comes down to preference", "ultimately depends on"), where
# "eventually" ("in time") changes the claim.
ULTIMATELY_BASIC_NEXT = ["comes", "come", "came", "depends", "depend", "depended", "boils", "boil", "rests", "rest",
                         "lies", "lie", "responsible", "about", "up"]
# "but" before these is not a contrast that "yet" can carry ("but if you are starting out", "but otherwise I think",
# "but for now", "but first", "but please"): "yet if", "yet otherwise", "yet for now" are wrong or change the sense.
BUT_NOT_YET_NEXT = ["if", "maybe", "otherwise", "first", "instead", "please", "let", "for", "what", "why", "how",
                    "anyway", "unfortunately", "sadly", "luckily", "fortunately", "honestly", "seriously", "hey",
                    "wait", "no", "yes", "ok", "okay", "now", "again"]
# "show" takes a recipient ("show the guests", "show the IRS that you have corrected the oversight"), "display" does
# not; one word of lookahead cannot tell the recipient from the thing shown, so a noun phrase after it ends the slot.
SHOW_OBJECT_NEXT = ["the", "a", "an", "its", "their", "his", "her", "our", "my", "your", "this", "these", "those",
                    "someone", "people", "users", "everyone", "others", "all", "some", "any", "each", "every"]
# Ordinals in a list ("the first, second, third, and fifth terms"): "firstly, secondly" would be wrong there.
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "firstly", "secondly", "thirdly", "last", "next"]
# "large"/"big" in a term or an idiom ("large language model", "big data", "the big picture", "a big fan", "the big
# screen", "big time"): the other adjective breaks the term or the idiom.
BIG_TERM_NEXT = ["language", "data", "picture", "fan", "fans", "day", "brother", "bang", "tech", "league", "time",
                 "shot", "shots", "name", "names", "screen", "mouth", "heart", "hearted", "cat", "cats", "game"]
# Words that modify only the universal "every" ("almost every day", "not every student passed", "even every
# tavern"): "almost each day", "not each student" are wrong.
EVERY_ONLY_PREV = ["almost", "nearly", "practically", "virtually", "even", "not", "hardly", "just", "about"]
# Words before the noun "need" ("a need to", "the constant need to tell oneself", "a basic need to belong"): "have
# to" cannot follow them.
NEED_NOUN_PREV = ["a", "an", "constant", "basic", "great", "strong", "real", "desperate", "pressing", "deep", "human",
                  "clear", "increasing", "immediate", "any", "every", "special", "critical", "genuine", "obvious",
                  "little", "ongoing", "perceived", "natural", "psychological", "emotional", "fundamental",
                  "legitimate", "dire", "innate", "overwhelming", "compelling", "burning", "universal"]
# ", like" before these is a comparison, not a list of examples ("fields, like all things in life, have their
# quirks", "behaves oddly, like a broken clock"): "such as all things in life" is wrong.
LIKE_COMPARISON_NEXT = ["all", "most", "every", "everything", "everyone", "everybody", "any", "anything", "anyone",
                        "many", "other", "others", "a", "an", "in", "with", "at", "on"]
# "many" as a pronoun before a verb ("but many involve them coming in contact with a germ", "many believe"): the
# adjective "numerous" cannot stand alone ("numerous involve them"). FEW_PRONOUN_NEXT holds the auxiliaries.
MANY_PRONOUN_VERBS = ["involve", "believe", "argue", "say", "think", "feel", "consider", "find", "use", "prefer",
                      "choose", "see", "want", "like", "agree", "claim", "suggest", "include", "require", "need",
                      "make", "take", "get", "know", "die", "died", "fail", "failed", "come", "came", "go", "live",
                      "lived", "work", "worked", "became", "become", "remain", "struggle", "report", "reported"]
# Prepositions (and "than"/"as") after which "it" is an object closing a noun phrase, not the subject of the
# verb after it: "the cost of it would be $40" (never "of it'd be").
IT_OBJECT_PREV = ["of", "to", "for", "with", "on", "in", "at", "from", "about", "by", "into", "onto", "like",
                  "than", "over", "under", "through", "without", "within", "upon", "against", "behind", "toward",
                  "towards", "around", "across", "after", "before", "between", "among", "beyond", "near", "past",
                  "inside", "outside", "despite", "during"]
# Sentence-initial "So" before a personal pronoun narrates ("So he took this kid to the park", "So they went
# home") as often as it infers; "Therefore"/"Hence" there turn a story into an argument. After a calculation it is
# an inference ("So he pays 400*2=$800"): these subjects are allowed only when the paragraph holds a number.
SO_NARRATIVE_NEXT = ["he", "she", "they", "we"]
# Words after which "there" is the adverb of place, not the subject of "there is": "the information out there
# isn't illegal" (never "out there's not illegal"; review 3).
THERE_PLACE_PREV = ["out", "in", "over", "up", "down", "back", "from", "here", "right", "get", "gets", "got", "go",
                    "goes", "went", "be", "been", "being", "stay", "stays", "live", "lives", "work", "works", "stand"]
