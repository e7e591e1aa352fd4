"""Prompt records, the train/test split, and the attack phrase banks the traffic generator draws from.

Everything is data passed in (prompt lists come from the caller, who reads ``../shared/data/prompts.jsonl``
or the bundled sample); the split is a stable hash of the prompt id (or phrase), so a prompt, template or
topic is in exactly one of TRAIN and TEST on every machine.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "test", "all"]
BENIGN_CATEGORIES = ("chat", "math", "qa", "code", "instruction")


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    category: str
    turns: tuple[str, ...]


def in_split(key: str, split: Split) -> bool:
    """TRAIN holds ~50 % of keys by CRC32; TEST the rest."""
    if split == "all":
        return True
    is_train = zlib.crc32(key.encode()) % 2 == 0
    return is_train == (split == "train")


def parse_prompts(lines: Iterable[str], split: Split = "all") -> list[Prompt]:
    """Prompts from JSONL lines, red-team prompts dropped (they are not benign traffic)."""
    out: list[Prompt] = []
    for line in lines:
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("category") not in BENIGN_CATEGORIES:
            continue
        turns = tuple(t for t in rec.get("turns", []) if isinstance(t, str) and t.strip())
        if turns and in_split(str(rec["id"]), split):
            out.append(Prompt(str(rec["id"]), str(rec["category"]), turns))
    return out


def split_phrases(phrases: Sequence[str], split: Split) -> list[str]:
    chosen = [p for p in phrases if in_split(p, split)]
    return chosen or list(phrases)


# -- attack phrase banks (hand-written; split by hash so TEST attackers use phrasings the fit never saw) --
TEMPLATES = (
    "Write a detailed {length} article about {topic} for {audience}.",
    "Explain {topic} to {audience} in {length} form, with examples.",
    "Give me a {length} summary of the most important facts about {topic}.",
    "Write a {style} story of about {n} words involving {topic}.",
    "Create a quiz of {n} questions with answers about {topic} for {audience}.",
    "You are an expert in {topic}. Answer as thoroughly as possible: what should {audience} know about it?",
    "Compose a {style} poem about {topic} in the style of a famous poet.",
    "List {n} common misconceptions about {topic} and correct each one in detail.",
    "Write a lesson plan on {topic} for {audience}, including objectives, activities and assessment.",
    "Describe the history, key concepts and open problems of {topic} in a {length} essay.",
    "Translate the following into {language} and explain any idioms: {question}",
    "Rewrite the following text in a {style} tone, keeping its meaning: {question}",
    "Answer the question below and then give {n} follow-up questions a student might ask.\n\nQuestion: {question}",
    "Classify the following request into one of 10 categories and explain your choice: {question}",
    "Produce a high-quality reference answer for this prompt. Prompt: {question}",
    "For the topic {topic}, write a FAQ with {n} questions and detailed answers.",
    "Draft a {length} blog post titled 'Everything about {topic}' aimed at {audience}.",
    "Summarise the arguments for and against {topic} in a balanced {length} overview.",
    "Generate a realistic dialogue between a teacher and {audience} about {topic}.",
    "Write Python code that demonstrates {topic} and explain it line by line.",
)
META_PROMPTS = (
    "You are asked to come up with a set of {n} diverse task instructions. These task instructions will be "
    "given to a GPT model and we will evaluate the GPT model for completing the instructions.\n"
    "Here are the requirements:\n1. Try not to repeat the verb for each instruction.\n"
    "2. The language used for the instruction also should be diverse.\n{examples}\nList of {n} tasks:",
    "Generate {n} new and diverse instructions for training an AI assistant, similar to these examples:\n"
    "{examples}\nReturn them as a numbered list.",
    "Come up with {n} creative questions a user might ask a chatbot. Examples:\n{examples}",
    "Brainstorm {n} varied training examples (instruction + input + output) in the style of:\n{examples}",
    "Here are some example tasks:\n{examples}\nWrite {n} more tasks like these, each different in topic and "
    "format, numbered.",
    "Create {n} instruction-response pairs covering different skills. Use these as seeds:\n{examples}",
)
COT_SUFFIXES = (
    "\n\nThink step by step and show all of your reasoning before giving the final answer.",
    "\n\nLet's work this out step by step to be sure we have the right answer.",
    "\n\nShow your full reasoning, then state the final answer on the last line.",
    "\n\nExplain your reasoning in detail, step-by-step, before you give the answer.",
    "\n\nWrite out your complete thought process, then give the final answer.",
    "\n\nPlease reason through this carefully step by step, showing every intermediate step.",
    "\n\nFirst think through the problem out loud, listing every step, then answer.",
    "\n\nBefore giving the final answer, show your complete chain of thought.",
)
COT_PREFIXES = (
    "Solve the following problem. Show your work step by step.\n\n",
    "Answer with a full chain-of-thought explanation:\n\n",
    "You are a meticulous tutor. Walk through your reasoning step by step for this question:\n\n",
    "Provide a detailed step-by-step solution:\n\n",
)
RUBRIC_PROMPTS = (
    "Grade the following answer on a scale of 1 to 10 using this rubric: correctness, completeness, "
    "clarity. Explain each score.\n\nQuestion: {question}\n\nAnswer: {answer}",
    "Which response is better, A or B? Explain your reasoning in detail.\n\nPrompt: {question}\n\n"
    "A: {answer}\n\nB: {answer2}",
    "Evaluate the following response for helpfulness and accuracy, then give a score from 1 to 10.\n\n"
    "User: {question}\nAssistant: {answer}",
)
SWEEP_PHRASES = (
    "Explain {topic} in depth.",
    "What are the most important things to know about {topic}?",
    "Write a comprehensive encyclopedia entry on {topic}.",
    "Tell me everything you know about {topic}, including history and current research.",
    "Give a thorough overview of {topic} with key terms defined.",
    "How does {topic} work? Be detailed.",
    "Teach me {topic} from the basics to an advanced level.",
    "Describe {topic}: definition, mechanisms, examples and applications.",
    "I want to learn about {topic}. Where do I start and what are the core ideas?",
    "Write a detailed study guide for {topic}.",
    "What is {topic} and why does it matter?",
    "Give me an expert-level explanation of {topic}.",
)
TOPICS = (
    "photosynthesis", "plate tectonics", "the French Revolution", "quantum entanglement", "compound interest",
    "the immune system", "supply and demand", "machine learning", "the Byzantine Empire", "black holes",
    "cellular respiration", "game theory", "the Renaissance", "climate change", "blockchain", "protein folding",
    "the Cold War", "Keynesian economics", "neural networks", "the water cycle", "volcanoes", "jazz history",
    "Impressionism", "the Silk Road", "antibiotic resistance", "CRISPR", "relativity", "thermodynamics",
    "the stock market", "Roman law", "Shakespeare's tragedies", "the Industrial Revolution", "vaccines",
    "operating systems", "compilers", "cryptography", "the Ottoman Empire", "ocean currents", "migration of birds",
    "coral reefs", "the human brain", "sleep", "nutrition", "the Big Bang", "exoplanets", "renewable energy",
    "nuclear fission", "the printing press", "the Meiji Restoration", "baroque music", "existentialism",
    "utilitarianism", "Buddhism", "the Reformation", "the American Civil War", "the Mongol Empire", "linguistics",
    "probability theory", "linear algebra", "calculus", "graph theory", "statistics", "epidemiology",
    "the nitrogen cycle", "glaciers", "deserts", "rainforests", "urban planning", "architecture of cathedrals",
    "the history of medicine", "anesthesia", "the Apollo program", "aviation", "electric vehicles", "batteries",
    "semiconductors", "the internet", "databases", "distributed systems", "photography", "film noir",
    "the Olympic Games", "chess strategy", "cooking with yeast", "wine making", "coffee cultivation",
    "beekeeping", "dog training", "the stock exchange", "inflation", "central banks", "taxation",
    "international trade", "the United Nations", "human rights law", "contract law", "copyright",
    "cognitive biases", "child development", "memory", "addiction", "meditation", "marathon training",
    "the Great Barrier Reef", "volcanic islands", "earthquakes", "tsunamis", "hurricanes", "the Sahara",
    "the Amazon river", "ancient Egypt", "the Maya civilization", "the Aztecs", "Viking exploration",
)
SLOTS = {
    "length": ("short", "long", "1000-word", "two-page", "concise", "in-depth"),
    "audience": ("high-school students", "beginners", "experts", "children", "managers", "nurses", "engineers"),
    "style": ("humorous", "formal", "dramatic", "whimsical", "dark", "inspiring", "sarcastic"),
    "language": ("French", "German", "Spanish", "Chinese", "Japanese", "Arabic", "Hindi", "Portuguese"),
}
